//! Self-report: the peer sends its own numbers to the OAP through the meter protocol,
//! under Apache SkyWalking Satellite's telemetry names, so the OAP's existing `satellite`
//! rules (and the SWCK metrics adapter autoscaling on them) work for a tier of satmesh
//! peers as they do for Satellite. Off unless `self_report.enabled`.
//!
//! Which Satellite series are sent, from which of satmesh's counters, and which are not
//! (with the sources of every fact about Satellite, the OAP's rules and SWCK): see
//! `docs/self-report.md`.
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

/// The messages of meter.proto (skywalking-data-collect-protocol v10.3.0), declared once
/// in `satmesh_proto::messages`.
pub use satmesh_proto::messages::{Label, MeterData, MeterDataCollection, MeterSingleValue};

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
    /// None until two CPU readings exist, or where the process's CPU time is unreadable.
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

/// This process's CPU time so far: user + system time of every thread, from
/// `/proc/self/stat` at the kernel's own clock-tick rate. None where that is unreadable.
#[cfg(target_os = "linux")]
pub fn process_cpu_time() -> Option<Duration> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = stat.utime.saturating_add(stat.stime);
    let per_second = procfs::ticks_per_second();
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

#[cfg(not(target_os = "linux"))]
pub fn process_cpu_time() -> Option<Duration> {
    None
}

/// CPU time `used` over `elapsed`, in percent of `cpus` CPUs (100 = all of them busy).
pub fn cpu_percent(used: Duration, elapsed: Duration, cpus: usize) -> Option<f64> {
    let capacity = elapsed.as_secs_f64() * cpus as f64;
    (capacity > 0.0).then(|| (used.as_secs_f64() / capacity * 100.0).min(100.0))
}

/// The process's CPU use between two reports.
struct CpuMeter {
    last: Option<(Duration, Instant)>,
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
        let now = (process_cpu_time()?, Instant::now());
        let (used, at) = self.last.replace(now)?;
        cpu_percent(now.0.saturating_sub(used), now.1 - at, self.cpus)
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
                seq: 0,
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
mod tests;
