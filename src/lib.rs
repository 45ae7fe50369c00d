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
//! - [`sink`]: satmesh's own fake OAP for tests, demos and benchmarks.
//! - [`load`]: a synthetic agent fleet for `satmesh bench` and `satmesh demo`.
//! - [`demo`]: `satmesh demo`, a sink, a peer and a fleet in one process.
//! - [`status`]: `GET /status` (JSON and a self-refreshing page) and `satmesh status`.
//! - [`shed`]: cluster-aware shedding: drains connections above the tier's share.
//! - [`selfreport`]: sends the peer's own numbers to the OAP under Satellite's meter names.
//! - [`tier`]: the peer's side of the cluster: published facts, the shared ring.
//! - [`config`]: the configuration reference.
//! - [`http1`]: one HTTP/1.1 request to an admin port (`satmesh status`, `bench --sink-admin`).

pub mod admin;
pub mod codec;
pub mod config;
pub mod demo;
pub mod frontdoor;
pub mod http1;
pub mod load;
pub mod metrics;
pub mod peer;
pub mod pipeline;
pub mod protocol;
pub mod selfreport;
pub mod shed;
pub mod sink;
pub mod status;
pub mod tier;
pub mod upstream;
