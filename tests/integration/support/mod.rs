//! The harness, split by role as linkerd2-proxy's `linkerd/app/integration` is: tests run
//! the real `satmesh` binary on loopback ports and talk to it as agents and OAPs would.
//!
//! - `processes`: a satmesh peer or sink as a child process ([`processes::Proc`]), other
//!   commands run to their end, free loopback ports.
//! - `admin`: a running satmesh's admin port (counts, metrics, readiness, faults,
//!   connections) and the waits built on it.
//! - `client`: the gRPC client with opaque payloads, one HTTP/2 connection like an agent.
//! - `messages`: agent payloads (segments, meters, logs) and their digest.
//! - `agents`: the real Python and Rust SkyWalking agents, installed or built on first use.
//! - `tier`: peers that gossip with each other, and an L4 virtual IP in front of them.
//! - `raw_h2`: a gRPC call on a raw HTTP/2 connection, for tests that shape DATA frames.

pub mod admin;
pub mod agents;
pub mod client;
pub mod messages;
pub mod processes;
pub mod raw_h2;
pub mod tier;
