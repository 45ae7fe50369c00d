//! The registry of one listener's live connections: what other code reads (`snapshot`,
//! counts) and the levers it pulls (`drain_one`, `drain_all`, `set_admission`). Each
//! connection's own task runs its lifecycle (`lifecycle::drive`); the registry only
//! schedules drains and keeps the books.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rand::RngExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admission::{self, Admission, Admit, Arrival, TurnAway};
use super::lifecycle::{self, ConnId, ConnInfo, ConnState, DrainReason, Ending, StreamEnd};
use super::returns::Returns;
use crate::config::Config;
use crate::metrics::FrontDoorMetrics;

/// How connections live and leave; from the `server`, `shutdown` and `balance` config
/// sections.
#[derive(Clone, Debug)]
pub struct LifecycleSettings {
    /// `server.max_connections`; 0: unlimited.
    pub max_connections: usize,
    /// Grace of a `Shed` or `Limit` drain before the hard close (`server.drain_grace`).
    pub drain_grace: Duration,
    /// `server.max_connection_age`: each connection drains (`Age`) after this, +-jitter.
    pub max_age: Option<Duration>,
    /// Relative jitter of the age (gRPC A9: 0.1, i.e. +-10 %).
    pub age_jitter: f64,
    /// `server.max_connection_age_grace`: hard close this long after the age GOAWAY.
    pub age_grace: Duration,
    /// `shutdown.connection_grace`: grace of a `Shutdown` drain.
    pub shutdown_grace: Duration,
    pub stream_end: StreamEnd,
    /// `balance.return_window`: a shed agent seen again within this long came back.
    pub return_window: Duration,
    /// Never shed again an agent that came back (`balance.turn_away`: with new
    /// connections turned away, one that comes back cannot go anywhere else; without,
    /// through a virtual IP, it came back by chance and may move next time).
    pub hold_returned: bool,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            max_connections: 0,
            drain_grace: Duration::from_secs(60),
            max_age: None,
            age_jitter: 0.1,
            age_grace: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            stream_end: StreamEnd::default(),
            return_window: Duration::from_secs(120),
            hold_returned: true,
        }
    }
}

impl From<&Config> for LifecycleSettings {
    fn from(config: &Config) -> LifecycleSettings {
        let s = &config.server;
        LifecycleSettings {
            max_connections: s.max_connections,
            drain_grace: s.drain_grace,
            max_age: s.max_connection_age,
            age_jitter: 0.1,
            age_grace: s.max_connection_age_grace.unwrap_or(s.drain_grace),
            shutdown_grace: config.shutdown.connection_grace,
            stream_end: StreamEnd {
                after: s.drain_stream_after,
                quiet: s.drain_stream_quiet,
            },
            return_window: config.balance.return_window,
            hold_returned: config.balance.turn_away,
        }
    }
}

impl LifecycleSettings {
    pub fn grace(&self, reason: DrainReason) -> Duration {
        match reason {
            DrainReason::Shed | DrainReason::Limit => self.drain_grace,
            DrainReason::Age => self.age_grace,
            DrainReason::Shutdown => self.shutdown_grace,
        }
    }
}

/// One connection as the registry saw it at `snapshot()` time.
#[derive(Clone, Debug)]
pub struct ConnSnapshot {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub opened_at: Instant,
    /// Last call or DATA frame (`opened_at` if none).
    pub last_activity: Instant,
    pub open_streams: usize,
    pub state: ConnState,
    /// A drain scheduled for later (max age, or a turn in a spread-out drain).
    pub scheduled_drain: Option<(Instant, DrainReason)>,
    /// Its agent was shed by this peer and came back, and is not to be shed again
    /// (`LifecycleSettings::hold_returned`).
    pub held: bool,
}

impl ConnSnapshot {
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.opened_at)
    }

    pub fn idle(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_activity)
    }

    pub fn is_serving(&self) -> bool {
        self.state == ConnState::Serving
    }
}

/// Totals since start, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LifecycleCounts {
    pub accepted: u64,
    pub turned_away: BTreeMap<&'static str, u64>,
    pub drained: BTreeMap<&'static str, u64>,
    pub closed_hard: BTreeMap<&'static str, u64>,
}

struct Inner {
    settings: LifecycleSettings,
    live: Mutex<BTreeMap<ConnId, Arc<ConnInfo>>>,
    /// Live connections not draining, kept as they move so an accept never walks `live`
    /// (a client without backoff may be turned away thousands of times a second).
    serving: AtomicUsize,
    /// Every connection task, so shutdown can wait for them.
    tracker: TaskTracker,
    /// Closes every connection at once (the shutdown's last resort).
    kill: CancellationToken,
    next_id: AtomicU64,
    admission: RwLock<Option<Arc<dyn Admission>>>,
    counts: Mutex<LifecycleCounts>,
    returns: Arc<Returns>,
    metrics: Option<FrontDoorMetrics>,
}

