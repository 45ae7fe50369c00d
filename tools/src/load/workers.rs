//! The fleet's loops: one task per client-stream (segments or meters), each making one
//! call after another on its connection, and one keepAlive pacer for the whole fleet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};

use super::latency::unix_nanos;
use super::segment::Template;
use super::{KEEPALIVE_PATH, METER_PATH, Progress, SEGMENT_PATH, meter};
use satmesh_proto::codec::PassThrough;

/// How long a keepAlive call may take before it counts as `DeadlineExceeded`.
const UNARY_TIMEOUT: Duration = Duration::from_secs(10);
/// keepAlive calls in flight at most; past it the pacer waits (the target is saturated).
const MAX_UNARY_IN_FLIGHT: usize = 1024;
/// Pause after a failed call, so a failing target is not spun on.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What every task of one run shares.
pub(super) struct Shared {
    pub progress: Arc<Progress>,
    /// Segments still to send; a call takes its share before it starts.
    pub budget: AtomicU64,
    pub deadline: tokio::time::Instant,
    /// From the caller: abandons calls in flight.
    pub stop: CancellationToken,
    /// Every segment stream has ended (its budget spent): meters and pings end too.
    pub segments_done: CancellationToken,
    pub messages_per_call: usize,
    pub call_interval: Duration,
}

impl Shared {
    fn over(&self) -> bool {
        self.stop.is_cancelled() || tokio::time::Instant::now() >= self.deadline
    }

    /// Sleeps, unless `stop` comes first.
    async fn pause(&self, d: Duration) {
        if !d.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = self.stop.cancelled() => {}
            }
        }
    }
}

/// Counts the segment streams still running; the last one to end fires `segments_done`.
pub(super) struct LiveStreams {
    live: AtomicUsize,
    done: CancellationToken,
}

impl LiveStreams {
    pub fn new(streams: usize, done: CancellationToken) -> LiveStreams {
        LiveStreams {
            live: AtomicUsize::new(streams),
            done,
        }
    }
}

/// Held by a segment stream for its life.
struct Alive(Arc<LiveStreams>);

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.cancel();
        }
    }
}

/// One HTTP/2 connection, as one agent has; lazy, so a fleet starts without waiting.
/// After a GOAWAY it dials again, first address first.
/// Each dial's outcome goes to agent `agent`'s trace.
pub(super) fn connect(
    targets: &[std::net::SocketAddr],
    agent: usize,
    progress: Arc<Progress>,
) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{}", targets[0]))
        .expect("socket address is a valid uri")
        .tcp_nodelay(true);
    let targets = targets.to_vec();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (targets, progress) = (targets.clone(), progress.clone());
        async move {
            let dialled = super::dial::first_accepting(&targets, Duration::from_secs(1)).await;
            let outcome = match &dialled {
                Ok(io) => format!("connected to {:?}", io.inner().peer_addr()),
                Err(e) => format!("failed: {e}"),
            };
            progress.agents.dialled(agent, outcome);
            dialled
        }
    });
    endpoint.connect_with_connector_lazy(connector)
}

/// One client-stream call; None when `stop` abandoned it.
async fn client_stream(
    shared: &Shared,
    grpc: &mut Grpc<Channel>,
    path: &'static str,
    messages: impl Stream<Item = Bytes> + Send + 'static,
) -> Option<Result<(), Status>> {
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.client_streaming::<_, Bytes, Bytes, _>(
            tonic::Request::new(messages),
            PathAndQuery::from_static(path),
            PassThrough,
        )
        .await
        .map(|_| ())
    };
    tokio::select! {
        r = call => Some(r),
        _ = shared.stop.cancelled() => None,
    }
}

