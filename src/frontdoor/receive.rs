//! The async path: every message of the call is queued before the agent is answered OK.
//! While the queue is full the next message is not read, so HTTP/2 flow control slows
//! the agent instead of satmesh dropping anything.
//!
//! On a draining connection a stream the agent keeps open is ended here with OK at a
//! quiet moment between two messages (`ConnInfo::stream_may_end`), once everything
//! received was queued; the agent opens its next stream on a new connection.
//!
//! Ending a stream answers it; it does not stop reading it. The agent may have sent more
//! before it saw the OK (about one round trip), and a hyper client (the Rust agent) keeps
//! feeding its old request body after a complete response until the server resets the
//! stream, so resetting it would drop a message the agent already handed over. The ended
//! stream is handed to [`keep_reading`], which queues whatever still arrives on it until
//! the agent ends or resets it, or the connection closes (its hard close at the latest).
//! No RST_STREAM is sent while anything could still be on its way.
//!
//! Cancel-safety: the message stream (`deframe::Deframed`, or tonic's `Streaming` for a
//! compressed call) keeps a partly received message in its own buffer, and `try_next()`
//! holds no state of its own, so dropping it between polls loses nothing. The stream is
//! ended only when `try_next()` is pending *and* the framing tracker says every byte
//! received forms whole messages (the stream's buffer is then empty), after one last
//! non-blocking poll for a message that arrived meanwhile.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

use super::stream::StreamProgress;
use super::{ConnInfo, State, refuse};
use crate::pipeline::{Event, key_of};
use crate::protocol::{MethodId, Payload, RoutePolicy};

/// Through tonic (a compressed call): its decoder, and its response.
pub async fn receive_tonic(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    progress: Arc<StreamProgress>,
    method: MethodId,
    req: Request<Streaming<Bytes>>,
) -> Result<Response<Bytes>, Status> {
    let auth = req
        .metadata()
        .get("authentication")
        .map(|v| Bytes::copy_from_slice(v.as_bytes()));
    receive(state, conn, progress, method, auth, req.into_inner()).await?;
    // An empty message is a valid answer for every method: "no commands".
    Ok(Response::new(Bytes::new()))
}

/// Queues every message of `stream`; Ok once all are queued, or once a draining
/// connection's stream was ended (its later messages are still queued, see the module).
/// `auth` is the call's `authentication` metadata.
pub async fn receive<S>(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    progress: Arc<StreamProgress>,
    method: MethodId,
    auth: Option<Bytes>,
    mut stream: S,
) -> Result<(), Status>
where
    S: Stream<Item = Result<Bytes, Status>> + Unpin + Send + 'static,
{
    let mut intake = Intake::new(&state, &conn, method, auth);
    let mut counted = Counted::new(state.metrics.method(method));
    let where_it_stands = || (progress.last_data(), progress.at_boundary());
    // One waiter for the whole call while serving: no per-message registration.
    let mut draining = std::pin::pin!(conn.drain.clone().cancelled_owned());
    let mut drain_seen = conn.is_draining();
    loop {
        // A message already received is taken at once; only an idle stream waits (and
        // may be ended then, if its connection is draining).
        let next = match stream.try_next().now_or_never() {
            Some(next) => next,
            None => {
                counted.flush();
                tokio::select! {
                    biased;
                    next = stream.try_next() => next,
                    _ = &mut draining, if !drain_seen => {
                        drain_seen = true;
                        continue;
                    }
                    _ = conn.stream_may_end(where_it_stands), if drain_seen => {
                        // A message may have completed since `try_next()` was last polled.
                        match stream.try_next().now_or_never() {
                            Some(next) => next,
                            None if progress.at_boundary() => {
                                intake.settle(&state).await?;
                                state.metrics.front_door.streams_ended.inc();
                                let (state, conn) = (state.clone(), conn.clone());
                                let progress = progress.clone();
                                tokio::spawn(keep_reading(state, conn, progress, intake, stream));
                                return Ok(());
                            }
                            None => continue,
                        }
                    }
                }
            }
        };
        let payload = match next {
            Ok(Some(payload)) => payload,
            Ok(None) => return intake.settle(&state).await,
            Err(status) => return Err(refuse(&state, status)),
        };
        // When satmesh read the DATA frame that completed it: no clock read per message.
        let now = progress.last_data().into_std();
        counted.add(payload.len(), now);
        intake.queue(&state, &conn, payload, now).await?;
    }
}

