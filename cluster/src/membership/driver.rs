//! The driver task: publishes this peer's wanted facts (rate-limited) and turns chitchat's
//! state into [`ClusterView`]s.
//!
//! It wakes on chitchat's live-nodes watcher (membership, liveness, or any peer's version
//! change, computed once per gossip round), on new wanted facts, when a delayed
//! publication is due, and once per gossip round to refresh heartbeats, last-seen ages
//! and peers chitchat forgot (garbage collection does not notify). It never runs code
//! under chitchat's lock beyond copying state out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chitchat::{Chitchat, ChitchatId, NodeState};
use tokio::sync::{Mutex, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::facts::{PeerFacts, PeerId};
use crate::publish::{self, Publish, PublishLimits};
use crate::settings::ClusterSettings;
use crate::view::{ClusterView, Peer};

pub(super) struct Driver {
    chitchat: Arc<Mutex<Chitchat>>,
    self_chitchat_id: ChitchatId,
    /// Wakes the driver when chitchat's live set or any peer's version changes.
    live_nodes: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    wanted: watch::Receiver<PeerFacts>,
    /// What this peer last wrote to chitchat, and when.
    published: PeerFacts,
    published_at: Instant,
    limits: PublishLimits,
    gossip_interval: std::time::Duration,
    view: watch::Sender<Arc<ClusterView>>,
    /// Per peer: last heartbeat seen and when it advanced here.
    heartbeats: HashMap<ChitchatId, (u64, Instant)>,
    /// Peers already warned about for reusing this peer's node id.
    duplicates: HashSet<ChitchatId>,
}

impl Driver {
    /// A driver whose view already holds the state at join.
    pub(super) async fn new(
        chitchat: Arc<Mutex<Chitchat>>,
        self_chitchat_id: ChitchatId,
        published: PeerFacts,
        wanted: watch::Receiver<PeerFacts>,
        settings: &ClusterSettings,
    ) -> Driver {
        let live_nodes = chitchat.lock().await.live_nodes_watcher();
        let self_id = PeerId {
            node_id: self_chitchat_id.node_id.to_string(),
            generation: self_chitchat_id.generation_id,
        };
        let (view, _) = watch::channel(Arc::new(ClusterView {
            self_id,
            peers: Vec::new(),
        }));
        let mut driver = Driver {
            chitchat,
            self_chitchat_id,
            live_nodes,
            wanted,
            published,
            published_at: Instant::now(),
            limits: settings.publish_limits(),
            gossip_interval: settings.gossip_interval,
            view,
            heartbeats: HashMap::new(),
            duplicates: HashSet::new(),
        };
        driver.refresh_view().await;
        driver
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }

    pub(super) async fn run(mut self) {
        let mut round = tokio::time::interval(self.gossip_interval);
        round.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut due: Option<Instant> = None;
        loop {
            let publication_due = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.wanted.changed() => if changed.is_err() { return },
                changed = self.live_nodes.changed() => if changed.is_err() { return },
                _ = round.tick() => {}
                _ = publication_due => {}
            }
            due = self.publish_if_due().await;
            self.refresh_view().await;
        }
    }

    /// Writes the wanted facts if the limiter says so; returns when to decide again.
    async fn publish_if_due(&mut self) -> Option<Instant> {
        let wanted = self.wanted.borrow_and_update().clone();
        let now = Instant::now();
        match publish::decide(
            &self.published,
            &wanted,
            now - self.published_at,
            self.limits,
        ) {
            Publish::Unchanged => None,
            Publish::After(wait) => Some(now + wait),
            Publish::Now => {
                write_facts(&self.chitchat, &wanted).await;
                self.published = wanted;
                self.published_at = now;
                None
            }
        }
    }

    /// Rebuilds the view; notifies watchers only when more than heartbeats changed.
    async fn refresh_view(&mut self) {
        let now = Instant::now();
        let chitchat = self.chitchat.clone();
        let view = {
            let chitchat = chitchat.lock().await;
            self.build_view(&chitchat, now)
        };
        let previous = self.view.borrow().clone();
        log_changes(&previous, &view);
        self.view.send_if_modified(|current| {
            let changed = !current.same_state(&view);
            *current = Arc::new(view);
            changed
        });
    }

    fn build_view(&mut self, chitchat: &Chitchat, now: Instant) -> ClusterView {
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        let self_node_id = &self.self_chitchat_id.node_id;
        // Newest generation per node id; this peer always stands for its own node id.
        let mut newest: BTreeMap<&str, (&ChitchatId, &NodeState)> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            let is_self = *id == self.self_chitchat_id;
            if id.node_id == *self_node_id && !is_self {
                if self.duplicates.insert(id.clone()) {
                    warn!(node_id = %id.node_id, generation = id.generation_id,
                        gossip_addr = %id.gossip_advertise_addr,
                        "another peer uses this peer's node id; ignoring it");
                }
                continue;
            }
            match newest.get(&*id.node_id) {
                Some((kept, _)) if kept.generation_id >= id.generation_id => {}
                _ => {
                    newest.insert(&id.node_id, (id, state));
                }
            }
        }
        self.heartbeats
            .retain(|id, _| chitchat.node_states().contains_key(id));

        let mut peers = Vec::with_capacity(newest.len());
        for (id, state) in newest.into_values() {
            let facts = match PeerFacts::decode(state.key_values()) {
                Ok(facts) => facts,
                Err(error) => {
                    debug!(node_id = %id.node_id, %error, "peer without complete facts yet");
                    continue;
                }
            };
            let is_self = *id == self.self_chitchat_id;
            let heartbeat = u64::from(state.heartbeat());
            let seen = self
                .heartbeats
                .entry(id.clone())
                .or_insert((heartbeat, now));
            if seen.0 != heartbeat {
                *seen = (heartbeat, now);
            }
            let last_seen_ms_ago = if is_self {
                0
            } else {
                now.duration_since(seen.1).as_millis() as u64
            };
            peers.push(Peer {
                id: PeerId {
                    node_id: id.node_id.to_string(),
                    generation: id.generation_id,
                },
                gossip_addr: id.gossip_advertise_addr,
                facts,
                live: is_self || live.contains(id),
                heartbeat,
                last_seen_ms_ago,
                is_self,
            });
        }
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        ClusterView {
            self_id: PeerId {
                node_id: self_node_id.to_string(),
                generation: self.self_chitchat_id.generation_id,
            },
            peers,
        }
    }
}

