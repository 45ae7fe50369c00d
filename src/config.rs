//! Configuration: one struct per section, documented field by field. These docs, and
//! `config/satmesh.yaml`, are the user reference.
//!
//! Sources, later ones winning: the built-in defaults, the YAML file, then the environment
//! as `SATMESH__SECTION__KEY` (lists comma-separated).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A config error that names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] config::ConfigError),
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
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

/// Cluster-aware shedding: a ready peer above the tier's mean by more than `tolerance`,
/// while another ready peer is below the mean by `below`, drains part of its excess each
/// interval (graceful GOAWAY) and turns new connections away until back within tolerance.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Balance {
    /// Shed at all (a peer still publishes its counts when off).
    pub enabled: bool,
    /// Time between two shedding decisions (jittered +-20 %).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Allowed excess over the tier's mean, as a fraction.
    pub tolerance: f64,
    /// How far below the mean another ready peer must be for shedding to make sense.
    pub below: f64,
    /// Fraction of the excess shed per interval.
    pub step: f64,
    /// At most this many connections shed per interval.
    pub max_per_interval: usize,
    /// No shedding while any peer's gossip is older than this.
    #[serde(with = "humantime_serde")]
    pub max_staleness: Duration,
    /// Connections one pod should hold, for `satmesh_tier_desired_replicas`
    /// (ceil(tier connections / this)).
    pub target_connections_per_pod: u64,
    /// Close the listener (turn new connections away) while above the share, so clients
    /// dialling several addresses go to the next. Right for a DNS name with several
    /// records; wrong behind a virtual IP (a Kubernetes ClusterIP), where a refused
    /// connection fails the agent's calls: shedding alone spreads clients there.
    pub turn_away: bool,
    /// A shed agent that reconnects to the same peer within this long came back:
    /// counted, and with `turn_away` (it could not go elsewhere) never shed again.
    #[serde(with = "humantime_serde")]
    pub return_window: Duration,
}

impl Default for Balance {
    fn default() -> Self {
        let b = satmesh_cluster::balance::BalanceSettings::default();
        Balance {
            enabled: true,
            interval: Duration::from_secs(1),
            tolerance: b.tolerance,
            below: b.below,
            step: b.step,
            max_per_interval: b.max_per_interval,
            max_staleness: b.max_staleness,
            target_connections_per_pod: 3000,
            turn_away: true,
            return_window: Duration::from_secs(120),
        }
    }
}

impl Balance {
    pub fn settings(&self) -> satmesh_cluster::balance::BalanceSettings {
        satmesh_cluster::balance::BalanceSettings {
            tolerance: self.tolerance,
            below: self.below,
            step: self.step,
            max_per_interval: self.max_per_interval,
            max_staleness: self.max_staleness,
            ..Default::default()
        }
    }
}

/// The tier: peers gossip their facts and agree on one ring (see the `satmesh-cluster`
/// crate for the failure-detector settings and their figures).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// This peer's name in the tier, stable across restarts (a restart gets a new
    /// generation). Default: the host name (the pod name on Kubernetes).
    pub node_id: Option<String>,
    /// UDP address gossip is received on.
    pub gossip_listen: String,
    /// Address other peers gossip to; default derived from `gossip_listen` (or, when that
    /// is 0.0.0.0, the local address of the route to the first seed).
    pub advertise: Option<String>,
    /// Peers to join through, as `host:port`; a DNS name (a Kubernetes headless Service)
    /// counts for every address and is re-resolved. Empty: the peer runs alone, with a
    /// ring of its own and no gossip socket.
    pub seeds: Vec<String>,
    /// Peers gossip only with peers of the same id (not a secret: gossip has no auth).
    pub cluster_id: String,
    /// Time between gossip rounds.
    pub gossip_interval_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            node_id: None,
            gossip_listen: "0.0.0.0:7946".into(),
            advertise: None,
            seeds: Vec::new(),
            cluster_id: "satmesh".into(),
            gossip_interval_ms: 500,
        }
    }
}

