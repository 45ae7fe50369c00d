//! Configuration: one struct per section, documented field by field. These docs, and
//! `config/satmesh.yaml`, are the user reference.
//!
//! Sources, later ones winning: the built-in defaults, the YAML file, then the environment
//! as `SATMESH__SECTION__KEY` (lists comma-separated). Everything is parsed once, here,
//! into typed values (addresses, durations, enums); an error names the key at fault.
//! Config depends on nothing else in satmesh: the code that uses a section turns it into
//! its own settings (`LifecycleSettings::from(&Config)`, `protocol::route_policies`,
//! `shed::settings`, `tier::cluster_settings`).
//!
//! - `server.rs`: `server`, `admin` and `shutdown`.
//! - `upstream.rs`: `upstream` (the OAP nodes, Kubernetes discovery).
//! - `routing.rs`: `routing`, the user's choice of policy per protocol.
//! - `pipeline.rs`: `pipeline` (queue, batches, senders).
//! - `cluster.rs`: `cluster` (gossip) and `balance` (shedding).
//! - `telemetry.rs`: `log` and `self_report`.
//! - `values.rs`: values checked as they are read (`host:port`, `ip:port`, weights, lists).

mod cluster;
mod pipeline;
mod routing;
mod server;
mod telemetry;
mod upstream;
mod values;

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use cluster::{Balance, Cluster};
pub use pipeline::{Disk, FsyncMode, Pipeline, QueueKind};
pub use routing::{Route, Routing};
pub use server::{Admin, Server, Shutdown};
pub use telemetry::{Log, LogFormat, SelfReport};
pub use upstream::{KubernetesPort, KubernetesUpstream, Upstream};
pub use values::{HostPort, Weight};

/// A config error that names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    /// `key` holds a value that cannot be used, for `reason`.
    pub fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub admin: Admin,
    pub upstream: Upstream,
    pub routing: Routing,
    pub pipeline: Pipeline,
    pub shutdown: Shutdown,
    pub log: Log,
    pub cluster: Cluster,
    pub balance: Balance,
    pub self_report: SelfReport,
}

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["upstream.static", "upstream.weights", "cluster.seeds"];

impl Config {
    /// Loads defaults, then `file` (if any), then `env` (the process environment when None).
    pub fn load(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).format(config::FileFormat::Yaml));
        }
        let mut environment = config::Environment::with_prefix("SATMESH")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        builder = builder.add_source(environment.source(env));
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what a single value cannot: ranges, and keys that depend on one another.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.upstream.validate()?;
        self.routing.validate()?;
        self.pipeline.validate()?;
        self.shutdown.validate()?;
        self.cluster.validate()?;
        self.balance.validate()?;
        self.self_report.validate()
    }

    /// `run` needs somewhere to send data.
    pub fn require_upstream(&self) -> Result<(), ConfigError> {
        if !self.upstream.has_source() {
            return Err(invalid(
                "upstream.static",
                "no OAP node: set upstream.static, upstream.dns or upstream.kubernetes",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
