//! Self-report: the peer sends its own numbers to the OAP through the meter protocol,
//! under Apache SkyWalking Satellite's telemetry names, so the OAP's existing `satellite`
//! rules (and the SWCK metrics adapter autoscaling on them) work for a tier of satmesh
//! peers as they do for Satellite. Off unless `self_report.enabled`.
//!
//! # What Satellite sends (the facts this module copies)
//!
//! - **Transport.** Satellite's `metrics_service` telemetry exporter
//!   (apache/skywalking-satellite `internal/satellite/telemetry/metricservice/server.go`)
//!   sends, every `telemetry.metrics_service.interval` seconds (default 10, from
//!   `configs/satellite_config.yaml`), one `MeterDataCollection` on a
//!   `/skywalking.v3.MeterReportService/collectBatch` stream. Each metric series is one
//!   `MeterData` holding a `MeterSingleValue` (name, labels, value) and the report's
//!   timestamp in milliseconds; service and serviceInstance are set on the first element.
//!   Counters are cumulative since start; gauges are the current value.
//! - **Names.** `telemetry.metrics_service.metric_prefix` (default `sw_stl_`) + the name
//!   a Satellite module registers (`telemetry.NewCounter` / `NewGauge`): the receiver
//!   gatherer's `gatherer_receive_count{pipe,status}` (status `all` per event received,
//!   `abandoned` when the enqueue failed) and `queue_output_count{pipe,status}` (an event
//!   taken off the queue toward the sender: `success`, or `error`); the fetcher
//!   gatherer's `gatherer_fetch_count{pipe,status}`; the sender's
//!   `sender_output_count{pipe,status,type}` (events forwarded, `success`, or `failure`
//!   once the fallbacker gave up; `type` is the forwarder's event type); the memory
//!   queue's gauges `pipeline_queue_total_capacity{pipeline}` and
//!   `pipeline_queue_partition_size{pipeline,partition}`; the gRPC server's accept
//!   limiter's gauges `grpc_server_connection_count` (open connections) and
//!   `grpc_server_cpu_gauge` (gopsutil `cpu.Percent` over all CPUs: the *host's* CPU in
//!   percent, though its help text says "of satellite process").
//! - **Service and instance.** `telemetry.service` (default `satellite-service`) and
//!   `telemetry.instance` (default `satellite-instance`). The OAP's meter receiver turns
//!   them into the `service` and `instance` labels (apache/skywalking
//!   `docs/en/setup/backend/backend-meter.md`).
//! - **The OAP's rules.** apache/skywalking
//!   `oap-server/server-starter/src/main/resources/meter-analyzer-config/satellite.yaml`
//!   (active by default: `SW_METER_ANALYZER_ACTIVE_FILES` lists `satellite`): service
//!   scope, service renamed `satellite::<service>` (layer `SO11Y_SATELLITE` in current
//!   versions), `metricPrefix: satellite`. `satellite_service_receive_event_count`,
//!   `_fetch_event_count`, `_queue_input_count` and `_send_event_count` are
//!   `sum(["pipe","status","service"]).increase("PT1M")` of the four counters;
//!   `_queue_total_capacity` and `_queue_used_count` sum the queue gauges by `pipeline`;
//!   `_server_cpu_utilization` and `_grpc_connect_count` are the two server gauges. (An
//!   older version of the file, commit 8776a032, used unprefixed names, instance scope.)
//! - **SWCK.** Its sample HPA (apache/skywalking-swck
//!   `operator/config/samples/satellite-hpa.yaml`) scales on the external metrics
//!   `skywalking.apache.org|satellite_service_grpc_connect_count` (target 1900) and
//!   `..|satellite_service_server_cpu_utilization` (target 75) of the service
//!   `satellite::satellite-service`; `docs/examples/satellite.md` enables them with
//!   `SATELLITE_TELEMETRY_EXPORT_TYPE=metrics_service` and the OAP's `satellite` rules.
//!
//! # What satmesh maps, and what not
//!
//! Sent (series of a counter once it is above 0, as Satellite creates a series at its
//! first increment; `pipe` and `type` are satmesh's protocol names):
//! `sw_stl_gatherer_receive_count{pipe,status="all"}` = `satmesh_messages_in_total`;
//! `sw_stl_sender_output_count{pipe,status="success",type}` = `satmesh_messages_out_total`
//! (acknowledged by an OAP) and `{status="failure"}` = `satmesh_messages_dropped_total`
//! (both reasons: data lost, as Satellite's failure is); `sw_stl_grpc_server_connection_count`
//! = open agent connections; `sw_stl_pipeline_queue_total_capacity{pipeline="satmesh"}` =
//! `pipeline.queue_events` and `sw_stl_pipeline_queue_partition_size{pipeline="satmesh",
//! partition="0"}` = events held (satmesh has one queue, and it counts in-flight events
//! against its bound, so "used" includes them); `sw_stl_grpc_server_cpu_gauge` = this
//! process's CPU time (`/proc/self/stat`) over the interval, in percent of the CPUs it may
//! use (`available_parallelism`, which honours cgroup quotas): per pod, where Satellite
//! measured the whole host. satmesh's per-protocol counters also count the query and
//! sync messages of a protocol (`cds`, `profile`, `ebpf`, ...), which Satellite's do not,
//! and `satmesh_messages_out_total{protocol="meter"}` counts these reports themselves.
//!
//! Not sent: `gatherer_fetch_count` (satmesh fetches nothing: no Kafka or scrape
//! fetchers); `queue_output_count` (Satellite counts events taken off its queue before
//! sending; satmesh's queue gives an event up only once an OAP acknowledged it, and no
//! counter counts the take, so the only honest number would repeat
//! `sender_output_count`); `gatherer_receive_count{status="abandoned"}` (satmesh never
//! abandons: a full queue slows the agent instead, so the series would never start).
//!
//! # How it is sent
//!
//! Each report is one `MeterDataCollection` pushed onto the pipeline's queue as an event
//! of `collectBatch`, as if an agent had sent it: it is batched, routed (`meter` is
//! `fixed` by default, so one peer's reports keep reaching one OAP, which the rules'
//! `increase` needs), retried and counted like any meter data. Every element carries
//! service, instance and timestamp, so a report stays whole whatever it is batched with.
//! It carries no token of its own: `upstream.token`, when set, is sent with it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prost::Message;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::frontdoor::Connections;
use crate::metrics::Metrics;
use crate::pipeline::{Event, EventQueue, key_of};
use crate::protocol::{self, METHODS, MethodId, Payload, RoutePolicy};

