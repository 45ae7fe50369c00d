//! Every metric satmesh exports, defined once. Names are documented in the README.
//!
//! Hot-path handles (per method) are resolved once at start-up, so counting a message is
//! one atomic add, never a label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::{METHODS, MethodId};

/// Why messages were lost after an agent was told they were taken.
pub const DROP_SHUTDOWN: &str = "shutdown_deadline";
pub const DROP_REJECTED: &str = "rejected_by_oap";

pub struct Metrics {
    registry: Registry,
    /// Open agent connections.
    pub connections_open: IntGauge,
    pub connections_total: IntCounter,
    /// The front door's connection lifecycle (limit, turn-aways, drains).
    pub front_door: FrontDoorMetrics,
    /// Calls refused before reaching the pipeline, by reason (`oversize`, `unknown_path`).
    pub refused: IntCounterVec,
    pub queue_events: IntGauge,
    pub queue_bytes: IntGauge,
    pub queue_capacity_events: IntGauge,
    pub queue_capacity_bytes: IntGauge,
    /// The disk queue (`pipeline.queue: disk`); zero without one.
    pub disk: DiskMetrics,
    pub batch_size: Histogram,
    /// Time from an event entering the queue to the OAP acknowledging its batch.
    pub delivery_latency: Histogram,
    /// Time a report call waits, after its last message was queued, for the disk queue
    /// to hold it (written, or synced with `fsync: always`) before the agent's OK.
    pub settle_latency: Histogram,
    pub upstream_latency: HistogramVec,
    pub upstream_up: IntGaugeVec,
    pub upstream_failures: IntCounterVec,
    /// For an HPA and people: this pod's open connections over its limit (0 without one).
    pub connection_utilisation: prometheus::Gauge,
    /// Tier-wide, from gossip: open connections of live peers, their limits, live peers.
    pub tier_connections: IntGauge,
    pub tier_connection_limit: IntGauge,
    pub tier_peers: IntGauge,
    /// ceil(tier connections / balance.target_connections_per_pod), at least 1.
    pub tier_desired_replicas: IntGauge,
    /// Messages each OAP node acknowledged.
    pub upstream_messages: IntCounterVec,
    dropped: IntCounterVec,
    messages_in: IntCounterVec,
    per_method: Vec<MethodMetrics>,
}

/// What the front door counts about connections (see `frontdoor::lifecycle`). Cloned into
/// the connection registry, so a drain or a turn-away is one atomic add.
#[derive(Clone)]
pub struct FrontDoorMetrics {
    /// `server.max_connections` (0: unlimited).
    pub connection_limit: IntGauge,
    /// Connections closed before the HTTP/2 handshake, by reason (`limit`, `over_share`, ...).
    pub turned_away: IntCounterVec,
    /// Connections sent a graceful GOAWAY, by reason (`shed`, `age`, `limit`, `shutdown`).
    pub drained: IntCounterVec,
    /// Draining connections closed at the end of their grace with streams still open.
    pub closed_hard: IntCounterVec,
    /// Connections draining now.
    pub draining: IntGauge,
    /// Agents this peer shed that came back to it within `balance.return_window` (they
    /// could not move; they are not shed again).
    pub returned: IntCounter,
    /// 1 while the agent listener is open, 0 while closed because this peer is above its
    /// share of the tier (new connections are refused by the kernel).
    pub listener_open: IntGauge,
    /// Times the listener was closed because this peer was above its share.
    pub listener_closed: IntCounter,
    /// Client-streams of draining connections that satmesh ended with OK between two
    /// messages (instead of waiting for the agent to end them).
    pub streams_ended: IntCounter,
    /// Messages that arrived on such a stream after its OK, and were queued all the same.
    pub after_stream_end: IntCounter,
}

/// Handles for one method's protocol label.
#[derive(Clone)]
pub struct MethodMetrics {
    pub calls_in: IntCounter,
    pub messages_in: IntCounter,
    pub bytes_in: IntCounter,
    pub messages_out: IntCounter,
    pub calls_out_ok: IntCounter,
    pub calls_out_failed: IntCounter,
    pub messages_retried: IntCounter,
    pub dropped_shutdown: IntCounter,
    pub dropped_rejected: IntCounter,
    /// Queries answered with an empty `Commands` because no OAP answered in time.
    pub query_fallbacks: IntCounter,
}

/// The disk queue's figures, copied from its own counters at each scrape.
pub struct DiskMetrics {
    pub full: IntGauge,
    pub bytes_used: IntGauge,
    pub bytes_limit: IntGauge,
    pub corrupt: IntCounter,
    pub replayed: IntCounter,
    pub read_back: IntCounter,
    pub fsyncs: IntCounter,
    pub bytes_written: IntCounter,
}

