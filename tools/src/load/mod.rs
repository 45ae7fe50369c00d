//! A synthetic agent fleet: N connections (one HTTP/2 connection each, as agents do), each
//! with M concurrent client-streams of real-shaped SegmentObject messages, S client-streams
//! of MeterData, and keepAlive pings at R calls/s over the whole fleet. Used by
//! `satmesh bench` and `satmesh demo`.
//!
//! # Layout
//!
//! - [`segment`]: the segment encoder and the send time a traceId carries.
//! - [`meter`]: the MeterData and InstancePingPkg encoders.
//! - `workers`: the loops: a client-stream per task, and one keepAlive pacer.
//! - [`latency`]: HdrHistogram summaries (p50, p99, p999, max), shared with the sink.
//! - [`sink_admin`]: reads the sink's delivery latency for `satmesh bench --sink-admin`.
//! - [`dial`]: first-address-first dialling of a multi-address target.
//! - [`idle`]: idle agent connections, for `satmesh bench --idle N`.
//! - `trace`: what each agent last did, for a test that finds one missing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

pub mod dial;
pub mod idle;
pub mod latency;
pub mod meter;
pub mod segment;
pub mod sink_admin;
mod trace;
mod workers;

pub use latency::{LatencySummary, Percentiles};
pub use meter::{KEEPALIVE_PATH, METER_PATH};
pub use segment::SegmentObject;

pub const SEGMENT_PATH: &str = "/skywalking.v3.TraceSegmentReportService/collect";

/// What the fleet sends. In code, build it with struct update syntax from
/// `LoadSpec::default()` (one connection, one stream); as `satmesh bench`'s flags it
/// defaults to a heavier load (8 connections, 2 streams each), the clap attributes below.
#[derive(Clone, Debug, clap::Args)]
pub struct LoadSpec {
    /// gRPC address to load; several (comma-separated) are dialled first-address-first,
    /// as gRPC's pick-first does.
    #[arg(
        long = "target",
        value_name = "TARGET",
        value_delimiter = ',',
        required = true
    )]
    pub targets: Vec<SocketAddr>,
    /// HTTP/2 connections, one per synthetic agent process.
    #[arg(long, default_value_t = 8, value_parser = crate::cli::at_least_one)]
    pub connections: usize,
    /// Concurrent segment client-streams per connection (0: no segments).
    #[arg(long = "streams", value_name = "STREAMS", default_value_t = 2)]
    pub streams_per_connection: usize,
    /// Messages per client-stream call (segments, or MeterData of a meter stream).
    #[arg(long, default_value_t = 50, value_parser = crate::cli::at_least_one)]
    pub messages_per_call: usize,
    /// Encoded size of one segment in bytes (real-shaped spans, padded with tags).
    #[arg(long = "size", value_name = "SIZE", default_value_t = 300)]
    pub message_bytes: usize,
    /// Stop after this long (calls in flight are finished).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after N segments acknowledged (or --duration, whichever comes first).
    #[arg(long = "messages", alias = "max-messages", value_name = "N")]
    pub max_messages: Option<u64>,
    /// Pause between two calls of one stream, e.g. 10ms (default: none, full speed).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub call_interval: Duration,
    /// Service instances the data is reported as, spread over the connections (default,
    /// 0: one per connection). Instance `k` is `bench-inst-{k}` of service
    /// `bench-svc-{k % 16}`.
    #[arg(long, value_name = "K", default_value_t = 0, hide_default_value = true)]
    pub instances: usize,
    /// Concurrent MeterData client-streams per connection (MeterReportService/collect).
    #[arg(long = "meter-streams", default_value_t = 0, value_name = "S")]
    pub meter_streams_per_connection: usize,
    /// keepAlive calls per second over all connections, round-robin over the
    /// connections (0: none); their latency is reported.
    #[arg(
        long = "keepalive-rate",
        default_value_t = 0.0,
        value_name = "R",
        value_parser = crate::cli::parse_rate
    )]
    pub keepalive_per_second: f64,
}

impl Default for LoadSpec {
    fn default() -> LoadSpec {
        LoadSpec {
            targets: Vec::new(),
            connections: 1,
            streams_per_connection: 1,
            messages_per_call: 50,
            message_bytes: 300,
            duration: Duration::from_secs(10),
            max_messages: None,
            call_interval: Duration::ZERO,
            instances: 0,
            meter_streams_per_connection: 0,
            keepalive_per_second: 0.0,
        }
    }
}