/// The path Satellite's exporter reports on.
pub const PATH: &str = "/skywalking.v3.MeterReportService/collectBatch";

/// Satellite's metric names with its default prefix `sw_stl_`.
pub const RECEIVE_COUNT: &str = "sw_stl_gatherer_receive_count";
pub const SENDER_OUTPUT_COUNT: &str = "sw_stl_sender_output_count";
pub const CONNECTION_COUNT: &str = "sw_stl_grpc_server_connection_count";
pub const CPU_GAUGE: &str = "sw_stl_grpc_server_cpu_gauge";
pub const QUEUE_TOTAL_CAPACITY: &str = "sw_stl_pipeline_queue_total_capacity";
pub const QUEUE_PARTITION_SIZE: &str = "sw_stl_pipeline_queue_partition_size";

/// The `pipeline` label of the queue gauges: satmesh has one queue for every protocol.
const PIPELINE: &str = "satmesh";

/// `Label` of meter.proto (skywalking-data-collect-protocol v10.3.0): name=1, value=2.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `MeterSingleValue`: name=1, labels=2, value=3.
#[derive(Clone, PartialEq, Message)]
pub struct MeterSingleValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, repeated, tag = "2")]
    pub labels: Vec<Label>,
    #[prost(double, tag = "3")]
    pub value: f64,
}

/// `MeterData`: singleValue=1 / histogram=2 (a oneof; satmesh sends no histogram, and a
/// oneof member is encoded like an optional field), service=3, serviceInstance=4,
/// timestamp=5 (milliseconds).
#[derive(Clone, PartialEq, Message)]
pub struct MeterData {
    #[prost(message, optional, tag = "1")]
    pub single_value: Option<MeterSingleValue>,
    #[prost(string, tag = "3")]
    pub service: String,
    #[prost(string, tag = "4")]
    pub service_instance: String,
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
}

/// `MeterDataCollection`: meterData=1.
#[derive(Clone, PartialEq, Message)]
pub struct MeterDataCollection {
    #[prost(message, repeated, tag = "1")]
    pub meter_data: Vec<MeterData>,
}

/// One protocol's counters at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProtocolCounts {
    pub protocol: &'static str,
    /// Messages received from agents.
    pub received: u64,
    /// Messages an OAP acknowledged.
    pub delivered: u64,
    /// Messages lost after the agent was told OK (both drop reasons).
    pub lost: u64,
}

/// What the peer counted, read at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub protocols: Vec<ProtocolCounts>,
    /// Open agent connections.
    pub connections: u64,
    /// Events queued or in flight, and the queue's bound in events.
    pub queue_used: u64,
    pub queue_capacity: u64,
    /// None until two CPU readings exist, or where `/proc/self/stat` is not readable.
    pub cpu_percent: Option<f64>,
}

fn single(name: &str, labels: &[(&str, &str)], value: f64) -> MeterSingleValue {
    MeterSingleValue {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        value,
    }
}

/// The series of one report, in Satellite's names.
pub fn series(s: &Snapshot) -> Vec<MeterSingleValue> {
    let mut out = Vec::new();
    for p in &s.protocols {
        let pipe = p.protocol;
        if p.received > 0 {
            let labels = [("pipe", pipe), ("status", "all")];
            out.push(single(RECEIVE_COUNT, &labels, p.received as f64));
        }
        for (status, value) in [("success", p.delivered), ("failure", p.lost)] {
            if value > 0 {
                let labels = [("pipe", pipe), ("status", status), ("type", pipe)];
                out.push(single(SENDER_OUTPUT_COUNT, &labels, value as f64));
            }
        }
    }
    out.push(single(CONNECTION_COUNT, &[], s.connections as f64));
    if let Some(cpu) = s.cpu_percent {
        out.push(single(CPU_GAUGE, &[], cpu));
    }
    let pipeline = [("pipeline", PIPELINE)];
    out.push(single(
        QUEUE_TOTAL_CAPACITY,
        &pipeline,
        s.queue_capacity as f64,
    ));
    let partition = [("pipeline", PIPELINE), ("partition", "0")];
    out.push(single(
        QUEUE_PARTITION_SIZE,
        &partition,
        s.queue_used as f64,
    ));
    out
}

