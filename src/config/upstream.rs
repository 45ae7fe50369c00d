//! The OAP nodes and how satmesh talks to them (`upstream`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{self, HostPort, Weight};
use super::{ConfigError, invalid};

/// The OAP nodes and how satmesh talks to them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// OAP nodes as `host:port`; a host name is resolved and every address is a node.
    #[serde(rename = "static", deserialize_with = "values::list")]
    pub static_nodes: Vec<HostPort>,
    /// A `name:port` whose every A/AAAA record is an OAP node (a headless Service).
    pub dns: Option<HostPort>,
    /// How often `dns` (and host names in `static`) are resolved again.
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// OAP pods found through the Kubernetes API, in addition to `static` and `dns`.
    pub kubernetes: Option<KubernetesUpstream>,
    /// Weights for weighted routing, as `host:port=weight`; unlisted nodes weigh 1.
    #[serde(deserialize_with = "values::list")]
    pub weights: Vec<Weight>,
    /// Sent as `authentication` on every upstream call when set; otherwise each agent's own
    /// token is passed on with its data.
    pub token: Option<String>,
    /// Time to open a TCP connection and finish the HTTP/2 handshake with one OAP.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one upstream call carrying a batch.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Deadline of a synchronous call when the agent set none (or a longer one).
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// Consecutive failed calls after which a connected node is set aside for a backoff.
    pub eject_after: u32,
    /// First reconnect / set-aside backoff; doubles up to `backoff_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            static_nodes: Vec::new(),
            dns: None,
            dns_refresh: Duration::from_secs(10),
            kubernetes: None,
            weights: Vec::new(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
            sync_timeout: Duration::from_secs(5),
            eject_after: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

impl Upstream {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(kubernetes) = &self.kubernetes {
            kubernetes.validate()?;
        }
        if self.backoff_min.is_zero() {
            return Err(invalid("upstream.backoff_min", "must be more than 0"));
        }
        if self.backoff_max < self.backoff_min {
            return Err(invalid(
                "upstream.backoff_max",
                "must be at least upstream.backoff_min",
            ));
        }
        if let Some(token) = &self.token
            && http::HeaderValue::from_str(token).is_err()
        {
            return Err(invalid(
                "upstream.token",
                "not a valid gRPC metadata value (visible ASCII)",
            ));
        }
        if self.eject_after == 0 {
            return Err(invalid("upstream.eject_after", "must be at least 1"));
        }
        Ok(())
    }

    /// Whether any OAP source is set (`run` needs one; `check-config` does not).
    pub fn has_source(&self) -> bool {
        !self.static_nodes.is_empty() || self.dns.is_some() || self.kubernetes.is_some()
    }

    /// `weights` keyed by `host:port` as written; a later entry for the same node wins.
    pub fn weight_map(&self) -> BTreeMap<String, u32> {
        self.weights
            .iter()
            .map(|w| (w.node.to_string(), w.weight))
            .collect()
    }
}

/// OAP pods found through the Kubernetes API: the ready endpoints of the EndpointSlices
/// (discovery.k8s.io/v1) that `label_selector` picks in `namespace`, followed with a watch.
/// The service account needs `list` and `watch` on `endpointslices` there.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesUpstream {
    /// Namespace of the EndpointSlices. Default: the pod's own namespace (its service
    /// account's), else the kubeconfig context's, else `default`.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Required. Label selector of the EndpointSlices, e.g. `kubernetes.io/service-name=oap`
    /// for the slices of the OAP Service.
    #[serde(default)]
    pub label_selector: String,
    /// The OAP's port on every endpoint: a number, or the name of a port listed in the
    /// slices (e.g. `grpc`). Default 11800.
    #[serde(default)]
    pub port: KubernetesPort,
}

/// A port number, or the name of a port looked up in each EndpointSlice's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum KubernetesPort {
    Number(u16),
    Name(String),
}

impl Default for KubernetesPort {
    fn default() -> Self {
        KubernetesPort::Number(11800)
    }
}

/// A number or a string; a string of digits is a number too (environment values, quoted
/// YAML).
impl<'de> Deserialize<'de> for KubernetesPort {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let port = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u16::try_from(n).ok().map(KubernetesPort::Number),
            Raw::Text(text) => match text.trim().parse::<i64>() {
                Ok(n) => u16::try_from(n).ok().map(KubernetesPort::Number),
                Err(_) => Some(KubernetesPort::Name(text)),
            },
        };
        port.ok_or_else(|| serde::de::Error::custom("port numbers are 1..=65535"))
    }
}

impl KubernetesUpstream {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.label_selector.trim().is_empty() {
            return Err(invalid(
                "upstream.kubernetes.label_selector",
                "required when upstream.kubernetes is set, e.g. kubernetes.io/service-name=oap",
            ));
        }
        // Names as Kubernetes has them: a namespace is a DNS label, a port name an
        // IANA service name.
        let lower = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if let Some(namespace) = &self.namespace
            && !((1..=63).contains(&namespace.len()) && lower(namespace))
        {
            return Err(invalid(
                "upstream.kubernetes.namespace",
                format!("`{namespace}` is not a namespace name (a-z, 0-9, '-'; at most 63)"),
            ));
        }
        match &self.port {
            KubernetesPort::Number(0) => Err(invalid(
                "upstream.kubernetes.port",
                "port numbers are 1..=65535",
            )),
            KubernetesPort::Name(name)
                if !(1..=15).contains(&name.len())
                    || !lower(name)
                    || !name.chars().any(|c| c.is_ascii_lowercase()) =>
            {
                Err(invalid(
                    "upstream.kubernetes.port",
                    format!(
                        "`{name}` is neither a port number nor a port name (a-z, 0-9, '-'; at most 15)"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}