/// Reads a stream satmesh already answered OK until the agent ends or resets it, or the
/// connection closes, and queues every message that still arrives (counted in
/// `satmesh_messages_after_stream_end_total`). Dropping the stream afterwards sends no
/// reset that could overtake a message.
async fn keep_reading<S>(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    progress: Arc<StreamProgress>,
    mut intake: Intake,
    mut stream: S,
) where
    S: Stream<Item = Result<Bytes, Status>> + Unpin,
{
    // Still an open stream of the connection for `/connections` and the lifecycle.
    let _open = conn.stream_opened();
    let mut counted = Counted::new(state.metrics.method(intake.method));
    loop {
        let payload = match stream.try_next().await {
            Ok(Some(payload)) => payload,
            Ok(None) => break,
            Err(status) => {
                // A reset after the agent saw its OK, or the connection closing.
                debug!(peer = %conn.peer, %status, "ended stream closed by the agent");
                break;
            }
        };
        let now = progress.last_data().into_std();
        counted.add(payload.len(), now);
        state.metrics.front_door.after_stream_end.inc();
        if let Err(status) = intake.queue(&state, &conn, payload, now).await {
            tracing::warn!(peer = %conn.peer, %status, "a message after the stream's OK could not be queued");
            break;
        }
    }
}

/// What one call's messages share on their way into the queue.
struct Intake {
    method: MethodId,
    payload: Payload,
    /// Batches group by token, so the OAP sees each agent's own; none when satmesh has
    /// one of its own.
    auth: Option<Bytes>,
    fixed: bool,
    /// The call's routing key (fixed routing): its first message's.
    key: Option<Bytes>,
    /// The first message that names its agent identifies the connection (see `returns`).
    identify: bool,
    /// The queue's number of the last message queued.
    last: u64,
}

impl Intake {
    fn new(state: &State, conn: &ConnInfo, method: MethodId, auth: Option<Bytes>) -> Intake {
        let payload = crate::protocol::method(method).payload;
        Intake {
            method,
            payload,
            auth: match state.token {
                Some(_) => None,
                None => auth,
            },
            fixed: state.policies[usize::from(method)] == RoutePolicy::Fixed,
            key: None,
            identify: !conn.is_identified() && payload.key_fields().is_some(),
            last: 0,
        }
    }

    /// Queues one message; waits for room when the queue is full (the usual case has
    /// room: no future, no allocation).
    async fn queue(
        &mut self,
        state: &State,
        conn: &ConnInfo,
        payload: Bytes,
        now: Instant,
    ) -> Result<(), Status> {
        if self.fixed && self.key.is_none() {
            // A call routes by its first message's service and instance.
            self.key = key_of(self.payload, &payload);
        }
        if self.identify {
            self.identify = false;
            let agent = if self.fixed {
                self.key.clone()
            } else {
                key_of(self.payload, &payload)
            };
            if let Some(agent) = agent {
                conn.identify(&agent);
            }
        }
        let event = Event {
            method: self.method,
            auth: self.auth.clone(),
            payload,
            enqueued: now,
            key: self.key.clone(),
            seq: 0,
        };
        self.last = match state.queue.try_push(event) {
            Ok(seq) => seq,
            Err(event) => state
                .queue
                .push(event)
                .await
                .map_err(|_| Status::unavailable("satmesh is shutting down"))?,
        };
        Ok(())
    }

    /// Waits until everything this call queued is the queue's responsibility (at once
    /// for the memory queue; written or synced for the disk queue): only then is the
    /// agent answered OK.
    async fn settle(&self, state: &State) -> Result<(), Status> {
        match state.queue.settle(self.last) {
            None => Ok(()),
            Some(settling) => {
                let waiting = Instant::now();
                let settled = settling.await;
                state
                    .metrics
                    .settle_latency
                    .observe(waiting.elapsed().as_secs_f64());
                settled.map_err(|_| Status::unavailable("satmesh is shutting down"))
            }
        }
    }
}

/// Messages and bytes received, added to the shared counters every 64 messages or 50 ms,
/// whenever the stream waits, and when the call ends: an atomic add per message on
/// counters every connection shares means cache-line traffic between cores.
struct Counted<'a> {
    metrics: &'a crate::metrics::MethodMetrics,
    messages: u64,
    bytes: u64,
    since: Instant,
}

impl<'a> Counted<'a> {
    const MESSAGES: u64 = 64;
    const EVERY: std::time::Duration = std::time::Duration::from_millis(50);

    fn new(metrics: &'a crate::metrics::MethodMetrics) -> Counted<'a> {
        Counted {
            metrics,
            messages: 0,
            bytes: 0,
            since: Instant::now(),
        }
    }

    fn add(&mut self, bytes: usize, now: Instant) {
        self.messages += 1;
        self.bytes += bytes as u64;
        if self.messages >= Self::MESSAGES || now.duration_since(self.since) >= Self::EVERY {
            self.flush();
            self.since = now;
        }
    }

    fn flush(&mut self) {
        if self.messages > 0 {
            self.metrics.messages_in.inc_by(self.messages);
            self.metrics.bytes_in.inc_by(self.bytes);
            self.messages = 0;
            self.bytes = 0;
        }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}
