//! One explicit lifecycle per agent connection:
//!
//! ```text
//! Serving --(drain at T, reason, grace)--> Draining { reason, since, hard_close_at } --> Closed
//! ```
//!
//! - **Serving**: calls are served. A drain may be *scheduled* for a later instant (the
//!   connection's max age, or its turn in a spread-out `drain_all`); the earliest wins.
//! - **Draining**: hyper's two-phase graceful GOAWAY was sent (GOAWAY(2^31-1) + PING, then
//!   GOAWAY(last stream) once the PING is answered) and the connection is still polled, so
//!   the streams already open finish. Async client-streams still open after a while are
//!   ended by satmesh with OK at a quiet moment between two messages ([`stream_end`]), so
//!   agents that hold a stream open for 30 s (the Rust agent) move without losing anything;
//!   an ended stream is still read until the agent ends it (see `receive`).
//!   At `hard_close_at` (drain start + the reason's grace) the connection is closed.
//! - **Closed**: the connection's task has ended; it left the registry.
//!
//! Clients built on hyper (tonic, so the Rust agent) fail the first call they dispatch
//! to a connection that got its GOAWAY while it is still open (CANCELLED, or INTERNAL
//! "GoAway NO_ERROR"), before sending any of it: their dispatch task only notices the
//! GOAWAY on its next request. Such a call is safe to retry; grpc-core clients (the
//! Python agent) move to a new connection without failing any call.
//!
//! Time is tokio's clock (`tokio::time::Instant`, `sleep_until`), so the whole lifecycle
//! runs under `#[tokio::test(start_paused = true)]`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::returns::Returns;

pub type ConnId = u64;

/// Why a connection drains; the label of `satmesh_connections_drained_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DrainReason {
    /// The tier moves connections away from a peer above its fair share.
    Shed,
    /// `server.max_connection_age` reached.
    Age,
    /// The peer is above a connection limit.
    Limit,
    /// SIGTERM.
    Shutdown,
}

impl DrainReason {
    pub const ALL: [DrainReason; 4] = [
        DrainReason::Shed,
        DrainReason::Age,
        DrainReason::Limit,
        DrainReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DrainReason::Shed => "shed",
            DrainReason::Age => "age",
            DrainReason::Limit => "limit",
            DrainReason::Shutdown => "shutdown",
        }
    }
}

/// Where a connection is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Serving,
    Draining {
        reason: DrainReason,
        /// When the GOAWAY was sent.
        since: Instant,
        /// When the connection is closed if its streams have not finished.
        hard_close_at: Instant,
    },
    Closed,
}

/// When satmesh ends a draining connection's open async client-stream itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamEnd {
    /// Streams get this long after the GOAWAY to end on their own (a Python agent's
    /// streams last at most ~2 s) — at most half the connection's grace.
    pub after: Duration,
    /// Then a stream is ended once no DATA arrived on it for this long, between two
    /// messages. The pause required shrinks linearly to 0 at the hard close: any gap
    /// between two messages beats a reset.
    pub quiet: Duration,
}

impl Default for StreamEnd {
    fn default() -> Self {
        StreamEnd {
            after: Duration::from_secs(5),
            quiet: Duration::from_millis(150),
        }
    }
}

/// Whether a draining stream may be ended now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamCheck {
    EndNow,
    /// Not yet: look again then (or when a message arrives).
    RecheckAt(Instant),
}

/// The rule for ending a draining connection's client-stream with OK. `last_data` is when
/// DATA last arrived on the stream (or when it opened); `at_boundary` says that every byte
/// received so far forms whole gRPC messages, so ending loses no partial message.
pub fn stream_end(
    now: Instant,
    since: Instant,
    hard_close_at: Instant,
    last_data: Instant,
    at_boundary: bool,
    policy: StreamEnd,
) -> StreamCheck {
    let grace = hard_close_at.saturating_duration_since(since);
    let begin = since + policy.after.min(grace / 2);
    if now < begin {
        return StreamCheck::RecheckAt(begin);
    }
    let span = hard_close_at.saturating_duration_since(begin);
    let left = hard_close_at.saturating_duration_since(now);
    let need = if span.is_zero() {
        Duration::ZERO
    } else {
        policy
            .quiet
            .mul_f64(left.as_secs_f64() / span.as_secs_f64())
    };
    let quiet_for = now.saturating_duration_since(last_data);
    if !at_boundary {
        // Mid-message: the rest is on its way (the message branch wakes first); if the
        // agent stalls, look again a pause later.
        return StreamCheck::RecheckAt(now + policy.quiet.max(Duration::from_millis(1)));
    }
    if quiet_for >= need {
        StreamCheck::EndNow
    } else {
        // `need` only shrinks, so this is never too late.
        StreamCheck::RecheckAt(last_data + need)
    }
}