/// The agent-facing gRPC listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Address agents connect to (h2c, HTTP/2 prior knowledge).
    pub listen: String,
    /// Largest message accepted from an agent, in bytes; larger ones are refused with
    /// INVALID_ARGUMENT and the connection lives on. The OAP's own default is 50 MiB.
    pub max_message_bytes: usize,
    /// Concurrent streams one agent connection may open.
    pub max_concurrent_streams: u32,
    /// HTTP/2 receive window of one stream, in bytes (the agent's send credit).
    pub stream_window_bytes: u32,
    /// HTTP/2 receive window of one connection, in bytes.
    pub connection_window_bytes: u32,
    /// Agent connections served at once (draining ones count); 0: unlimited. One more is
    /// reset before the HTTP/2 handshake, which sends a gRPC client to its next address.
    pub max_connections: usize,
    /// Each connection is drained (graceful GOAWAY) after this long, +-10 % jitter per
    /// connection (gRPC A9 MAX_CONNECTION_AGE). Unset: connections never age out.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    /// Hard close this long after the age GOAWAY (A9 MAX_CONNECTION_AGE_GRACE).
    /// Unset: `drain_grace`.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Option<Duration>,
    /// Time a drained (shed) connection's streams get before it is closed.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// A draining connection's client-streams may end on their own this long (at most
    /// half the grace); then satmesh ends them with OK between two messages.
    #[serde(with = "humantime_serde")]
    pub drain_stream_after: Duration,
    /// ...once no data arrived on the stream for this long (shrinking to 0 at the hard
    /// close).
    #[serde(with = "humantime_serde")]
    pub drain_stream_quiet: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "0.0.0.0:11800".into(),
            max_message_bytes: 50 * 1024 * 1024,
            max_concurrent_streams: 256,
            stream_window_bytes: 1024 * 1024,
            connection_window_bytes: 2 * 1024 * 1024,
            max_connections: 4000,
            max_connection_age: None,
            max_connection_age_grace: None,
            drain_grace: Duration::from_secs(60),
            drain_stream_after: Duration::from_secs(5),
            drain_stream_quiet: Duration::from_millis(150),
        }
    }
}

/// The admin HTTP listener: /metrics, /healthz, /readyz.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    pub listen: String,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: "0.0.0.0:1234".into(),
        }
    }
}

/// The OAP nodes and how satmesh talks to them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// OAP nodes as `host:port`; a host name is resolved and every address is a node.
    #[serde(rename = "static")]
    pub static_nodes: Vec<String>,
    /// A `name:port` whose every A/AAAA record is an OAP node (a headless Service).
    pub dns: Option<String>,
    /// How often `dns` (and host names in `static`) are resolved again.
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// OAP pods found through the Kubernetes API, in addition to `static` and `dns`.
    pub kubernetes: Option<KubernetesUpstream>,
    /// Weights for weighted routing, as `host:port=weight`; unlisted nodes weigh 1.
    pub weights: Vec<String>,
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
    fn validate(&self) -> Result<(), ConfigError> {
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

/// How an upstream node is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoutePolicy {
    /// Every node in turn.
    #[default]
    RoundRobin,
    /// Every node in turn, in proportion to `upstream.weights`.
    Weighted,
    /// The same service instance always to the same OAP node: the service and instance
    /// of a call's first message are looked up on the consistent-hash ring that every
    /// peer of the tier shares. The default of `meter`; possible for every protocol whose
    /// messages carry a service and instance (`trace`, `log`, `meter`, `management`,
    /// `jvm`, `clr`).
    Fixed,
}

/// Which routing policy each protocol uses.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Policy of every protocol not listed in `protocols`.
    pub default: RoutePolicy,
    /// Per-protocol policy, keyed by the protocol names of the metrics (`trace`, `log`,
    /// `meter`, `management`, `jvm`, ...).
    pub protocols: BTreeMap<String, RoutePolicy>,
}

