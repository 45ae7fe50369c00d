//! The shutdown of a peer, in phases: out of rotation, tell the tier, send the agents
//! away, deliver the queue, leave the tier, join every task. All within
//! `shutdown.deadline` from the signal; each phase logs what it did and how long it took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{Peer, Senders, Stops};
use crate::admin::AdminState;
use crate::config;
use crate::frontdoor::Connections;
use crate::metrics::{DROP_SHUTDOWN, Metrics};
use crate::pipeline::EventQueue;
use crate::pipeline::delivery::Delivery;
use crate::tier::Tier;
use crate::upstream::Pool;

/// How long the last phase waits for the peer's tasks, all told to stop by then.
const JOIN_WITHIN: Duration = Duration::from_secs(2);

/// What a shutdown left behind.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    pub connections_closed_hard: usize,
    pub events_dropped: usize,
    /// Tasks of the peer still running at the end (0 unless one failed to stop).
    pub tasks_left: usize,
}

impl Peer {
    /// Drains the peer: stop being ready and accepting, tell the tier (two gossip
    /// rounds), GOAWAY every agent (spread over `shutdown.drain_window`), let open
    /// streams finish, deliver the queue, leave the tier, then wait for every task, all
    /// within `shutdown.deadline`.
    pub async fn shutdown(self) -> ShutdownReport {
        let Peer {
            settings,
            metrics,
            queue,
            pool,
            connections,
            tier,
            admin,
            delivery,
            senders,
            accept_task,
            admin_task,
            stops,
            tasks,
            root,
            ..
        } = self;
        let budget = Budget {
            started: Instant::now(),
            deadline: settings.deadline,
        };
        out_of_rotation(&admin, &tier, &connections, &stops, accept_task).await;
        tell_tier(&tier, &budget, &settings).await;
        let connections_closed_hard =
            send_agents_away(&connections, &queue, &budget, &settings).await;
        let events_dropped = deliver_queue(&queue, senders, &delivery, &metrics, &budget).await;
        leave_tier(tier, &pool, &stops, admin_task).await;
        let tasks_left = join_tasks(&root, &tasks).await;
        info!(took = ?budget.started.elapsed(), dropped = events_dropped, "shutdown complete");
        ShutdownReport {
            connections_closed_hard,
            events_dropped,
            tasks_left,
        }
    }
}

/// The shutdown's time budget: `shutdown.deadline` from the signal.
struct Budget {
    started: Instant,
    deadline: Duration,
}

impl Budget {
    fn left(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }
}

/// 1. Out of rotation: /readyz answers 503, `draining` goes out to the tier, shedding and
///    self-reports stop, and the listener is closed so new connections are refused (a
///    multi-address client dials its next address).
async fn out_of_rotation(
    admin: &AdminState,
    tier: &Tier,
    connections: &Connections,
    stops: &Stops,
    accept_task: JoinHandle<()>,
) {
    let phase = Instant::now();
    admin.set_draining();
    tier.set_draining();
    stops.shedding.cancel();
    stops.self_report.cancel();
    stops.accepting.cancel();
    let _ = accept_task.await;
    info!(
        took = ?phase.elapsed(),
        connections = connections.len(),
        "shutting down: not ready, draining published, no new connections"
    );
}

/// 2. Peers hear `draining` (two gossip rounds) before any agent is sent away, so none
///    counts this peer as ready while its agents arrive. Leaves room for the connections'
///    grace within the deadline.
async fn tell_tier(tier: &Tier, budget: &Budget, settings: &config::Shutdown) {
    let phase = Instant::now();
    let within = budget.left().saturating_sub(settings.connection_grace);
    match tokio::time::timeout(within, tier.drain()).await {
        Ok(told) => info!(took = ?phase.elapsed(), tier = ?told, "tier told: draining"),
        Err(_) => warn!(took = ?phase.elapsed(), "tier not told in time, sending agents away"),
    }
}