/// One report as the OAP receives it: every element names the service, the instance and
/// the time, so the report stands alone in any batch.
pub fn report(s: &Snapshot, service: &str, instance: &str, timestamp_ms: i64) -> Bytes {
    let meter_data = series(s)
        .into_iter()
        .map(|v| MeterData {
            single_value: Some(v),
            service: service.to_owned(),
            service_instance: instance.to_owned(),
            timestamp: timestamp_ms,
        })
        .collect();
    MeterDataCollection { meter_data }.encode_to_vec().into()
}

/// utime + stime (fields 14 and 15, in clock ticks) of `/proc/<pid>/stat`: the CPU time of
/// every thread of the process. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // field 3 is the first here
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc` times: USER_HZ, 100 on every Linux architecture
/// satmesh is built for (x86_64, aarch64), whatever the kernel's HZ.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU used over a span, in percent of `cpus` CPUs (100 = all of them busy).
pub fn cpu_percent(ticks: u64, elapsed: Duration, cpus: usize) -> Option<f64> {
    let capacity = elapsed.as_secs_f64() * cpus as f64;
    (capacity > 0.0).then(|| (ticks as f64 / TICKS_PER_SECOND / capacity * 100.0).min(100.0))
}

/// The process's CPU use between two reports.
struct CpuMeter {
    last: Option<(u64, Instant)>,
    cpus: usize,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let mut meter = CpuMeter { last: None, cpus };
        meter.read();
        meter
    }

    fn read(&mut self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let now = (parse_cpu_ticks(&stat)?, Instant::now());
        let (ticks, at) = self.last.replace(now)?;
        cpu_percent(now.0.saturating_sub(ticks), now.1 - at, self.cpus)
    }
}

/// What a reporter reads and where its reports go.
pub struct Reporter {
    pub metrics: Arc<Metrics>,
    pub queue: Arc<dyn EventQueue>,
    pub connections: Connections,
    pub interval: Duration,
    pub service: String,
    pub instance: String,
    /// `meter` is routed `fixed`: each report then carries its routing key.
    pub fixed: bool,
}

impl Reporter {
    /// A reporter as `self_report.*` configures it, filing under the peer's node id when
    /// `self_report.instance` is unset.
    pub fn new(
        config: &Config,
        metrics: Arc<Metrics>,
        queue: Arc<dyn EventQueue>,
        connections: Connections,
    ) -> Reporter {
        let r = &config.self_report;
        Reporter {
            metrics,
            queue,
            connections,
            interval: r.interval,
            service: r.service.clone(),
            instance: r
                .instance
                .clone()
                .unwrap_or_else(|| crate::tier::node_id(&config.cluster)),
            fixed: protocol::route_policy(&config.routing, "meter") == RoutePolicy::Fixed,
        }
    }

    fn snapshot(&self, cpu: &mut CpuMeter) -> Snapshot {
        let protocols = protocol::protocols()
            .into_iter()
            .filter_map(|p| {
                let id = METHODS.iter().position(|m| m.protocol == p)?;
                let m = self.metrics.method(id as MethodId);
                Some(ProtocolCounts {
                    protocol: p,
                    received: m.messages_in.get(),
                    delivered: m.messages_out.get(),
                    lost: m.dropped_shutdown.get() + m.dropped_rejected.get(),
                })
            })
            .collect();
        let depth = self.queue.depth();
        Snapshot {
            protocols,
            connections: self.connections.len() as u64,
            queue_used: depth.events as u64,
            queue_capacity: depth.capacity_events as u64,
            cpu_percent: cpu.read(),
        }
    }

    /// Queues one report every `interval` (the first one interval after start, as
    /// Satellite's ticker does) until `stop` fires or the queue closes.
    pub async fn run(self, stop: CancellationToken) {
        let Some(method) = protocol::lookup(PATH) else {
            tracing::error!(
                path = PATH,
                "self-report path missing from the protocol table"
            );
            return;
        };
        let mut cpu = CpuMeter::new();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let payload = report(
                &self.snapshot(&mut cpu),
                &self.service,
                &self.instance,
                now_ms,
            );
            let key = self
                .fixed
                .then(|| key_of(Payload::MeterCollection, &payload))
                .flatten();
            let event = Event {
                method,
                auth: None,
                payload,
                enqueued: Instant::now(),
                key,
            };
            // A full queue makes the report wait like an agent's message. Not raced with
            // `stop`: a push given up half-way would leak its room; at shutdown the queue
            // closes, which ends the wait.
            if self.queue.push(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[path = "selfreport_tests.rs"]
mod tests;