/// The asynchronous pipeline: queue, batching, senders.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pipeline {
    /// Events (messages) the queue holds, in flight included; a full queue stops reading
    /// agents' streams (HTTP/2 flow control) instead of dropping.
    pub queue_events: usize,
    /// Payload bytes the queue holds, in flight included.
    pub queue_bytes: usize,
    /// A batch is sent when it holds this many events...
    pub batch_size: usize,
    /// ...or when its oldest event has waited this long.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Tasks that take events off the queue and form batches.
    pub senders: usize,
    /// Batches being delivered at once, across all OAP nodes.
    pub max_inflight_batches: usize,
    /// Times an OAP may reject a batch with a non-transient status (e.g. INVALID_ARGUMENT)
    /// before it is dropped and counted; transient failures are retried without limit.
    pub max_rejections: u32,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            queue_events: 100_000,
            queue_bytes: 512 * 1024 * 1024,
            batch_size: 500,
            flush_interval: Duration::from_millis(20),
            senders: 2,
            max_inflight_batches: 64,
            max_rejections: 3,
        }
    }
}

/// SIGTERM / SIGINT handling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// Time agents' open streams get to finish after their connection's GOAWAY.
    #[serde(with = "humantime_serde")]
    pub connection_grace: Duration,
    /// The GOAWAYs go out evenly spread over this window (no reconnect herd), once the
    /// tier has heard `draining` (two gossip rounds). Cut to `deadline - connection_grace`
    /// (less the time already spent) when longer.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// Total time from the signal to exit; what is still queued then is counted as dropped.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            connection_grace: Duration::from_secs(10),
            drain_window: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

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

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["upstream.static", "upstream.weights", "cluster.seeds"];