/// Segment stream `stream` (the `local`-th of connection `agent`): each call sends
/// `messages_per_call` segments of one of the connection's instances (the next one at
/// each call), each stamped with its send time as the call's body is read.
pub(super) async fn segment_stream(
    shared: Arc<Shared>,
    live: Arc<LiveStreams>,
    channel: Channel,
    templates: Arc<[Template]>,
    agent: usize,
    stream: u64,
    local: usize,
) {
    let _alive = Alive(live);
    let mut grpc = Grpc::new(channel);
    let n = shared.messages_per_call as u64;
    // 2^24 streams of 2^40 segments each before sequence numbers repeat.
    let mut seq = stream << 40;
    for turn in local.. {
        if shared.over() {
            return;
        }
        if shared
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(n))
            .is_err()
        {
            return;
        }
        let (templates, at, first) = (templates.clone(), turn % templates.len(), seq);
        seq += n;
        let len = templates[at].len() as u64;
        let messages = futures_util::stream::iter(0..n)
            .map(move |i| templates[at].stamp(unix_nanos(), first + i));
        let progress = &shared.progress;
        progress.agents.call_started(agent);
        let Some(result) = client_stream(&shared, &mut grpc, SEGMENT_PATH, messages).await else {
            return;
        };
        progress.calls.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                progress.agents.call_ok(agent);
                progress.messages.fetch_add(n, Ordering::Relaxed);
                progress.bytes.fetch_add(n * len, Ordering::Relaxed);
                shared.pause(shared.call_interval).await;
            }
            Err(status) => {
                // Not taken: another call may send them.
                shared.budget.fetch_add(n, Ordering::Relaxed);
                progress.agents.call_failed(agent, &status);
                progress.record_error(status.code());
                shared.pause(ERROR_PAUSE).await;
            }
        }
    }
}

/// Meter stream `local` of a connection: each call is one report period of one of the
/// connection's instances (the next one at each call).
pub(super) async fn meter_stream(
    shared: Arc<Shared>,
    channel: Channel,
    instances: Arc<[(String, String)]>,
    local: usize,
) {
    let mut grpc = Grpc::new(channel);
    for turn in local.. {
        if shared.over() || shared.segments_done.is_cancelled() {
            return;
        }
        let (service, instance) = &instances[turn % instances.len()];
        let now_ms = (unix_nanos() / 1_000_000) as i64;
        let report = meter::report(service, instance, shared.messages_per_call, now_ms);
        let n = report.len() as u64;
        let messages = futures_util::stream::iter(report);
        let Some(result) = client_stream(&shared, &mut grpc, METER_PATH, messages).await else {
            return;
        };
        match result {
            Ok(()) => {
                shared.progress.meters.fetch_add(n, Ordering::Relaxed);
                shared.pause(shared.call_interval).await;
            }
            Err(status) => {
                shared.progress.record_error(status.code());
                shared.pause(ERROR_PAUSE).await;
            }
        }
    }
}

/// keepAlive calls at `rate` per second in all, round-robin over the connections, each
/// connection cycling through its instances' pings. The pacer does not wait for answers
/// (up to [`MAX_UNARY_IN_FLIGHT`]), so a slow target shows as latency, not as fewer calls;
/// a call's latency runs from when the pacer starts it to its answer.
pub(super) async fn keepalive(
    shared: Arc<Shared>,
    channels: Vec<Channel>,
    pings: Vec<Vec<Bytes>>,
    rate: f64,
) {
    // The default `Burst` catches up when the timer is coarser than the period.
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_UNARY_IN_FLIGHT));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0usize.. {
        let slot = tokio::select! {
            _ = tick.tick() => tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = shared.stop.cancelled() => break,
            },
            _ = shared.stop.cancelled() => break,
            _ = shared.segments_done.cancelled() => break,
            _ = tokio::time::sleep_until(shared.deadline) => break,
        };
        let c = i % channels.len();
        let ping = pings[c][(i / channels.len()) % pings[c].len()].clone();
        let mut grpc = Grpc::new(channels[c].clone());
        let shared = shared.clone();
        calls.spawn(async move {
            let _slot = slot;
            let started = Instant::now();
            let call = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                grpc.unary(
                    tonic::Request::new(ping),
                    PathAndQuery::from_static(KEEPALIVE_PATH),
                    PassThrough,
                )
                .await
            };
            let result = tokio::select! {
                r = tokio::time::timeout(UNARY_TIMEOUT, call) => r,
                _ = shared.stop.cancelled() => return,
            };
            match result {
                Ok(Ok(_)) => shared.progress.record_unary(started.elapsed()),
                Ok(Err(status)) => shared.progress.record_error(status.code()),
                Err(_) => shared.progress.record_error(tonic::Code::DeadlineExceeded),
            }
        });
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}
