//! What the agent handed to its reporter, and what the reporter told us it lost.
//!
//! `CountingReport` sits between the skywalking crate's producers (Tracer, Logger, Metricer,
//! Manager) and its `GrpcReporter`, so every `CollectItem` is counted by kind exactly once.
//! The reporter's error and status handlers feed the loss counters: an item the reporter
//! could not queue (its bounded 255-slot per-signal channel was full) or a stream call that
//! failed (whatever it had popped into that stream is gone).

use serde_json::{Value, json};
use skywalking::reporter::{CollectItem, Report};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

/// Counters shared by the counting reporter and the reporter's handlers.
#[derive(Default)]
pub struct Counts {
    pub segments: AtomicU64,
    pub logs: AtomicU64,
    pub meters: AtomicU64,
    pub properties: AtomicU64,
    pub pings: AtomicU64,
    /// Items the reporter refused to queue, by signal (see `GrpcReporter::with_err_handle`).
    pub dropped_segments: AtomicU64,
    pub dropped_logs: AtomicU64,
    pub dropped_meters: AtomicU64,
    pub dropped_other: AtomicU64,
    /// Failed client-stream calls (trace, log, meter collect).
    pub stream_errors: AtomicU64,
    /// Failed unary management calls (reportInstanceProperties, keepAlive).
    pub management_errors: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::SeqCst)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

impl Counts {
    /// Record one error reported through `with_err_handle`, keyed by the crate's message.
    pub fn on_err(&self, message: &str) {
        match message {
            "report trace segment failed" => bump(&self.dropped_segments),
            "report log data failed" => bump(&self.dropped_logs),
            "report meter data failed" => bump(&self.dropped_meters),
            _ => bump(&self.dropped_other),
        }
    }

    /// Record one failed call reported through `with_status_handle`.
    pub fn on_status(&self, message: &str) {
        if message.starts_with("Collect ") {
            bump(&self.stream_errors);
        } else {
            bump(&self.management_errors);
        }
    }

    /// The summary line: each signal's count is what was queued for the wire
    /// (handed to the reporter minus what it dropped).
    pub fn summary(&self, service: &str, instance: &str) -> Value {
        json!({
            "service": service,
            "instance": instance,
            "segments": get(&self.segments) - get(&self.dropped_segments),
            "logs": get(&self.logs) - get(&self.dropped_logs),
            "meters": get(&self.meters) - get(&self.dropped_meters),
            "properties": get(&self.properties),
            "pings": get(&self.pings),
            "dropped": {
                "segments": get(&self.dropped_segments),
                "logs": get(&self.dropped_logs),
                "meters": get(&self.dropped_meters),
                "other": get(&self.dropped_other),
            },
            "stream_errors": get(&self.stream_errors),
            "management_errors": get(&self.management_errors),
        })
    }
}

/// A `Report` that counts each item by kind, then hands it to the real reporter.
#[derive(Clone)]
pub struct CountingReport<R> {
    pub inner: R,
    pub counts: Arc<Counts>,
}

impl<R: Report> Report for CountingReport<R> {
    fn report(&self, item: CollectItem) {
        match &item {
            CollectItem::Trace(_) => bump(&self.counts.segments),
            CollectItem::Log(_) => bump(&self.counts.logs),
            CollectItem::Meter(_) => bump(&self.counts.meters),
            CollectItem::Instance(_) => bump(&self.counts.properties),
            CollectItem::Ping(_) => bump(&self.counts.pings),
            _ => {}
        }
        self.inner.report(item);
    }
}
