//! The peer's side of the tier: the facts it publishes (addresses, state, connections,
//! events/s, its damped health view of each OAP node, the digest of its ring, its shed and
//! turned-away totals and its shedder's latest action), the shared ring it routes fixed
//! traffic with, and the view `/status` shows.
//!
//! The ring is a pure function of gossiped state (`satmesh_cluster::ring_members`), so
//! every peer computes the same ring once gossip has converged. It is rebuilt here, off
//! the hot path, and swapped in atomically; lookups take no lock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use satmesh_cluster::transport::UdpTransport;
use satmesh_cluster::{
    BalanceAction, Cluster, ClusterSettings, ClusterView, HealthDamper, Peer, PeerFacts, PeerId,
    PeerState, Ring, SharedRing, ShedDecision, ring_members,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config;
use crate::frontdoor::Connections;
use crate::frontdoor::lifecycle::DrainReason;
use crate::metrics::Metrics;
use crate::pipeline::Placement;
use crate::shed::ShedHistory;
use crate::upstream::Pool;

/// How often the peer's facts are refreshed (publication itself is rate-limited by the
/// cluster crate, so this only bounds how late a change is noticed).
const FACTS_EVERY: Duration = Duration::from_millis(100);

/// A node this peer cannot reach is reported down after this long: long enough to ride
/// out a reconnect after an OAP's GOAWAY, short enough that the tier reroutes its keys
/// within about 2 s. It is reported up again only after `UP_AFTER` (no flapping back in).
const DOWN_AFTER: Duration = Duration::from_millis(500);
const UP_AFTER: Duration = satmesh_cluster::ring_members::DEFAULT_UP_AFTER;

/// How long `drain` waits for `draining` to reach this peer's own gossip state (it takes
/// milliseconds: the publisher and the cluster driver both wake on the change).
const PUBLISH_WITHIN: Duration = Duration::from_secs(1);

/// This peer's node id: `cluster.node_id`, else the host name.
pub fn node_id(cluster: &config::Cluster) -> String {
    cluster
        .node_id
        .clone()
        .unwrap_or_else(satmesh_cluster::settings::hostname)
}

/// The gossip settings of `cluster`; None when `cluster.seeds` is empty (the peer runs
/// alone). `Cluster::join` checks them.
pub fn cluster_settings(cluster: &config::Cluster) -> Option<ClusterSettings> {
    if cluster.seeds.is_empty() {
        return None;
    }
    Some(ClusterSettings {
        node_id: node_id(cluster),
        gossip_listen: cluster.gossip_listen,
        advertise: cluster.advertise,
        seeds: cluster.seeds.iter().map(ToString::to_string).collect(),
        cluster_id: cluster.cluster_id.clone(),
        gossip_interval: Duration::from_millis(cluster.gossip_interval_ms),
        ..Default::default()
    })
}

impl Placement for SharedRing {
    fn place(&self, key: &[u8]) -> Option<SocketAddr> {
        self.load().lookup(key)?.parse().ok()
    }
}

/// What the tier code reads from the rest of the peer.
pub struct TierInputs {
    pub pool: Arc<Pool>,
    /// Open connections, and the shed and turned-away totals (`counts`).
    pub connections: Connections,
    pub metrics: Arc<Metrics>,
    /// Advertised agent-facing and admin addresses.
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub connection_limit: u64,
    /// The shedder's latest decision; None when shedding is disabled (`balance.enabled`).
    pub balance: Option<watch::Receiver<ShedDecision>>,
}

pub struct Tier {
    pub ring: Arc<SharedRing>,
    view: watch::Receiver<Arc<ClusterView>>,
    /// Read by the publisher, which publishes `draining` as soon as this turns true.
    draining: watch::Sender<bool>,
    /// None when the peer runs alone (no seeds): there is nobody to tell it is draining.
    cluster: Option<Arc<Cluster>>,
    /// How long peers need to hear a new fact: `drain` waits two of these.
    gossip_interval: Duration,
    /// Set once `drain` has published `draining` to live peers, so `leave` does not wait
    /// again.
    told: AtomicBool,
    /// Stops the publisher and the ring upkeep (a child of the peer's root token).
    stop: CancellationToken,
    /// Those two tasks, joined by `leave` (they run on the peer's tracker).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Where the publisher's facts go: gossip, or (alone) straight into this peer's view.
enum Sink {
    Gossip(Arc<Cluster>),
    Alone(PeerId, watch::Sender<Arc<ClusterView>>),
}

impl Sink {
    fn publish(&self, facts: PeerFacts) {
        match self {
            Sink::Gossip(cluster) => cluster.publish(facts),
            Sink::Alone(id, view) => {
                view.send_replace(Arc::new(alone(id, facts)));
            }
        }
    }
}

/// The view of a peer that runs alone: itself, live.
fn alone(id: &PeerId, facts: PeerFacts) -> ClusterView {
    ClusterView {
        self_id: id.clone(),
        peers: vec![Peer {
            id: id.clone(),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            facts,
            live: true,
            heartbeat: 0,
            last_seen_ms_ago: 0,
            is_self: true,
        }],
    }
}

impl Tier {
    /// Joins the tier (`settings` None: runs alone) and starts publishing and ring upkeep
    /// on `tasks`, until `stop` or `leave`.
    pub async fn start(
        node_id: String,
        settings: Option<ClusterSettings>,
        inputs: TierInputs,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<Tier, satmesh_cluster::ClusterError> {
        let ring = Arc::new(SharedRing::new(Ring::new::<String>(&[])));
        // Listeners on 0.0.0.0 are advertised with the address peers gossip to.
        let ip = match &settings {
            Some(s) => s.advertise.map_or(s.gossip_listen.ip(), |a| a.ip()),
            None => std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let advertised = |addr: SocketAddr| -> String {
            if addr.ip().is_unspecified() && !ip.is_unspecified() {
                SocketAddr::new(ip, addr.port()).to_string()
            } else {
                addr.to_string()
            }
        };
        let mut facts = PeerFacts {
            grpc_addr: advertised(inputs.grpc_addr),
            admin_addr: advertised(inputs.admin_addr),
            state: PeerState::Ready,
            connection_limit: inputs.connection_limit,
            ring_digest: ring.load().digest(),
            ..Default::default()
        };
        let gossip_interval = settings
            .as_ref()
            .map_or(Duration::ZERO, |s| s.gossip_interval);
        let (cluster, view, sink) = match settings {
            Some(settings) => {
                let wildcard = ip.is_unspecified();
                let cluster =
                    Arc::new(Cluster::join(settings, facts.clone(), &UdpTransport).await?);
                if wildcard {
                    // The cluster derived its advertised address; use its IP for ours too.
                    let gossip_ip = cluster.gossip_addr().ip();
                    let fix =
                        |addr: SocketAddr| SocketAddr::new(gossip_ip, addr.port()).to_string();
                    facts.grpc_addr = fix(inputs.grpc_addr);
                    facts.admin_addr = fix(inputs.admin_addr);
                }
                let view = cluster.watch();
                (Some(cluster.clone()), view, Sink::Gossip(cluster))
            }
            None => {
                let id = PeerId {
                    node_id,
                    generation: 0,
                };
                let (tx, rx) = watch::channel(Arc::new(alone(&id, facts.clone())));
                (None, rx, Sink::Alone(id, tx))
            }
        };
        let (draining, draining_rx) = watch::channel(false);
        let tasks = vec![
            tasks.spawn(publish_facts(
                inputs,
                facts,
                sink,
                ring.clone(),
                draining_rx,
                stop.clone(),
            )),
            tasks.spawn(keep_ring(view.clone(), ring.clone(), stop.clone())),
        ];
        Ok(Tier {
            ring,
            view,
            draining,
            cluster,
            gossip_interval,
            told: AtomicBool::new(false),
            stop,
            tasks,
        })
    }

    /// The tier as this peer sees it now.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// The change stream of the view.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Publishes `draining` at once (shutdown has begun), without waiting for peers.
    pub fn set_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Publishes `draining` and waits until the other peers have had two gossip rounds to
    /// hear it, so none counts this peer as ready once its agents start moving. Returns at
    /// once when the peer runs alone or sees no other live peer; returns what it waited
    /// for.
    pub async fn drain(&self) -> Drained {
        self.set_draining();
        let Some(cluster) = &self.cluster else {
            return Drained::Alone;
        };
        // The publisher wakes on the flag; a state change goes out unthrottled, so this
        // peer's own view shows it within milliseconds.
        let mut view = cluster.watch();
        let published = tokio::time::timeout(
            PUBLISH_WITHIN,
            view.wait_for(|v| {
                v.peers
                    .iter()
                    .any(|p| p.is_self && p.facts.state == PeerState::Draining)
            }),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !published {
            tracing::warn!(within = ?PUBLISH_WITHIN, "draining not yet in this peer's gossip state");
        }
        let others = cluster
            .view()
            .peers
            .iter()
            .filter(|p| !p.is_self && p.live)
            .count();
        if others == 0 {
            self.told.store(true, Ordering::Relaxed);
            return Drained::NoLivePeer;
        }
        // Set before the wait: a drain cut short by the shutdown deadline is not followed
        // by another wait in `leave`.
        self.told.store(true, Ordering::Relaxed);
        let rounds = 2 * self.gossip_interval;
        tokio::time::sleep(rounds).await;
        Drained::Told {
            peers: others,
            waited: rounds,
        }
    }

    /// Leaves the tier. After [`Tier::drain`] gossip stops at once (peers then declare this
    /// peer dead); otherwise peers first hear `draining` for two gossip rounds.
    pub async fn leave(mut self) {
        let told = self.told.load(Ordering::Relaxed);
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let Some(cluster) = self.cluster.take().and_then(|c| Arc::try_unwrap(c).ok()) else {
            return;
        };
        let left = if told {
            cluster.shutdown().await
        } else {
            cluster.leave().await
        };
        if let Err(e) = left {
            tracing::warn!(error = %e, "leaving the cluster failed");
        }
    }
}

/// What [`Tier::drain`] waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// No seeds: the peer runs alone; nothing to wait for.
    Alone,
    /// In a tier, but no other peer is live: nobody to tell.
    NoLivePeer,
    /// `peers` live peers had `waited` (two gossip rounds) to hear `draining`.
    Told { peers: usize, waited: Duration },
}

/// Refreshes this peer's facts every `FACTS_EVERY` and hands them to the sink (which, for
/// gossip, rate-limits what actually goes out).
async fn publish_facts(
    inputs: TierInputs,
    mut facts: PeerFacts,
    sink: Sink,
    ring: Arc<SharedRing>,
    mut draining: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut damper = HealthDamper::new(DOWN_AFTER, UP_AFTER);
    let mut last = (Instant::now(), inputs.metrics.messages_in_total());
    let mut tick = tokio::time::interval(FACTS_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Draining goes out at once, not at the next tick (a dropped sender disables
            // this branch).
            Ok(()) = draining.changed() => {}
            _ = stop.cancelled() => return,
        }
        let now = Instant::now();
        let raw = inputs
            .pool
            .nodes()
            .iter()
            .map(|n| (n.label.clone(), n.is_healthy()))
            .collect();
        facts.oap_health = damper.update(&raw, now);
        let received = inputs.metrics.messages_in_total();
        let seconds = now.duration_since(last.0).as_secs_f64().max(1e-3);
        facts.events_per_sec = ((received - last.1) as f64 / seconds * 10.0).round() / 10.0;
        last = (now, received);
        let open = inputs.connections.len() as u64;
        facts.connections = open;
        // Read apart from `open`, so clamped: a connection may close in between.
        facts.draining = open.saturating_sub(inputs.connections.serving() as u64);
        let counts = inputs.connections.counts();
        facts.connections_shed = counts
            .drained
            .get(DrainReason::Shed.label())
            .copied()
            .unwrap_or(0);
        facts.connections_turned_away = counts.turned_away.values().sum();
        let latest = inputs.balance.as_ref().map(|b| b.borrow().clone());
        facts.balance_action = crate::shed::action(latest.as_ref());
        // One decimal, as gossip carries it: a finer move is no change worth publishing.
        facts.fair_share = latest
            .and_then(|b| b.mean)
            .map(|mean| (mean * 10.0).round() / 10.0);
        facts.ring_digest = ring.load().digest();
        facts.state = if *draining.borrow_and_update() {
            // The shedder has stopped: its last decision no longer says what happens.
            facts.balance_action = BalanceAction::Draining;
            facts.fair_share = None;
            PeerState::Draining
        } else {
            PeerState::Ready
        };
        sink.publish(facts.clone());
    }
}

/// Rebuilds the ring whenever the view changes.
async fn keep_ring(
    mut view: watch::Receiver<Arc<ClusterView>>,
    ring: Arc<SharedRing>,
    stop: CancellationToken,
) {
    loop {
        let members = ring_members(&view.borrow_and_update());
        if ring.update(&members) {
            let r = ring.load();
            info!(members = ?r.members(), digest = format!("{:016x}", r.digest()), "ring changed");
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

/// `/status` of a peer: the tier view, the ring this peer routes with, what it sent to
/// each OAP node, and its own shedding.
pub struct TierStatus {
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub ring: Arc<SharedRing>,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<Pool>,
    /// The shedder's latest decision; None when shedding is disabled.
    pub balance: Option<watch::Receiver<ShedDecision>>,
    /// The shedder's recent rounds.
    pub sheds: ShedHistory,
}

impl crate::status::StatusSource for TierStatus {
    fn status(&self) -> crate::status::StatusDoc {
        let traffic = self
            .pool
            .nodes()
            .iter()
            .map(|n| {
                (
                    n.label.clone(),
                    self.metrics
                        .upstream_messages
                        .with_label_values(&[&n.label])
                        .get(),
                )
            })
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let latest = self.balance.as_ref().map(|b| b.borrow().clone());
        let shedding = crate::status::ShedStatus::new(latest.as_ref(), self.sheds.recent());
        crate::status::StatusDoc::build(&self.view.borrow(), &self.ring.load(), &traffic, now_ms)
            .with_shedding(shedding)
    }
}

#[cfg(test)]
mod tests;