/// A drain waiting for its instant.
#[derive(Clone, Copy, Debug)]
struct Pending {
    at: Instant,
    reason: DrainReason,
    grace: Duration,
}

#[derive(Debug)]
struct Phase {
    state: ConnState,
    pending: Option<Pending>,
}

/// One live connection, shared by its task, its handlers and the registry.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub opened_at: Instant,
    /// Cancelled when this connection starts draining (its GOAWAY is sent): handlers
    /// watch it. Cancelling it directly drains the connection as `Shed`.
    pub drain: CancellationToken,
    phase: Mutex<Phase>,
    /// Wakes the connection's task when its plan changed.
    wake: Notify,
    /// Milliseconds after `opened_at` of the last call or DATA frame.
    last_activity_ms: AtomicU64,
    open_streams: AtomicUsize,
    stream_end: StreamEnd,
    /// The agent on this connection (see `identify`), once a message said who it is.
    identity: OnceLock<u64>,
    /// This peer shed the same agent recently and it came back: it is not shed again.
    returned: AtomicBool,
    /// Where sheds are remembered, to tell a client that came back.
    returns: Option<Arc<Returns>>,
}

impl ConnInfo {
    pub fn new(id: ConnId, peer: SocketAddr, stream_end: StreamEnd) -> ConnInfo {
        ConnInfo {
            id,
            peer,
            opened_at: Instant::now(),
            drain: CancellationToken::new(),
            phase: Mutex::new(Phase {
                state: ConnState::Serving,
                pending: None,
            }),
            wake: Notify::new(),
            last_activity_ms: AtomicU64::new(0),
            open_streams: AtomicUsize::new(0),
            stream_end,
            identity: OnceLock::new(),
            returned: AtomicBool::new(false),
            returns: None,
        }
    }

    /// Remembers sheds of this connection in `returns`, and checks its agent against it.
    pub fn with_returns(mut self, returns: Arc<Returns>) -> ConnInfo {
        self.returns = Some(returns);
        self
    }

    /// Whether a message already said which agent this connection carries.
    pub fn is_identified(&self) -> bool {
        self.identity.get().is_some()
    }