/// Live counters while the load runs.
pub struct Progress {
    /// Segments acknowledged.
    pub messages: AtomicU64,
    /// Encoded bytes of the segments acknowledged.
    pub bytes: AtomicU64,
    /// Segment calls finished (acknowledged or failed).
    pub calls: AtomicU64,
    /// MeterData acknowledged.
    pub meters: AtomicU64,
    /// Calls failed, of every kind.
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    /// What each agent (connection) last did.
    pub agents: trace::Traces,
    /// Latency of each acknowledged keepAlive call.
    unary: Mutex<Histogram<u64>>,
    errors_by_status: Mutex<BTreeMap<String, u64>>,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            messages: AtomicU64::default(),
            bytes: AtomicU64::default(),
            calls: AtomicU64::default(),
            meters: AtomicU64::default(),
            errors: AtomicU64::default(),
            connected: AtomicU64::default(),
            agents: trace::Traces::default(),
            unary: Mutex::new(latency::histogram()),
            errors_by_status: Mutex::default(),
        }
    }
}

impl Progress {
    /// The keepAlive calls acknowledged so far and their latency.
    pub fn unary(&self) -> LatencySummary {
        LatencySummary::of(&self.unary.lock().expect("unary histogram lock"))
    }

    /// Failed calls by gRPC status code name (`Unavailable`, ...).
    pub fn errors_by_status(&self) -> BTreeMap<String, u64> {
        self.errors_by_status.lock().expect("errors lock").clone()
    }

    fn record_unary(&self, took: Duration) {
        latency::record(&mut self.unary.lock().expect("unary histogram lock"), took);
    }

    fn record_error(&self, code: tonic::Code) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .errors_by_status
            .lock()
            .expect("errors lock")
            .entry(format!("{code:?}"))
            .or_default() += 1;
    }
}

/// keepAlive calls acknowledged and their latency.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UnaryReport {
    pub calls: u64,
    #[serde(flatten)]
    pub latency: Percentiles,
}

/// What `satmesh bench` reports (`--json` prints it as is).
#[derive(Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub seconds: f64,
    /// Segments acknowledged.
    pub messages: u64,
    pub messages_per_second: f64,
    /// Encoded bytes of the segments acknowledged.
    pub bytes: u64,
    /// Segment calls finished.
    pub calls: u64,
    /// MeterData acknowledged.
    pub meters: u64,
    /// Failed calls of every kind by gRPC status code name.
    pub errors_by_status: BTreeMap<String, u64>,
    pub unary: UnaryReport,
    /// Send -> arrival at the sink, when the bench was given the sink's admin address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<LatencySummary>,
}

impl LoadReport {
    /// The report as text, one line per kind of traffic.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} segments in {:.1} s: {:.0} messages/s, {:.1} MiB, {} calls\n",
            self.messages,
            self.seconds,
            self.messages_per_second,
            self.bytes as f64 / (1 << 20) as f64,
            self.calls
        );
        if self.meters > 0 {
            out += &format!("meters: {} MeterData acknowledged\n", self.meters);
        }
        if self.unary.calls > 0 {
            out += &format!(
                "keepAlive: {} calls, {}\n",
                self.unary.calls,
                latency::render(&self.unary.latency)
            );
        }
        if let Some(d) = &self.delivery {
            out += &format!(
                "delivery (sent -> sink): {} segments, {}\n",
                d.count,
                latency::render(&d.percentiles)
            );
        }
        if self.errors_by_status.is_empty() {
            out += "errors: none";
        } else {
            let errors: Vec<String> = self
                .errors_by_status
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            out += &format!("errors: {}", errors.join(", "));
        }
        out
    }
}

/// Service and instance names of instance `k`.
fn instance_names(k: usize) -> (String, String) {
    (format!("bench-svc-{}", k % 16), format!("bench-inst-{k}"))
}

/// The instances connection `c` of `connections` reports as: every `connections`-th of
/// `instances` starting at `c`, or one shared instance when there are fewer instances
/// than connections.
fn instances_of(c: usize, connections: usize, instances: usize) -> Vec<usize> {
    if instances < connections {
        vec![c % instances.max(1)]
    } else {
        (c..instances).step_by(connections.max(1)).collect()
    }
}