impl Config {
    /// Loads defaults, then `file` (if any), then `env` (the process environment when None).
    pub fn load(
        file: Option<&std::path::Path>,
        env: Option<std::collections::HashMap<String, String>>,
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
        let mut config: Config = builder.build()?.try_deserialize()?;
        // An empty environment list (`SATMESH__UPSTREAM__STATIC=`) means none.
        config
            .upstream
            .static_nodes
            .retain(|s| !s.trim().is_empty());
        config.upstream.weights.retain(|s| !s.trim().is_empty());
        config.cluster.seeds.retain(|s| !s.trim().is_empty());
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: addresses parse, sizes are sane, names exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let b = &self.balance;
        for (key, value) in [
            ("balance.tolerance", b.tolerance),
            ("balance.below", b.below),
            ("balance.step", b.step),
        ] {
            if !(value.is_finite() && value > 0.0 && value <= 1.0) {
                return Err(invalid(key, "must be a fraction in (0, 1]"));
            }
        }
        if b.interval.is_zero() {
            return Err(invalid("balance.interval", "must be more than 0"));
        }
        if b.max_per_interval == 0 {
            return Err(invalid("balance.max_per_interval", "must be at least 1"));
        }
        if b.target_connections_per_pod == 0 {
            return Err(invalid(
                "balance.target_connections_per_pod",
                "must be at least 1",
            ));
        }
        self.cluster_settings()?;
        parse_addr("server.listen", &self.server.listen)?;
        parse_addr("admin.listen", &self.admin.listen)?;
        if self.server.max_message_bytes == 0 || self.server.max_message_bytes > u32::MAX as usize {
            return Err(invalid(
                "server.max_message_bytes",
                "must be between 1 and 4294967295",
            ));
        }
        for (key, value) in [
            (
                "server.stream_window_bytes",
                self.server.stream_window_bytes,
            ),
            (
                "server.connection_window_bytes",
                self.server.connection_window_bytes,
            ),
        ] {
            if value < 65_535 {
                return Err(invalid(key, "HTTP/2 windows are at least 65535"));
            }
        }
        let server = &self.server;
        if server.max_connection_age.is_some_and(|a| a.is_zero()) {
            return Err(invalid("server.max_connection_age", "must be more than 0"));
        }
        if server.drain_stream_quiet > Duration::from_secs(10) {
            return Err(invalid("server.drain_stream_quiet", "at most 10s"));
        }
        for node in &self.upstream.static_nodes {
            host_port("upstream.static", node)?;
        }
        if let Some(dns) = &self.upstream.dns {
            host_port("upstream.dns", dns)?;
        }
        self.weights()?;
        if let Some(kubernetes) = &self.upstream.kubernetes {
            kubernetes.validate()?;
        }
        if self.routing.default == RoutePolicy::Fixed {
            return Err(invalid(
                "routing.default",
                "fixed is set per protocol (routing.protocols.NAME)",
            ));
        }
        for (protocol, policy) in &self.routing.protocols {
            let keyed = crate::protocol::METHODS
                .iter()
                .filter(|m| m.protocol == protocol)
                .all(|m| m.payload.key_fields().is_some());
            if *policy == RoutePolicy::Fixed && !keyed {
                return Err(invalid(
                    &format!("routing.protocols.{protocol}"),
                    "fixed needs a service and instance in every message; this protocol's messages carry none",
                ));
            }
            if !crate::protocol::protocols().contains(&protocol.as_str()) {
                return Err(invalid(
                    &format!("routing.protocols.{protocol}"),
                    format!(
                        "unknown protocol; known: {}",
                        crate::protocol::protocols().join(", ")
                    ),
                ));
            }
        }
        let p = &self.pipeline;
        for (key, value) in [
            ("pipeline.queue_events", p.queue_events),
            ("pipeline.queue_bytes", p.queue_bytes),
            ("pipeline.batch_size", p.batch_size),
            ("pipeline.senders", p.senders),
            ("pipeline.max_inflight_batches", p.max_inflight_batches),
            ("pipeline.max_rejections", p.max_rejections as usize),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if p.flush_interval.is_zero() {
            return Err(invalid("pipeline.flush_interval", "must be more than 0"));
        }
        if self.upstream.backoff_min.is_zero() {
            return Err(invalid("upstream.backoff_min", "must be more than 0"));
        }
        if self.upstream.backoff_max < self.upstream.backoff_min {
            return Err(invalid(
                "upstream.backoff_max",
                "must be at least upstream.backoff_min",
            ));
        }
        if let Some(token) = &self.upstream.token
            && http::HeaderValue::from_str(token).is_err()
        {
            return Err(invalid(
                "upstream.token",
                "not a valid gRPC metadata value (visible ASCII)",
            ));
        }
        if self.upstream.eject_after == 0 {
            return Err(invalid("upstream.eject_after", "must be at least 1"));
        }
        let r = &self.self_report;
        if r.interval.is_zero() {
            return Err(invalid("self_report.interval", "must be more than 0"));
        }
        if r.service.trim().is_empty() {
            return Err(invalid("self_report.service", "must not be empty"));
        }
        if r.instance.as_ref().is_some_and(|i| i.trim().is_empty()) {
            return Err(invalid("self_report.instance", "must not be empty"));
        }
        if self.shutdown.deadline < self.shutdown.connection_grace {
            return Err(invalid(
                "shutdown.deadline",
                "must be at least shutdown.connection_grace",
            ));
        }
        Ok(())
    }

    /// How agent connections live and leave (`server` and `shutdown` keys).
    pub fn lifecycle(&self) -> crate::frontdoor::LifecycleSettings {
        let s = &self.server;
        crate::frontdoor::LifecycleSettings {
            max_connections: s.max_connections,
            drain_grace: s.drain_grace,
            max_age: s.max_connection_age,
            age_jitter: 0.1,
            age_grace: s.max_connection_age_grace.unwrap_or(s.drain_grace),
            shutdown_grace: self.shutdown.connection_grace,
            stream_end: crate::frontdoor::StreamEnd {
                after: s.drain_stream_after,
                quiet: s.drain_stream_quiet,
            },
            return_window: self.balance.return_window,
            hold_returned: self.balance.turn_away,
        }
    }

    /// The window the shutdown spreads its GOAWAYs over: `shutdown.drain_window`, cut so
    /// that the last connection's grace still ends by the deadline.
    pub fn shutdown_drain_window(&self) -> Duration {
        let s = &self.shutdown;
        s.drain_window
            .min(s.deadline.saturating_sub(s.connection_grace))
    }

    /// `run` needs somewhere to send data.
    pub fn require_upstream(&self) -> Result<(), ConfigError> {
        if self.upstream.static_nodes.is_empty()
            && self.upstream.dns.is_none()
            && self.upstream.kubernetes.is_none()
        {
            return Err(invalid(
                "upstream.static",
                "no OAP node: set upstream.static, upstream.dns or upstream.kubernetes",
            ));
        }
        Ok(())
    }

    /// `upstream.weights` as a map from `host:port` to weight.
    pub fn weights(&self) -> Result<BTreeMap<String, u32>, ConfigError> {
        let mut weights = BTreeMap::new();
        for entry in &self.upstream.weights {
            let (node, weight) = entry.rsplit_once('=').ok_or_else(|| {
                invalid(
                    "upstream.weights",
                    format!("`{entry}` is not host:port=weight"),
                )
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| (1..=1000).contains(w))
                .ok_or_else(|| {
                    invalid(
                        "upstream.weights",
                        format!("`{entry}`: weight must be 1..=1000"),
                    )
                })?;
            host_port("upstream.weights", node.trim())?;
            weights.insert(node.trim().to_owned(), weight);
        }
        Ok(weights)
    }

    /// The gossip settings; None when `cluster.seeds` is empty (the peer runs alone).
    pub fn cluster_settings(
        &self,
    ) -> Result<Option<satmesh_cluster::ClusterSettings>, ConfigError> {
        let c = &self.cluster;
        let gossip_listen = parse_addr("cluster.gossip_listen", &c.gossip_listen)?;
        let advertise = match &c.advertise {
            Some(a) => Some(parse_addr("cluster.advertise", a)?),
            None => None,
        };
        for seed in &c.seeds {
            host_port("cluster.seeds", seed)?;
        }
        if c.gossip_interval_ms == 0 {
            return Err(invalid("cluster.gossip_interval_ms", "must be at least 1"));
        }
        if c.cluster_id.is_empty() {
            return Err(invalid("cluster.cluster_id", "must not be empty"));
        }
        if c.node_id.as_ref().is_some_and(|n| n.trim().is_empty()) {
            return Err(invalid("cluster.node_id", "must not be empty"));
        }
        if c.seeds.is_empty() {
            return Ok(None);
        }
        let mut settings = satmesh_cluster::ClusterSettings {
            gossip_listen,
            advertise,
            seeds: c.seeds.clone(),
            cluster_id: c.cluster_id.clone(),
            gossip_interval: Duration::from_millis(c.gossip_interval_ms),
            ..Default::default()
        };
        if let Some(node_id) = &c.node_id {
            settings.node_id = node_id.clone();
        }
        settings
            .validate()
            .map_err(|reason| invalid("cluster", reason))?;
        Ok(Some(settings))
    }

    /// This peer's node id: `cluster.node_id`, else the host name.
    pub fn node_id(&self) -> String {
        self.cluster
            .node_id
            .clone()
            .unwrap_or_else(satmesh_cluster::settings::hostname)
    }

    pub fn route_policy(&self, protocol: &str) -> RoutePolicy {
        match self.routing.protocols.get(protocol) {
            Some(policy) => *policy,
            // Meter data keeps per-instance state in the OAP (rates, increases).
            None if protocol == "meter" => RoutePolicy::Fixed,
            None => self.routing.default,
        }
    }

    pub fn server_addr(&self) -> SocketAddr {
        parse_addr("server.listen", &self.server.listen).expect("validated")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        parse_addr("admin.listen", &self.admin.listen).expect("validated")
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|e| invalid(key, format!("`{value}` is not an ip:port address ({e})")))
}

fn host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, format!("`{value}` is not host:port")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:11800");
        assert_eq!(c.server.max_message_bytes, 50 * 1024 * 1024);
        assert_eq!(c.admin.listen, "0.0.0.0:1234");
        assert!(c.upstream.static_nodes.is_empty());
        assert!(c.require_upstream().is_err());
    }

