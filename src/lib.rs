//! # satmesh
//!
//! A proxy tier for Apache SkyWalking: agents report traces, logs and metrics over gRPC
//! to satmesh, which forwards them to a pool of OAP nodes.
//!
//! # Layout
//!
//! Data flows one way: agent -> front door -> pipeline -> upstream -> OAP.
//!
//! - [`frontdoor`]: the agent-facing HTTP/2 accept loop and the gRPC handler of every path.
//! - [`protocol`]: the protocol table (which path is sync, async, relayed).
//! - [`codec`]: the pass-through codec; payloads stay the agent's bytes.
//! - [`pipeline`]: queue, batching senders and the delivery driver (retry, ack).
//! - [`upstream`]: OAP discovery, one HTTP/2 connection per node, health, node selection.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz`; [`metrics`] defines every metric once.
//! - [`peer`]: wires one peer together and runs its shutdown.
//! - [`status`]: `GET /status` (JSON and a self-refreshing page) and `satmesh status`.
//! - [`shed`]: cluster-aware shedding: drains connections above the tier's share.
//! - [`selfreport`]: sends the peer's own numbers to the OAP under Satellite's meter names.
//! - [`tier`]: the peer's side of the cluster: published facts, the shared ring.
//! - [`config`]: the configuration reference.
//! - [`http1`]: one HTTP/1.1 request to an admin port, for `satmesh status`.
//!
//! Beside it: `satmesh-proto` (the protocol's paths and messages, the read-only routing
//! views, the pass-through codec), `satmesh-cluster` (gossip and the ring), and
//! `satmesh-tools` (the sink, the load generator and the demo, which the binary links for
//! `satmesh sink|bench|demo`; the library does not use it).

pub mod admin;
pub mod codec;
pub mod config;
pub mod frontdoor;
pub mod http1;
pub mod metrics;
pub mod peer;
pub mod pipeline;
pub mod protocol;
pub mod selfreport;
pub mod shed;
pub mod status;
pub mod tier;
pub mod upstream;
