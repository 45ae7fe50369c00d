//! A synthetic agent fleet: N connections (one HTTP/2 connection each, as agents do),
//! each with M concurrent client-streams of real-shaped SegmentObject messages. Used by
//! `satmesh bench` and `satmesh demo`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::codec::PassThrough;

pub mod dial;

pub const SEGMENT_PATH: &str = "/skywalking.v3.TraceSegmentReportService/collect";

/// SegmentObject with the published field numbers (spans kept as opaque bytes): a
/// faithful encoder for synthetic agents and tests.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct SegmentObject {
    #[prost(string, tag = "1")]
    pub(crate) trace_id: String,
    #[prost(string, tag = "2")]
    pub(crate) trace_segment_id: String,
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub(crate) spans: Vec<Vec<u8>>,
    #[prost(string, tag = "4")]
    pub(crate) service: String,
    #[prost(string, tag = "5")]
    pub(crate) service_instance: String,
}

/// A segment of about `size` bytes on the wire.
pub fn segment(service: &str, instance: &str, seq: u64, size: usize) -> Bytes {
    let overhead = 60 + service.len() + instance.len();
    SegmentObject {
        trace_id: format!("{seq:032x}"),
        trace_segment_id: format!("{seq:016x}.1"),
        spans: vec![vec![b's'; size.saturating_sub(overhead).max(1)]],
        service: service.to_owned(),
        service_instance: instance.to_owned(),
    }
    .encode_to_vec()
    .into()
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Where agents connect: one address (e.g. an L4 virtual IP), or several dialled
    /// first-address-first (see [`dial`]).
    pub targets: Vec<SocketAddr>,
    pub connections: usize,
    pub streams_per_connection: usize,
    /// Messages per client-stream call.
    pub messages_per_call: usize,
    pub message_bytes: usize,
    pub duration: Duration,
    /// Stop after this many messages in all (whichever of this and `duration` comes first).
    pub max_messages: Option<u64>,
    /// Pause between two calls of one stream (zero: as fast as answers come back).
    pub call_interval: Duration,
}

/// Live counters while the load runs.
#[derive(Default)]
pub struct Progress {
    pub messages: AtomicU64,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub messages: u64,
    pub calls: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    pub seconds: f64,
    pub messages_per_second: f64,
}

/// Runs the fleet until the duration, the message budget or `stop`.
pub async fn run(spec: LoadSpec, progress: Arc<Progress>, stop: CancellationToken) -> LoadReport {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.duration;
    let budget = Arc::new(AtomicU64::new(spec.max_messages.unwrap_or(u64::MAX)));
    let errors = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..spec.connections {
        let endpoint = Endpoint::from_shared(format!("http://{}", spec.targets[0]))
            .expect("socket address is a valid uri")
            .tcp_nodelay(true);
        // One HTTP/2 connection per agent; lazy, so a fleet starts without waiting. After a
        // GOAWAY it dials again, first address first.
        let targets = spec.targets.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let targets = targets.clone();
            async move { dial::first_accepting(&targets, Duration::from_secs(1)).await }
        });
        let channel: Channel = endpoint.connect_with_connector_lazy(connector);
        progress.connected.fetch_add(1, Ordering::Relaxed);
        let service = format!("bench-svc-{}", c % 16);
        let instance = format!("bench-inst-{c}");
        let payloads: Vec<Bytes> = (0..spec.messages_per_call as u64)
            .map(|i| {
                segment(
                    &service,
                    &instance,
                    c as u64 * 1_000_000 + i,
                    spec.message_bytes,
                )
            })
            .collect();
        for _ in 0..spec.streams_per_connection {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            let payloads = payloads.clone();
            let call_interval = spec.call_interval;
            let (progress, budget, errors, stop) = (
                progress.clone(),
                budget.clone(),
                errors.clone(),
                stop.clone(),
            );
            tasks.spawn(async move {
                loop {
                    if stop.is_cancelled() || tokio::time::Instant::now() >= deadline {
                        return;
                    }
                    let n = payloads.len() as u64;
                    if budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n))
                        .is_err()
                    {
                        return;
                    }
                    let stream = futures_util::stream::iter(payloads.clone());
                    let path = PathAndQuery::from_static(SEGMENT_PATH);
                    let result = async {
                        grpc.ready()
                            .await
                            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                        grpc.client_streaming::<_, Bytes, Bytes, _>(
                            tonic::Request::new(stream),
                            path,
                            PassThrough,
                        )
                        .await
                    };
                    let result = tokio::select! {
                        r = result => r,
                        _ = stop.cancelled() => return,
                    };
                    progress.calls.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(_) => {
                            progress.messages.fetch_add(n, Ordering::Relaxed);
                            if !call_interval.is_zero() {
                                tokio::time::sleep(call_interval).await;
                            }
                        }
                        Err(status) => {
                            progress.errors.fetch_add(1, Ordering::Relaxed);
                            *errors
                                .lock()
                                .expect("errors lock")
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();
    let messages = progress.messages.load(Ordering::Relaxed);
    LoadReport {
        messages,
        calls: progress.calls.load(Ordering::Relaxed),
        errors_by_status: errors.lock().expect("errors lock").clone(),
        seconds,
        messages_per_second: messages as f64 / seconds.max(1e-9),
    }
}