    /// The agent on this connection, from the routing key (service, instance) of the
    /// first message that has one. The first call wins; an agent this peer shed recently
    /// marks the connection as returned.
    pub fn identify(&self, routing_key: &[u8]) {
        let identity = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            routing_key.hash(&mut h);
            h.finish()
        };
        if self.identity.set(identity).is_ok()
            && self.returns.as_ref().is_some_and(|r| r.arrived(identity))
        {
            self.returned.store(true, Ordering::Relaxed);
        }
    }

    /// This connection's agent was shed by this peer and came back (see `returns`).
    pub fn returned(&self) -> bool {
        self.returned.load(Ordering::Relaxed)
    }

    /// Called when this connection is shed: remembers its agent, if known.
    pub(crate) fn remember_shed(&self) {
        if let (Some(identity), Some(returns)) = (self.identity.get(), &self.returns) {
            returns.shed(*identity);
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> ConnState {
        self.phase().state
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Records activity (a call, a DATA frame) now.
    pub fn touch(&self) {
        self.touch_at(Instant::now());
    }

    /// Records activity at `now` (read by the caller, who needed the time anyway).
    pub fn touch_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.opened_at).as_millis() as u64;
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> Instant {
        self.opened_at + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Counts an open stream until the guard drops.
    pub fn stream_opened(self: &std::sync::Arc<Self>) -> StreamGuard {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        self.touch();
        StreamGuard(self.clone())
    }

    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    pub fn stream_end_policy(&self) -> StreamEnd {
        self.stream_end
    }

    /// Asks for a drain at `at`. A serving connection keeps the earliest request; a
    /// draining one only has its hard close brought forward to `at + grace`. Returns
    /// whether this request set the connection's next drain (false when it is draining,
    /// closed, or already has a drain due no later than `at`).
    pub fn schedule_drain(&self, at: Instant, reason: DrainReason, grace: Duration) -> bool {
        let mut phase = self.phase();
        let serving = match &mut phase.state {
            // A drain already due no later than `at` makes this one a no-op: a connection
            // asked twice is drained once (and the second caller is told so).
            ConnState::Serving => {
                if phase.pending.is_some_and(|p| p.at <= at) {
                    return false;
                }
                phase.pending = Some(Pending { at, reason, grace });
                true
            }
            ConnState::Draining { hard_close_at, .. } => {
                *hard_close_at = (*hard_close_at).min(at + grace);
                false
            }
            ConnState::Closed => return false,
        };
        drop(phase);
        self.wake.notify_one();
        serving
    }

    /// The drain scheduled for later, if any.
    pub fn scheduled_drain(&self) -> Option<(Instant, DrainReason)> {
        self.phase().pending.map(|p| (p.at, p.reason))
    }

    /// Serving -> Draining now. None if it was not serving.
    fn begin_drain(&self, reason: DrainReason, grace: Duration) -> Option<ConnState> {
        let mut phase = self.phase();
        if phase.state != ConnState::Serving {
            return None;
        }
        let since = Instant::now();
        phase.state = ConnState::Draining {
            reason,
            since,
            hard_close_at: since + grace,
        };
        phase.pending = None;
        let state = phase.state;
        drop(phase);
        self.drain.cancel();
        Some(state)
    }

    pub(crate) fn set_closed(&self) {
        self.phase().state = ConnState::Closed;
    }

    /// Resolves when this draining connection's stream may be ended with OK (see
    /// [`stream_end`]); `progress` tells where the stream stands. Never resolves while the
    /// connection serves. Stateless: dropping it and calling again is fine.
    pub async fn stream_may_end(&self, progress: impl Fn() -> (Instant, bool)) {
        self.drain.cancelled().await;
        loop {
            let (since, hard_close_at) = match self.state() {
                ConnState::Draining {
                    since,
                    hard_close_at,
                    ..
                } => (since, hard_close_at),
                // The token was cancelled directly; the connection's task is about to
                // move it to Draining.
                ConnState::Serving => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                ConnState::Closed => return std::future::pending().await,
            };
            let (last_data, at_boundary) = progress();
            match stream_end(
                Instant::now(),
                since,
                hard_close_at,
                last_data,
                at_boundary,
                self.stream_end,
            ) {
                StreamCheck::EndNow => return,
                // Look again at least every 250 ms: a shutdown may bring the hard close
                // (and so the end of the patience) forward.
                StreamCheck::RecheckAt(at) => {
                    sleep_until(at.min(Instant::now() + Duration::from_millis(250))).await
                }
            }
        }
    }
}

/// Decrements the connection's open-stream count when the stream is done.
#[derive(Debug)]
pub struct StreamGuard(std::sync::Arc<ConnInfo>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a connection's task ended.
#[derive(Debug)]
pub enum Ending<E> {
    /// The connection finished by itself (agent closed it, or drained empty).
    Finished(Result<(), E>),
    /// Still open at the end of its grace after a drain for this reason.
    ClosedHard(DrainReason),
    /// Closed by the registry's emergency stop.
    Killed,
}

/// What the driver reports back as the lifecycle moves.
pub(crate) trait Observer {
    fn drained(&self, reason: DrainReason);
}

/// Grace of a drain the token started without a schedule (the token cancelled directly).
const UNSCHEDULED_GRACE: Duration = Duration::from_secs(60);

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one connection through its lifecycle: polls `conn` until it ends, sends the
/// graceful GOAWAY (`graceful`) when a scheduled drain comes due or the drain token is
/// cancelled, keeps polling while draining, and gives up at the hard close.
pub(crate) async fn drive<F, E>(
    mut conn: Pin<&mut F>,
    graceful: impl Fn(Pin<&mut F>),
    info: &ConnInfo,
    kill: &CancellationToken,
    observer: &(dyn Observer + Sync),
) -> Ending<E>
where
    F: Future<Output = Result<(), E>>,
{
    loop {
        let (state, pending) = {
            let phase = info.phase();
            (phase.state, phase.pending)
        };
        let serving = state == ConnState::Serving;
        let hard_close_at = match state {
            ConnState::Draining { hard_close_at, .. } => Some(hard_close_at),
            _ => None,
        };
        let start = tokio::select! {
            biased;
            result = conn.as_mut() => return Ending::Finished(result),
            _ = kill.cancelled() => return Ending::Killed,
            _ = sleep_until_opt(hard_close_at) => {
                let ConnState::Draining { reason, .. } = state else { unreachable!() };
                return Ending::ClosedHard(reason);
            }
            _ = sleep_until_opt(pending.map(|p| p.at)), if serving => {
                pending.map(|p| (p.reason, p.grace))
            }
            _ = info.drain.cancelled(), if serving => Some((DrainReason::Shed, UNSCHEDULED_GRACE)),
            _ = info.wake.notified() => None,
        };
        if let Some((reason, grace)) = start
            && info.begin_drain(reason, grace).is_some()
        {
            graceful(conn.as_mut());
            observer.drained(reason);
        }
    }
}

#[cfg(test)]
mod tests;