/// Runs the fleet until the duration, the segment budget or `stop`. Calls in flight at
/// the deadline are finished and counted; `stop` abandons them.
pub async fn run(spec: LoadSpec, progress: Arc<Progress>, stop: CancellationToken) -> LoadReport {
    let started = Instant::now();
    let instances = if spec.instances == 0 {
        spec.connections
    } else {
        spec.instances
    };
    let shared = Arc::new(workers::Shared {
        progress: progress.clone(),
        budget: AtomicU64::new(spec.max_messages.unwrap_or(u64::MAX)),
        deadline: tokio::time::Instant::now() + spec.duration,
        stop,
        segments_done: CancellationToken::new(),
        messages_per_call: spec.messages_per_call,
        call_interval: spec.call_interval,
    });
    let started_ms = (latency::unix_nanos() / 1_000_000) as i64;
    let mut tasks = tokio::task::JoinSet::new();
    let segment_streams = spec.connections * spec.streams_per_connection;
    let live_segment_streams = Arc::new(workers::LiveStreams::new(
        segment_streams,
        shared.segments_done.clone(),
    ));
    let mut channels = Vec::new();
    let mut pings = Vec::new();
    for c in 0..spec.connections {
        let channel = workers::connect(&spec.targets, c, progress.clone());
        progress.connected.fetch_add(1, Ordering::Relaxed);
        let names: Vec<(String, String)> = instances_of(c, spec.connections, instances)
            .into_iter()
            .map(instance_names)
            .collect();
        if spec.streams_per_connection > 0 {
            let templates: Arc<[segment::Template]> = names
                .iter()
                .map(|(s, i)| segment::Template::new(s, i, spec.message_bytes, started_ms))
                .collect();
            for j in 0..spec.streams_per_connection {
                tasks.spawn(workers::segment_stream(
                    shared.clone(),
                    live_segment_streams.clone(),
                    channel.clone(),
                    templates.clone(),
                    c,
                    (c * spec.streams_per_connection + j) as u64,
                    j,
                ));
            }
        }
        let names: Arc<[(String, String)]> = names.into();
        for j in 0..spec.meter_streams_per_connection {
            tasks.spawn(workers::meter_stream(
                shared.clone(),
                channel.clone(),
                names.clone(),
                j,
            ));
        }
        pings.push(
            names
                .iter()
                .map(|(s, i)| meter::ping(s, i))
                .collect::<Vec<_>>(),
        );
        channels.push(channel);
    }
    let rate = spec.keepalive_per_second;
    if rate > 0.0 && rate.is_finite() && !channels.is_empty() {
        tasks.spawn(workers::keepalive(shared.clone(), channels, pings, rate));
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let messages = progress.messages.load(Ordering::Relaxed);
    let unary = progress.unary();
    LoadReport {
        seconds,
        messages,
        messages_per_second: messages as f64 / seconds.max(1e-9),
        bytes: progress.bytes.load(Ordering::Relaxed),
        calls: progress.calls.load(Ordering::Relaxed),
        meters: progress.meters.load(Ordering::Relaxed),
        errors_by_status: progress.errors_by_status(),
        unary: UnaryReport {
            calls: unary.count,
            latency: unary.percentiles,
        },
        delivery: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_spread_over_connections() {
        // As many as connections: one each.
        assert_eq!(instances_of(2, 4, 4), [2]);
        // More: every 4th.
        assert_eq!(instances_of(1, 4, 10), [1, 5, 9]);
        assert_eq!(instances_of(3, 4, 10), [3, 7]);
        // Fewer: connections share them.
        assert_eq!(instances_of(5, 8, 3), [2]);
        let all: std::collections::BTreeSet<usize> =
            (0..4).flat_map(|c| instances_of(c, 4, 10)).collect();
        assert_eq!(all, (0..10).collect());
    }

    #[test]
    fn the_json_report_has_the_documented_keys() {
        let mut r = LoadReport {
            messages: 10,
            ..LoadReport::default()
        };
        r.errors_by_status.insert("Unavailable".into(), 2);
        let json = serde_json::to_value(&r).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        for key in [
            "seconds",
            "messages",
            "messages_per_second",
            "bytes",
            "calls",
            "meters",
            "errors_by_status",
            "unary",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
        assert!(!keys.contains(&"delivery"));
        assert_eq!(
            json["unary"],
            serde_json::json!({"calls": 0, "p50_us": 0, "p99_us": 0, "p999_us": 0, "max_us": 0})
        );
        assert_eq!(json["errors_by_status"]["Unavailable"], 2);
        r.delivery = Some(LatencySummary::default());
        assert_eq!(serde_json::to_value(&r).unwrap()["delivery"]["count"], 0);
    }
}