/// 3. GOAWAYs spread over `shutdown.drain_window`, each connection closed at the latest
///    `connection_grace` after its own; returns at once when no agent is connected. The
///    window is cut so the last grace ends by the deadline. Returns how many connections
///    were closed hard.
async fn send_agents_away(
    connections: &Connections,
    queue: &Arc<dyn EventQueue>,
    budget: &Budget,
    settings: &config::Shutdown,
) -> usize {
    let phase = Instant::now();
    let grace = settings.connection_grace;
    let spread = settings
        .drain_window
        .min(budget.left().saturating_sub(grace));
    let hard_before = closed_hard(connections);
    let closed_hard =
        match tokio::time::timeout(budget.left(), connections.shutdown(spread, grace)).await {
            Ok(n) => n,
            Err(_) => {
                warn!(
                    connections = connections.len(),
                    "shutdown deadline passed with agents connected"
                );
                (self::closed_hard(connections) - hard_before) as usize + connections.len()
            }
        };
    info!(
        took = ?phase.elapsed(),
        spread = ?spread,
        closed_hard,
        queued = queue.depth().events,
        "agents gone, delivering the queue"
    );
    closed_hard
}

/// Connections closed hard so far, all reasons.
fn closed_hard(connections: &Connections) -> u64 {
    connections.counts().closed_hard.values().sum()
}

/// 4. Deliver what is queued by the deadline; what is left then is counted as dropped
///    (the memory queue) or stays on disk for the next start (the disk queue).
///    Returns the events dropped by the shutdown.
async fn deliver_queue(
    queue: &Arc<dyn EventQueue>,
    mut senders: Senders,
    delivery: &Delivery,
    metrics: &Metrics,
    budget: &Budget,
) -> usize {
    let phase = Instant::now();
    queue.close();
    let flushed = tokio::time::timeout(budget.left(), senders.finish()).await;
    if flushed.is_err() {
        warn!(deadline = ?budget.deadline, "shutdown deadline passed with messages undelivered");
        // Deliveries now count their batches as dropped and free their slots; senders
        // hand them what they still hold, then what is left in the queue is counted.
        delivery.abandon.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), senders.finish()).await;
        for sender in &senders.handles {
            sender.abort();
        }
        delivery.drop_queued();
    }
    // The disk queue syncs what it holds and stops its writer and reader: what is left
    // stays on disk for the next start.
    queue.finish().await;
    let dropped = metrics.dropped_total(DROP_SHUTDOWN) as usize;
    info!(took = ?phase.elapsed(), dropped, "queue delivered");
    dropped
}

impl Senders {
    /// Waits until every sender has ended and every batch in flight is settled.
    /// Cancel-safe: a sender seen to end is forgotten, so a second call waits only for
    /// the rest.
    async fn finish(&mut self) {
        while let Some(sender) = self.handles.last_mut() {
            let _ = sender.await;
            self.handles.pop();
        }
        let _ = self.inflight.acquire_many(self.max_inflight as u32).await;
    }
}

/// 5. Stop gossip (peers heard `draining` in phase 2 and now declare this peer dead),
///    discovery, the OAP connections and the admin listener.
async fn leave_tier(tier: Tier, pool: &Pool, stops: &Stops, admin_task: JoinHandle<()>) {
    let phase = Instant::now();
    tier.leave().await;
    stops.discovery.cancel();
    pool.close();
    stops.admin.cancel();
    let _ = admin_task.await;
    info!(took = ?phase.elapsed(), "left the tier");
}

/// 6. Every task the peer spawned has ended: each was told to stop by its phase, and the
///    root token tells any other. Returns how many are still running after
///    `JOIN_WITHIN`.
async fn join_tasks(root: &CancellationToken, tasks: &TaskTracker) -> usize {
    let phase = Instant::now();
    root.cancel();
    tasks.close();
    if tokio::time::timeout(JOIN_WITHIN, tasks.wait())
        .await
        .is_err()
    {
        warn!(left = tasks.len(), within = ?JOIN_WITHIN, "tasks still running after the shutdown");
    }
    let left = tasks.len();
    info!(took = ?phase.elapsed(), left, "tasks joined");
    left
}
