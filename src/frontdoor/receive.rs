//! The async path: every message of the call is queued before the agent is answered OK.
//! While the queue is full the next message is not read, so HTTP/2 flow control slows
//! the agent instead of satmesh dropping anything.
//!
//! On a draining connection a stream the agent keeps open is ended here with OK at a
//! quiet moment between two messages (`ConnInfo::stream_may_end`), once everything
//! received was queued; the agent opens its next stream on a new connection.
//!
//! Cancel-safety: the message stream (`deframe::Deframed`, or tonic's `Streaming` for a
//! compressed call) keeps a partly received message in its own buffer, and `try_next()`
//! holds no state of its own, so dropping it between polls loses nothing. The stream is
//! ended only when `try_next()` is pending *and* the framing tracker says every byte
//! received forms whole messages (the stream's buffer is then empty), after one last
//! non-blocking poll for a message that arrived meanwhile. What the agent sends after
//! that instant, before it sees the OK (about one network round trip), is not read: the
//! quiet period makes that unlikely for bursty senders, not impossible.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::stream::StreamProgress;
use super::{ConnInfo, State, refuse};
use crate::config::RoutePolicy;
use crate::pipeline::{Event, key_of};
use crate::protocol::MethodId;

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

/// Queues every message of `stream`; Ok once all are queued. `auth` is the call's
/// `authentication` metadata.
pub async fn receive<S>(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    progress: Arc<StreamProgress>,
    method: MethodId,
    auth: Option<Bytes>,
    mut stream: S,
) -> Result<(), Status>
where
    S: Stream<Item = Result<Bytes, Status>> + Unpin,
{
    let mut counted = Counted::new(state.metrics.method(method));
    // Batches group by token, so the OAP sees each agent's own; none when one is configured.
    let auth = match state.token {
        Some(_) => None,
        None => auth,
    };
    let fixed = state.policies[usize::from(method)] == RoutePolicy::Fixed;
    let payload_kind = crate::protocol::method(method).payload;
    let mut key = None;
    // The first message that names its agent identifies the connection (see `returns`).
    let mut identify = !conn.is_identified() && payload_kind.key_fields().is_some();
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
                                state.metrics.front_door.streams_ended.inc();
                                break;
                            }
                            None => continue,
                        }
                    }
                }
            }
        };
        let payload = match next {
            Ok(Some(payload)) => payload,
            Ok(None) => break,
            Err(status) => return Err(refuse(&state, status)),
        };
        let now = Instant::now();
        counted.add(payload.len(), now);
        if fixed && key.is_none() {
            // A call routes by its first message's service and instance.
            key = key_of(payload_kind, &payload);
        }
        if identify {
            identify = false;
            let agent = if fixed {
                key.clone()
            } else {
                key_of(payload_kind, &payload)
            };
            if let Some(agent) = agent {
                conn.identify(&agent);
            }
        }
        let event = Event {
            method,
            auth: auth.clone(),
            payload,
            enqueued: now,
            key: key.clone(),
        };
        // Room now (the usual case): no future, no allocation; else wait for it.
        if let Err(event) = state.queue.try_push(event) {
            state
                .queue
                .push(event)
                .await
                .map_err(|_| Status::unavailable("satmesh is shutting down"))?;
        }
    }
    Ok(())
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