/// Writes `facts` as this peer's key-values (unchanged values are not re-versioned).
pub(super) async fn write_facts(chitchat: &Mutex<Chitchat>, facts: &PeerFacts) {
    let mut chitchat = chitchat.lock().await;
    let node = chitchat.self_node_state();
    for (key, value) in facts.encode() {
        node.set(key, value);
    }
}

/// One log line per peer that appeared, went, died, came back or changed state.
fn log_changes(before: &ClusterView, after: &ClusterView) {
    for peer in after.peers.iter().filter(|p| !p.is_self) {
        let old = before
            .peers
            .iter()
            .find(|p| p.id.node_id == peer.id.node_id);
        let (node_id, generation) = (&peer.id.node_id, peer.id.generation);
        let state = peer.facts.state.as_str();
        match old {
            None => info!(%node_id, generation, live = peer.live, state, "peer joined"),
            Some(old) if old.id.generation != generation => {
                info!(%node_id, generation, previous = old.id.generation, "peer restarted")
            }
            Some(old) if old.live && !peer.live => warn!(%node_id, generation, "peer dead"),
            Some(old) if !old.live && peer.live => info!(%node_id, generation, "peer back"),
            Some(old) if old.facts.state != peer.facts.state => {
                info!(%node_id, generation, state, "peer state changed")
            }
            Some(_) => {}
        }
    }
    for peer in &before.peers {
        if !after.peers.iter().any(|p| p.id.node_id == peer.id.node_id) {
            info!(node_id = %peer.id.node_id, generation = peer.id.generation, "peer forgotten");
        }
    }
}
