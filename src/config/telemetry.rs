//! What the peer says about itself: its logs (`log`) and its reports to the OAP
//! (`self_report`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            filter: "info,h2=warn,hyper=warn,tower=warn".into(),
        }
    }
}

/// Self-report to the OAP through the meter protocol, under Apache SkyWalking
/// Satellite's telemetry names, so the OAP's `satellite` rules and the SWCK metrics
/// adapter keep working (see `src/selfreport.rs` for what is sent and what is not).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelfReport {
    /// Send at all.
    pub enabled: bool,
    /// Time between two reports (Satellite's `telemetry.metrics_service.interval`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The service the reports are filed under (Satellite's `telemetry.service`); the
    /// OAP's rules show it as `satellite::<service>`.
    pub service: String,
    /// The service instance. Default: this peer's node id (`cluster.node_id`).
    pub instance: Option<String>,
}

impl Default for SelfReport {
    fn default() -> Self {
        SelfReport {
            enabled: false,
            interval: Duration::from_secs(10),
            service: "satellite-service".into(),
            instance: None,
        }
    }
}

impl SelfReport {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(invalid("self_report.interval", "must be more than 0"));
        }
        if self.service.trim().is_empty() {
            return Err(invalid("self_report.service", "must not be empty"));
        }
        if self.instance.as_ref().is_some_and(|i| i.trim().is_empty()) {
            return Err(invalid("self_report.instance", "must not be empty"));
        }
        Ok(())
    }
}