impl DiskMetrics {
    /// Brings the metrics up to `stats` (counters only move forward).
    pub fn update(&self, stats: &crate::pipeline::disk::DiskStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.full.set(i64::from(stats.full.load(Relaxed)));
        self.bytes_used.set(stats.used_bytes.load(Relaxed) as i64);
        self.bytes_limit.set(stats.limit_bytes.load(Relaxed) as i64);
        for (counter, value) in [
            (&self.corrupt, &stats.corrupt),
            (&self.replayed, &stats.replayed),
            (&self.read_back, &stats.read_back),
            (&self.fsyncs, &stats.fsyncs),
            (&self.bytes_written, &stats.bytes_written),
        ] {
            counter.inc_by(value.load(Relaxed).saturating_sub(counter.get()));
        }
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let calls_in = counter_vec(
            &r,
            "satmesh_calls_in_total",
            "Calls from agents",
            &["protocol"],
        );
        let messages_in = counter_vec(
            &r,
            "satmesh_messages_in_total",
            "Messages from agents",
            &["protocol"],
        );
        let bytes_in = counter_vec(
            &r,
            "satmesh_bytes_in_total",
            "Payload bytes from agents",
            &["protocol"],
        );
        let messages_out = counter_vec(
            &r,
            "satmesh_messages_out_total",
            "Messages acknowledged by an OAP",
            &["protocol"],
        );
        let calls_out = counter_vec(
            &r,
            "satmesh_calls_out_total",
            "Calls to OAP nodes by outcome",
            &["protocol", "outcome"],
        );
        let retried = counter_vec(
            &r,
            "satmesh_messages_retried_total",
            "Messages sent again after a failed upstream call",
            &["protocol"],
        );
        let dropped = counter_vec(
            &r,
            "satmesh_messages_dropped_total",
            "Messages acknowledged to an agent that never reached an OAP, by reason",
            &["protocol", "reason"],
        );
        let fallbacks = counter_vec(
            &r,
            "satmesh_query_fallbacks_total",
            "Queries answered with empty Commands because no OAP answered in time",
            &["protocol"],
        );
        let per_method = METHODS
            .iter()
            .map(|m| {
                let p = m.protocol;
                MethodMetrics {
                    calls_in: calls_in.with_label_values(&[p]),
                    messages_in: messages_in.with_label_values(&[p]),
                    bytes_in: bytes_in.with_label_values(&[p]),
                    messages_out: messages_out.with_label_values(&[p]),
                    calls_out_ok: calls_out.with_label_values(&[p, "ok"]),
                    calls_out_failed: calls_out.with_label_values(&[p, "failed"]),
                    messages_retried: retried.with_label_values(&[p]),
                    dropped_shutdown: dropped.with_label_values(&[p, DROP_SHUTDOWN]),
                    dropped_rejected: dropped.with_label_values(&[p, DROP_REJECTED]),
                    query_fallbacks: fallbacks.with_label_values(&[p]),
                }
            })
            .collect();
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new("satmesh_upstream_latency_seconds", "Upstream call latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["kind"],
        )
        .expect("valid metric");
        r.register(Box::new(upstream_latency.clone()))
            .expect("unique metric");
        let upstream_up = IntGaugeVec::new(
            Opts::new(
                "satmesh_upstream_up",
                "1 when the OAP node is connected and not set aside",
            ),
            &["node"],
        )
        .expect("valid metric");
        r.register(Box::new(upstream_up.clone()))
            .expect("unique metric");
        Metrics {
            connections_open: gauge(&r, "satmesh_agent_connections", "Open agent connections"),
            connections_total: counter(
                &r,
                "satmesh_agent_connections_total",
                "Agent connections accepted",
            ),
            front_door: FrontDoorMetrics {
                connection_limit: gauge(
                    &r,
                    "satmesh_connection_limit",
                    "server.max_connections: agent connections this peer accepts (0: unlimited)",
                ),
                turned_away: counter_vec(
                    &r,
                    "satmesh_connections_turned_away_total",
                    "Agent connections closed before the HTTP/2 handshake, by reason",
                    &["reason"],
                ),
                drained: counter_vec(
                    &r,
                    "satmesh_connections_drained_total",
                    "Agent connections sent a graceful GOAWAY, by reason",
                    &["reason"],
                ),
                closed_hard: counter_vec(
                    &r,
                    "satmesh_connections_closed_hard_total",
                    "Draining agent connections closed with streams still open at the end of their grace, by reason",
                    &["reason"],
                ),
                draining: gauge(
                    &r,
                    "satmesh_agent_connections_draining",
                    "Agent connections draining (GOAWAY sent, streams finishing)",
                ),
                returned: counter(
                    &r,
                    "satmesh_connections_returned_total",
                    "Agents this peer shed that came back to it within balance.return_window (not shed again)",
                ),
                listener_open: gauge(
                    &r,
                    "satmesh_listener_open",
                    "1 while the agent listener accepts, 0 while closed because this peer is above its share",
                ),
                listener_closed: counter(
                    &r,
                    "satmesh_listener_closed_total",
                    "Times the agent listener was closed because this peer was above its share of the tier",
                ),
                streams_ended: counter(
                    &r,
                    "satmesh_streams_ended_on_drain_total",
                    "Client-streams of draining connections ended by satmesh with OK between two messages",
                ),
                after_stream_end: counter(
                    &r,
                    "satmesh_messages_after_stream_end_total",
                    "Messages that arrived on a stream after satmesh ended it with OK (sent before the agent saw the OK), queued like any other",
                ),
            },
            refused: counter_vec(
                &r,
                "satmesh_calls_refused_total",
                "Agent calls refused before the pipeline, by reason",
                &["reason"],
            ),
            queue_events: gauge(&r, "satmesh_queue_events", "Events queued or in flight"),
            queue_bytes: gauge(
                &r,
                "satmesh_queue_bytes",
                "Payload bytes queued or in flight",
            ),
            queue_capacity_events: gauge(
                &r,
                "satmesh_queue_capacity_events",
                "Queue capacity in events",
            ),
            queue_capacity_bytes: gauge(
                &r,
                "satmesh_queue_capacity_bytes",
                "Queue capacity in bytes",
            ),
            disk: DiskMetrics {
                full: gauge(
                    &r,
                    "satmesh_disk_full",
                    "1 while the disk queue cannot write (at pipeline.disk.max_bytes, or the file system refused a write): agents are slowed, nothing is dropped",
                ),
                bytes_used: gauge(
                    &r,
                    "satmesh_disk_bytes_used",
                    "Bytes of the disk queue's segment and acknowledgement files",
                ),
                bytes_limit: gauge(
                    &r,
                    "satmesh_disk_bytes_limit",
                    "pipeline.disk.max_bytes (0 without a disk queue)",
                ),
                corrupt: counter(
                    &r,
                    "satmesh_disk_records_corrupt_total",
                    "Disk queue records skipped because they were damaged or unreadable (each logged with its file and offset)",
                ),
                replayed: counter(
                    &r,
                    "satmesh_disk_records_replayed_total",
                    "Records left by the last run found on disk and sent again",
                ),
                read_back: counter(
                    &r,
                    "satmesh_disk_records_read_total",
                    "Records read back from the disk queue's files to be sent; the others went from the writer straight to the senders, while the OAPs kept up",
                ),
                fsyncs: counter(
                    &r,
                    "satmesh_disk_fsyncs_total",
                    "fdatasync calls of the disk queue",
                ),
                bytes_written: counter(
                    &r,
                    "satmesh_disk_bytes_written_total",
                    "Bytes the disk queue wrote (records, headers, acknowledgements)",
                ),
            },
            batch_size: histogram(
                &r,
                "satmesh_batch_size",
                "Events per upstream batch",
                vec![
                    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
                ],
            ),
            delivery_latency: histogram(
                &r,
                "satmesh_delivery_latency_seconds",
                "Time from queueing an event to the OAP acknowledging it",
                LATENCY_BUCKETS.to_vec(),
            ),
            settle_latency: histogram(
                &r,
                "satmesh_disk_settle_seconds",
                "Time a report call waited after its last message was queued for the disk queue to hold it (written, or synced with fsync: always) before the agent was answered OK",
                LATENCY_BUCKETS.to_vec(),
            ),
            upstream_latency,
            upstream_up,
            upstream_failures: counter_vec(
                &r,
                "satmesh_upstream_failures_total",
                "Failed upstream calls and connection attempts per OAP node",
                &["node"],
            ),
            connection_utilisation: {
                let g = prometheus::Gauge::new(
                    "satmesh_connection_utilisation",
                    "Open agent connections over satmesh_connection_limit (0 without a limit)",
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            tier_connections: gauge(
                &r,
                "satmesh_tier_connections",
                "Open agent connections of the live peers of the tier (gossip)",
            ),
            tier_connection_limit: gauge(
                &r,
                "satmesh_tier_connection_limit",
                "Connection limits of the live ready peers of the tier (gossip)",
            ),
            tier_peers: gauge(&r, "satmesh_tier_peers", "Live peers of the tier (gossip)"),
            tier_desired_replicas: gauge(
                &r,
                "satmesh_tier_desired_replicas",
                "Peers the tier needs: ceil(tier connections / balance.target_connections_per_pod)",
            ),
            upstream_messages: counter_vec(
                &r,
                "satmesh_upstream_messages_total",
                "Messages acknowledged by each OAP node",
                &["node"],
            ),
            per_method,
            dropped,
            messages_in,
            registry: r,
        }
    }

    /// Messages received from agents, across every protocol.
    pub fn messages_in_total(&self) -> u64 {
        crate::protocol::protocols()
            .iter()
            .map(|p| self.messages_in.with_label_values(&[p]).get())
            .sum()
    }

    /// Messages dropped for `reason`, across every protocol.
    pub fn dropped_total(&self, reason: &str) -> u64 {
        crate::protocol::protocols()
            .iter()
            .map(|p| self.dropped.with_label_values(&[p, reason]).get())
            .sum()
    }

    pub fn method(&self, id: MethodId) -> &MethodMetrics {
        &self.per_method[usize::from(id)]
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is utf-8")
    }
}
