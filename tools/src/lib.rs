//! # satmesh-tools
//!
//! The tooling around satmesh, kept out of the product crate: a fake OAP, a synthetic
//! agent fleet and the demo tier. The `satmesh` binary links it for `satmesh sink`,
//! `satmesh bench` and `satmesh demo`, and the integration tests use it.
//!
//! It does not depend on the satmesh library: the sink has its own HTTP/2 server, so a
//! test never checks satmesh's front door against itself, and what both need to know
//! about the protocol (paths, shapes, messages, the pass-through codec) comes from
//! `satmesh-proto`. The demo gets its satmesh peers from the binary through [`demo::Tier`].
//!
//! # Layout
//!
//! - [`sink`]: the fake OAP: counts, faults, delivery latency, its gRPC and admin servers.
//! - [`load`]: the synthetic agent fleet (segments, meters, keepAlive, idle connections),
//!   and the latency summaries shared with the sink.
//! - [`demo`]: two sinks, a peer tier and a fleet in one process.
//! - [`cli`]: the flags of `satmesh sink|bench|demo` (clap `Args`, flattened by the binary)
//!   and what each command runs.

pub mod cli;
pub mod demo;
pub mod load;
pub mod sink;