/// The live connections of one listener. Cheap to clone.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections::new(LifecycleSettings::default(), None)
    }
}

impl Connections {
    pub fn new(settings: LifecycleSettings, metrics: Option<FrontDoorMetrics>) -> Connections {
        if let Some(m) = &metrics {
            m.connection_limit.set(settings.max_connections as i64);
        }
        let returns = Arc::new(Returns::new(
            settings.return_window,
            metrics.as_ref().map(|m| m.returned.clone()),
        ));
        Connections {
            inner: Arc::new(Inner {
                settings,
                live: Mutex::new(BTreeMap::new()),
                serving: AtomicUsize::new(0),
                tracker: TaskTracker::new(),
                kill: CancellationToken::new(),
                next_id: AtomicU64::new(1),
                admission: RwLock::new(None),
                counts: Mutex::new(LifecycleCounts::default()),
                returns,
                metrics,
            }),
        }
    }

    fn live(&self) -> MutexGuard<'_, BTreeMap<ConnId, Arc<ConnInfo>>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counts_mut(&self) -> MutexGuard<'_, LifecycleCounts> {
        self.inner.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn settings(&self) -> &LifecycleSettings {
        &self.inner.settings
    }

    /// `server.max_connections` (0: unlimited).
    pub fn limit(&self) -> usize {
        self.inner.settings.max_connections
    }

    /// Live connections, serving or draining.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections not draining.
    pub fn serving(&self) -> usize {
        self.inner.serving.load(Ordering::Relaxed)
    }

    /// Every live connection, oldest first.
    pub fn snapshot(&self) -> Vec<ConnSnapshot> {
        self.live()
            .values()
            .map(|c| ConnSnapshot {
                id: c.id,
                peer: c.peer,
                opened_at: c.opened_at,
                last_activity: c.last_activity(),
                open_streams: c.open_streams(),
                state: c.state(),
                scheduled_drain: c.scheduled_drain(),
                held: c.returned() && self.inner.settings.hold_returned,
            })
            .collect()
    }

    pub fn counts(&self) -> LifecycleCounts {
        self.counts_mut().clone()
    }

    /// Installs the policy consulted for every new connection below the limit (None:
    /// serve all). The shedder installs its "above my fair share" rule here.
    pub fn set_admission(&self, policy: Option<Arc<dyn Admission>>) {
        *self
            .inner
            .admission
            .write()
            .unwrap_or_else(|e| e.into_inner()) = policy;
    }

    /// Starts draining connection `id` now, with the grace of `reason`. False if it is
    /// not live or already draining.
    /// A shed remembers the connection's agent, to tell whether it comes back.
    pub fn drain_one(&self, id: ConnId, reason: DrainReason) -> bool {
        let conn = self.live().get(&id).cloned();
        conn.is_some_and(|c| {
            let scheduled =
                c.schedule_drain(Instant::now(), reason, self.inner.settings.grace(reason));
            if scheduled && reason == DrainReason::Shed {
                c.remember_shed();
            }
            scheduled
        })
    }

    /// Shed agents that came back to this peer since start.
    pub fn returned(&self) -> u64 {
        self.inner.returns.returned()
    }

    /// Drains every serving connection, oldest first, evenly spread over `spread`: the
    /// i-th of n at `i * spread / n`, so their agents do not reconnect in one herd.
    /// Returns how many were scheduled; with none connected nothing waits.
    pub fn drain_all(&self, reason: DrainReason, spread: Duration) -> usize {
        self.drain_all_with(reason, spread, self.inner.settings.grace(reason))
    }

    fn drain_all_with(&self, reason: DrainReason, spread: Duration, grace: Duration) -> usize {
        let now = Instant::now();
        let conns: Vec<_> = self.live().values().cloned().collect();
        let serving: Vec<_> = conns
            .iter()
            .filter(|c| c.state() == ConnState::Serving)
            .collect();
        let n = serving.len();
        for (i, conn) in serving.iter().enumerate() {
            conn.schedule_drain(now + spread.mul_f64(i as f64 / n as f64), reason, grace);
        }
        // Connections already draining close no later than the last of these.
        for conn in conns.iter().filter(|c| c.is_draining()) {
            conn.schedule_drain(now + spread, reason, grace);
        }
        n
    }

    /// The shutdown: drains every connection spread over `spread`, each with `grace`
    /// after its own GOAWAY, and waits until all are closed. Returns how many were closed
    /// hard. Call after the accept loop stopped. Returns at once when none is open.
    pub async fn shutdown(&self, spread: Duration, grace: Duration) -> usize {
        let hard_before = self.hard_closed_total();
        self.inner.tracker.close();
        let n = self.drain_all_with(DrainReason::Shutdown, spread, grace);
        if n > 0 {
            info!(connections = n, spread = ?spread, "draining agent connections");
        }
        let bound = spread + grace + Duration::from_secs(2);
        if tokio::time::timeout(bound, self.inner.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                connections = self.len(),
                "connections outlived their grace, closing them"
            );
            self.inner.kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.tracker.wait()).await;
        }
        (self.hard_closed_total() - hard_before) as usize
    }

    fn hard_closed_total(&self) -> u64 {
        self.counts_mut().closed_hard.values().sum()
    }

    /// The verdict on a new connection from `peer`; counts a turn-away.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Admit {
        let verdict = self.verdict(peer);
        if let Admit::TurnAway(why) = verdict {
            self.count_turned_away(why);
            debug!(%peer, open = self.len(), reason = why.label(), "connection turned away");
        }
        verdict
    }

    /// Whether a connection arriving now would be served (nothing counted).
    pub(crate) fn would_admit(&self) -> bool {
        self.verdict(SocketAddr::from(([0, 0, 0, 0], 0))) == Admit::Serve
    }

    /// The limit, then the admission policy, on a connection from `peer` arriving now.
    fn verdict(&self, peer: SocketAddr) -> Admit {
        let arrival = Arrival {
            peer,
            open: self.len(),
            serving: self.serving(),
            limit: self.inner.settings.max_connections,
        };
        admission::decide(&arrival, self.policy().as_deref())
    }

    fn policy(&self) -> Option<Arc<dyn Admission>> {
        self.inner
            .admission
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn listener_opened(&self) {
        if let Some(m) = &self.inner.metrics {
            m.listener_open.set(1);
        }
    }

    pub(crate) fn listener_closed(&self) {
        if let Some(m) = &self.inner.metrics {
            m.listener_open.set(0);
            m.listener_closed.inc();
        }
    }

    fn count_turned_away(&self, why: TurnAway) {
        *self
            .counts_mut()
            .turned_away
            .entry(why.label())
            .or_default() += 1;
        if let Some(m) = &self.inner.metrics {
            m.turned_away.with_label_values(&[why.label()]).inc();
        }
    }

    /// A new connection's info, not yet registered (the caller may still refuse it).
    pub(crate) fn prepare(&self, peer: SocketAddr) -> Arc<ConnInfo> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(
            ConnInfo::new(id, peer, self.inner.settings.stream_end)
                .with_returns(self.inner.returns.clone()),
        )
    }

    /// Registers `info` and runs `conn` through its lifecycle on a tracked task.
    /// `graceful` starts the connection's graceful GOAWAY; `on_close` runs at the end.
    pub(crate) fn spawn<F, E>(
        &self,
        info: Arc<ConnInfo>,
        conn: F,
        graceful: impl Fn(Pin<&mut F>) + Send + 'static,
        on_close: impl FnOnce(&ConnInfo, Ending<E>) + Send + 'static,
    ) where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        if let Some(age) = self.inner.settings.max_age {
            let jitter = self.inner.settings.age_jitter.clamp(0.0, 1.0);
            let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
            info.schedule_drain(
                info.opened_at + age.mul_f64(factor),
                DrainReason::Age,
                self.inner.settings.age_grace,
            );
        }
        self.live().insert(info.id, info.clone());
        self.inner.serving.fetch_add(1, Ordering::Relaxed);
        self.counts_mut().accepted += 1;
        let registry = self.clone();
        self.inner.tracker.spawn(async move {
            tokio::pin!(conn);
            let ending = lifecycle::drive(
                conn.as_mut(),
                graceful,
                &info,
                &registry.inner.kill,
                &registry,
            )
            .await;
            registry.closed(&info, &ending);
            on_close(&info, ending);
        });
    }

    fn closed(&self, info: &ConnInfo, ending: &Ending<impl Sized>) {
        let was = info.state();
        info.set_closed();
        self.live().remove(&info.id);
        match was {
            ConnState::Serving => {
                self.inner.serving.fetch_sub(1, Ordering::Relaxed);
            }
            ConnState::Draining { .. } => {
                if let Some(m) = &self.inner.metrics {
                    m.draining.dec();
                }
            }
            ConnState::Closed => {}
        }
        let hard = match ending {
            Ending::ClosedHard(reason) => Some(*reason),
            Ending::Killed => Some(DrainReason::Shutdown),
            Ending::Finished(_) => None,
        };
        if let Some(reason) = hard {
            warn!(peer = %info.peer, reason = reason.label(), streams = info.open_streams(), "draining connection closed at the end of its grace");
            *self
                .counts_mut()
                .closed_hard
                .entry(reason.label())
                .or_default() += 1;
            if let Some(m) = &self.inner.metrics {
                m.closed_hard.with_label_values(&[reason.label()]).inc();
            }
        }
    }
}

impl lifecycle::Observer for Connections {
    fn drained(&self, reason: DrainReason) {
        self.inner.serving.fetch_sub(1, Ordering::Relaxed);
        *self.counts_mut().drained.entry(reason.label()).or_default() += 1;
        if let Some(m) = &self.inner.metrics {
            m.drained.with_label_values(&[reason.label()]).inc();
            m.draining.inc();
        }
    }
}

#[cfg(test)]
mod tests;