    #[test]
    fn environment_overrides_with_double_underscore_and_lists() {
        let c = Config::load(
            None,
            env(&[
                ("SATMESH__SERVER__LISTEN", "127.0.0.1:9000"),
                ("SATMESH__SERVER__MAX_MESSAGE_BYTES", "1024"),
                ("SATMESH__UPSTREAM__STATIC", "oap-1:11800,oap-2:11800"),
                ("SATMESH__UPSTREAM__DNS", "oap.ns.svc:11800"),
                ("SATMESH__PIPELINE__FLUSH_INTERVAL", "5ms"),
                ("SATMESH__ROUTING__PROTOCOLS__LOG", "weighted"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:9000");
        assert_eq!(c.server.max_message_bytes, 1024);
        assert_eq!(c.upstream.static_nodes, ["oap-1:11800", "oap-2:11800"]);
        assert_eq!(c.upstream.dns.as_deref(), Some("oap.ns.svc:11800"));
        assert_eq!(c.pipeline.flush_interval, Duration::from_millis(5));
        assert_eq!(c.route_policy("log"), RoutePolicy::Weighted);
        assert_eq!(c.route_policy("trace"), RoutePolicy::RoundRobin);
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "server:\n  listen: 127.0.0.1:1\nupstream:\n  static: [a:1]\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[("SATMESH__SERVER__LISTEN", "127.0.0.1:2")]),
        )
        .unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2");
        assert_eq!(c.upstream.static_nodes, ["a:1"]);
    }

    fn error_of(pairs: &[(&str, &str)]) -> String {
        Config::load(None, env(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(error_of(&[("SATMESH__SERVER__LISTEN", "nope")]).contains("server.listen"));
        assert!(error_of(&[("SATMESH__SERVER__LISTN", "x")]).contains("listn"));
        assert!(error_of(&[("SATMESH__UPSTREAM__STATIC", "oap")]).contains("upstream.static"));
        assert!(error_of(&[("SATMESH__UPSTREAM__WEIGHTS", "a:1=0")]).contains("upstream.weights"));
        assert!(
            error_of(&[("SATMESH__ROUTING__PROTOCOLS__TRACES", "weighted")])
                .contains("routing.protocols.traces")
        );
        assert!(
            error_of(&[("SATMESH__PIPELINE__BATCH_SIZE", "0")]).contains("pipeline.batch_size")
        );
        assert!(
            error_of(&[("SATMESH__PIPELINE__FLUSH_INTERVAL", "soon")]).contains("flush_interval")
        );
        assert!(
            error_of(&[("SATMESH__SERVER__CONNECTION_WINDOW_BYTES", "100")])
                .contains("server.connection_window_bytes")
        );
        assert!(
            error_of(&[("SATMESH__UPSTREAM__BACKOFF_MIN", "0s")]).contains("upstream.backoff_min")
        );
        assert!(
            error_of(&[("SATMESH__UPSTREAM__TOKEN", "bad\u{1}token")]).contains("upstream.token")
        );
        assert!(
            error_of(&[("SATMESH__PIPELINE__MAX_REJECTIONS", "0")])
                .contains("pipeline.max_rejections")
        );
    }

    #[test]
    fn weights_parse() {
        let c = Config::load(None, env(&[("SATMESH__UPSTREAM__WEIGHTS", "a:1=3, b:2=1")])).unwrap();
        let w = c.weights().unwrap();
        assert_eq!(w.get("a:1"), Some(&3));
        assert_eq!(w.get("b:2"), Some(&1));
    }
}
