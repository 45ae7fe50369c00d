//! satmesh's integration tests: one test binary, so the dependency tree is linked once
//! rather than once per test file. Each module is one area of behaviour; nextest names a
//! test `MODULE::NAME`, so one area runs with
//! `cargo nextest run --test integration -E 'test(/^delivery::/)'`.
//!
//! - `support/`: the harness, by role (processes, admin port, gRPC client, messages, real
//!   agents, tier, raw HTTP/2).
//! - `bench_cli`, `bench_smoke`: `satmesh bench` and the benchmark scripts.
//! - `default_config`, `deploy_manifests`, `readme_commands`: the shipped config, the
//!   `deploy/` manifests, and the command lines the docs show.
//! - `delivery`, `paths`, `self_report`: what satmesh acknowledges reaches an OAP.
//! - `idle_connections`, `lifecycle`: connections held, drained, limited and aged.
//! - `h2_budget`: the small-DATA-frame budget of satmesh's h2, server and client.
//! - `kubernetes_discovery`: OAP discovery against recorded Kubernetes API responses.
//! - `real_agents`: the real Python and Rust SkyWalking agents through satmesh.
//! - `scale_in`, `shedding`, `shedding_agents`, `tier`: a tier of peers that gossip,
//!   balance, shed and scale.
//! - `status_page`: `GET /status`, its HTML page in a headless browser, `satmesh status`.

mod support;

mod bench_cli;
mod bench_smoke;
mod default_config;
mod delivery;
mod deploy_manifests;
mod disk_queue;
mod h2_budget;
mod idle_connections;
mod kubernetes_discovery;
mod lifecycle;
mod paths;
mod readme_commands;
mod real_agents;
mod scale_in;
mod self_report;
mod shedding;
mod shedding_agents;
mod status_page;
mod tier;
