//! The status document: the tier as this peer sees it, built purely from a cluster view,
//! the ring this peer routes with, its per-OAP traffic counters and its own shedding.

use std::collections::BTreeMap;

use satmesh_cluster::{BalanceAction, ClusterView, Peer, PeerId, PeerState, Ring, ShedDecision};
use serde::{Deserialize, Serialize};

use crate::shed::{self, ShedRound};

/// What `GET /status` returns and what `satmesh status` parses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// When this peer built the document (ms since the Unix epoch).
    pub generated_at_ms: u64,
    /// The peer that answered.
    pub self_id: PeerId,
    /// Every peer in the view, dead ones included, sorted by node id.
    pub peers: Vec<PeerStatus>,
    pub totals: Totals,
    pub ring: RingStatus,
    /// Every OAP node known here (on the ring, in any peer's health view, or sent to).
    pub oap: Vec<OapStatus>,
    /// This peer's own shedding: its latest decision and recent shed rounds. (Default
    /// when parsing a document from a peer that predates it.)
    #[serde(default)]
    pub shedding: ShedStatus,
}

/// One peer's gossiped facts and liveness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: String,
    /// Start time in ns: tells a restarted peer apart from its former self.
    pub generation: u64,
    pub is_self: bool,
    pub gossip_addr: String,
    pub grpc_addr: String,
    pub admin_addr: String,
    /// As the peer published it; a dead peer keeps its last words.
    pub state: PeerState,
    /// Alive according to this peer's failure detector.
    pub live: bool,
    /// Open agent connections, draining ones included.
    pub connections: u64,
    /// Of `connections`, those draining (GOAWAY sent; their agents have reconnected).
    #[serde(default)]
    pub draining: u64,
    pub connection_limit: u64,
    pub events_per_sec: f64,
    /// OAP node -> healthy, in that peer's (damped) view.
    pub oap_view: BTreeMap<String, bool>,
    /// Digest of the ring that peer routes with, 16 hex digits.
    pub ring_digest: String,
    /// Whether `ring_digest` equals the digest of the ring this peer routes with.
    pub same_ring_as_self: bool,
    /// The peer's heartbeat counter as last received.
    pub heartbeat: u64,
    /// Milliseconds since its heartbeat last advanced, as of the last gossip round.
    pub last_seen_ms_ago: u64,
    /// Connections the peer drained by shedding since it started.
    #[serde(default)]
    pub connections_shed: u64,
    /// Connections the peer turned away since it started (any reason).
    #[serde(default)]
    pub connections_turned_away: u64,
    /// The peer's shedder's latest action as it gossiped it, a string in JSON:
    /// `shedding`, `turning_away`, `balanced`, `off`, `draining`, a hold reason (`stale
    /// gossip`, ...), or empty when not known yet. A newer peer's value is kept as it came.
    #[serde(default)]
    pub balance_action: BalanceAction,
    /// The tier's mean connections (fair share) that action was decided on.
    #[serde(default)]
    pub fair_share: Option<f64>,
}

impl PeerStatus {
    /// `ready`, `draining` or `dead`: what a human wants to see first.
    pub fn condition(&self) -> &'static str {
        if self.live {
            self.state.as_str()
        } else {
            "dead"
        }
    }
}

/// Sums over the tier; only live peers count (see [`satmesh_cluster::TierTotals`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Peers in the view, dead ones included.
    pub peers: usize,
    pub peers_live: usize,
    /// Live and ready.
    pub peers_ready: usize,
    /// Agent connections on live peers (draining ones still hold theirs).
    pub connections: u64,
    /// Of those, draining.
    #[serde(default)]
    pub draining: u64,
    /// Connection limits of live ready peers: what the tier can take.
    pub connection_limit: u64,
    pub events_per_sec: f64,
}

/// The ring this peer routes with, and whether the tier agrees on it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RingStatus {
    /// OAP nodes on the ring, sorted.
    pub members: Vec<String>,
    /// Digest of this peer's ring, 16 hex digits.
    pub digest: String,
    /// Every live peer publishes this digest: fixed traffic routes identically on all.
    pub all_live_peers_agree: bool,
    /// Published digest -> live peers (node ids) routing with it; more than one entry
    /// means the tier has not converged.
    pub live_digests: BTreeMap<String, Vec<String>>,
}

/// One OAP node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OapStatus {
    /// `ip:port`.
    pub node: String,
    pub on_ring: bool,
    /// This peer's published health of the node; None when it does not know the node.
    pub healthy_in_this_peer_view: Option<bool>,
    /// Live ready peers reporting the node healthy (the ring's votes).
    pub healthy_votes: usize,
    /// Live ready peers (the ring's voters).
    pub voters: usize,
    /// Messages this peer has sent to the node since it started.
    pub messages_sent_by_this_peer: u64,
}

/// This peer's shedder: what it decided last and what it shed lately.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShedStatus {
    /// Whether shedding is enabled (`balance.enabled`).
    pub enabled: bool,
    /// The latest decision, as gossiped in `balance_action` (see [`PeerStatus`]).
    pub action: BalanceAction,
    /// Connections the latest decision drained.
    pub shed: usize,
    /// Whether new connections are being turned away (over share).
    pub turn_away: bool,
    /// The tier's mean connections (fair share) the decision was made on.
    pub mean: Option<f64>,
    /// Why the latest decision drained nothing (a [`Hold`](satmesh_cluster::Hold), such as
    /// `within tolerance`), when it drained nothing. A string, so that a reason added by a
    /// newer peer still parses.
    pub hold: Option<String>,
    /// The last rounds that shed, newest first (a bounded history).
    pub recent: Vec<ShedRound>,
}

impl ShedStatus {
    /// From the shedder's latest decision (None: shedding is disabled) and its history.
    pub fn new(latest: Option<&ShedDecision>, recent: Vec<ShedRound>) -> ShedStatus {
        let b = latest.cloned().unwrap_or_default();
        ShedStatus {
            enabled: latest.is_some(),
            action: shed::action(latest),
            shed: b.shed,
            turn_away: b.turn_away,
            mean: b.mean,
            hold: b.hold.map(|h| h.as_str().to_owned()),
            recent,
        }
    }
}

/// The 16-hex-digit form of a ring digest, as gossip carries it.
pub fn digest_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

impl StatusDoc {
    /// The document for `view`, as seen by a peer routing with `ring` that has sent
    /// `oap_traffic[node]` messages to each node. Pure: the clock is `now_ms`.
    pub fn build(
        view: &ClusterView,
        ring: &Ring,
        oap_traffic: &BTreeMap<String, u64>,
        now_ms: u64,
    ) -> StatusDoc {
        let own_digest = ring.digest();
        let peers: Vec<PeerStatus> = view
            .peers
            .iter()
            .map(|p| peer_status(p, own_digest))
            .collect();

        let t = view.totals();
        let totals = Totals {
            peers: t.peers,
            peers_live: t.live,
            peers_ready: t.ready,
            connections: t.connections,
            draining: t.draining,
            connection_limit: t.connection_limit,
            events_per_sec: t.events_per_sec,
        };

        let mut live_digests: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in view.live() {
            live_digests
                .entry(digest_hex(p.facts.ring_digest))
                .or_default()
                .push(p.id.node_id.clone());
        }
        let digest = digest_hex(own_digest);
        let all_live_peers_agree =
            live_digests.len() <= 1 && live_digests.keys().all(|d| *d == digest);
        let ring_status = RingStatus {
            members: ring.members().to_vec(),
            digest,
            all_live_peers_agree,
            live_digests,
        };

        StatusDoc {
            generated_at_ms: now_ms,
            self_id: view.self_id.clone(),
            peers,
            totals,
            ring: ring_status,
            oap: oap_status(view, ring, oap_traffic),
            shedding: ShedStatus::default(),
        }
    }

    /// The document with this peer's own shedding.
    pub fn with_shedding(self, shedding: ShedStatus) -> StatusDoc {
        StatusDoc { shedding, ..self }
    }
}

fn peer_status(p: &Peer, own_digest: u64) -> PeerStatus {
    PeerStatus {
        node_id: p.id.node_id.clone(),
        generation: p.id.generation,
        is_self: p.is_self,
        gossip_addr: p.gossip_addr.to_string(),
        grpc_addr: p.facts.grpc_addr.clone(),
        admin_addr: p.facts.admin_addr.clone(),
        state: p.facts.state,
        live: p.live,
        connections: p.facts.connections,
        draining: p.facts.draining,
        connection_limit: p.facts.connection_limit,
        events_per_sec: p.facts.events_per_sec,
        oap_view: p.facts.oap_health.clone(),
        ring_digest: digest_hex(p.facts.ring_digest),
        same_ring_as_self: p.facts.ring_digest == own_digest,
        heartbeat: p.heartbeat,
        last_seen_ms_ago: p.last_seen_ms_ago,
        connections_shed: p.facts.connections_shed,
        connections_turned_away: p.facts.connections_turned_away,
        balance_action: p.facts.balance_action.clone(),
        fair_share: p.facts.fair_share,
    }
}

fn oap_status(view: &ClusterView, ring: &Ring, traffic: &BTreeMap<String, u64>) -> Vec<OapStatus> {
    let own_view = view.self_peer().map(|p| &p.facts.oap_health);
    let voters: Vec<&Peer> = view.live_ready().collect();
    let mut nodes: Vec<&str> = ring.members().iter().map(String::as_str).collect();
    nodes.extend(traffic.keys().map(String::as_str));
    for p in &view.peers {
        nodes.extend(p.facts.oap_health.keys().map(String::as_str));
    }
    nodes.sort_unstable();
    nodes.dedup();
    nodes
        .into_iter()
        .map(|node| OapStatus {
            node: node.to_owned(),
            on_ring: ring.members().iter().any(|m| m == node),
            healthy_in_this_peer_view: own_view.and_then(|h| h.get(node).copied()),
            healthy_votes: voters
                .iter()
                .filter(|p| p.facts.oap_health.get(node) == Some(&true))
                .count(),
            voters: voters.len(),
            messages_sent_by_this_peer: traffic.get(node).copied().unwrap_or(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use satmesh_cluster::{BalanceAction, Hold, PeerFacts};

    use super::*;

    const A: &str = "10.2.0.1:11800";
    const B: &str = "10.2.0.2:11800";

    fn peer(name: &str, live: bool, state: PeerState, connections: u64, digest: u64) -> Peer {
        Peer {
            id: PeerId {
                node_id: name.into(),
                generation: 7,
            },
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            facts: PeerFacts {
                grpc_addr: format!("{name}:11800"),
                admin_addr: format!("{name}:1234"),
                state,
                connections,
                draining: connections / 5,
                connection_limit: 100,
                events_per_sec: 10.0,
                oap_health: [(A.into(), true), (B.into(), false)].into(),
                ring_digest: digest,
                connections_shed: connections / 2,
                connections_turned_away: 3,
                balance_action: BalanceAction::Balanced,
                fair_share: Some(12.5),
            },
            live,
            heartbeat: 3,
            last_seen_ms_ago: 250,
            is_self: name == "p1",
        }
    }

    fn view(peers: Vec<Peer>) -> ClusterView {
        ClusterView {
            self_id: peers[0].id.clone(),
            peers,
        }
    }

    #[test]
    fn totals_count_live_peers_only_and_limits_of_ready_ones() {
        let ring = Ring::new(&[A]);
        let d = ring.digest();
        let v = view(vec![
            peer("p1", true, PeerState::Ready, 10, d),
            peer("p2", true, PeerState::Draining, 20, d),
            peer("p3", false, PeerState::Ready, 40, d),
        ]);
        let doc = StatusDoc::build(&v, &ring, &BTreeMap::new(), 5);
        let t = &doc.totals;
        assert_eq!((t.peers, t.peers_live, t.peers_ready), (3, 2, 1));
        assert_eq!((t.connections, t.connection_limit), (30, 100));
        assert_eq!(t.draining, 2 + 4, "the dead peer's are not counted");
        assert_eq!(doc.peers[1].draining, 4);
        assert_eq!(t.events_per_sec, 20.0);
        let conditions: Vec<_> = doc.peers.iter().map(PeerStatus::condition).collect();
        assert_eq!(conditions, ["ready", "draining", "dead"]);
        assert_eq!(doc.generated_at_ms, 5);
        assert_eq!(doc.self_id.node_id, "p1");
    }

    #[test]
    fn agreement_ignores_dead_peers_with_an_old_ring() {
        let ring = Ring::new(&[A]);
        let d = ring.digest();
        let v = view(vec![
            peer("p1", true, PeerState::Ready, 1, d),
            peer("p2", true, PeerState::Ready, 1, d),
            peer("p3", false, PeerState::Ready, 1, 0xdead),
        ]);
        let doc = StatusDoc::build(&v, &ring, &BTreeMap::new(), 0);
        assert!(doc.ring.all_live_peers_agree);
        assert_eq!(doc.ring.digest, digest_hex(d));
        assert_eq!(doc.ring.members, [A]);
        assert_eq!(doc.ring.live_digests.len(), 1);
        assert!(!doc.peers[2].same_ring_as_self);
        assert_eq!(doc.peers[2].ring_digest, "000000000000dead");
    }

    #[test]
    fn a_live_peer_on_another_ring_breaks_agreement() {
        let ring = Ring::new(&[A]);
        let d = ring.digest();
        let v = view(vec![
            peer("p1", true, PeerState::Ready, 1, d),
            peer("p2", true, PeerState::Draining, 1, 0xbeef),
        ]);
        let doc = StatusDoc::build(&v, &ring, &BTreeMap::new(), 0);
        assert!(!doc.ring.all_live_peers_agree);
        assert_eq!(doc.ring.live_digests["000000000000beef"], ["p2"]);
        assert_eq!(doc.ring.live_digests[&digest_hex(d)], ["p1"]);
    }

    #[test]
    fn published_digests_that_agree_with_each_other_but_not_this_ring_disagree() {
        // This peer rebuilt its ring but has not published the new digest yet.
        let ring = Ring::new(&[A, B]);
        let v = view(vec![
            peer("p1", true, PeerState::Ready, 1, 0xbeef),
            peer("p2", true, PeerState::Ready, 1, 0xbeef),
        ]);
        let doc = StatusDoc::build(&v, &ring, &BTreeMap::new(), 0);
        assert!(!doc.ring.all_live_peers_agree);
    }

    #[test]
    fn oap_nodes_come_from_ring_views_and_traffic() {
        let ring = Ring::new(&[A]);
        let d = ring.digest();
        let v = view(vec![
            peer("p1", true, PeerState::Ready, 1, d),
            peer("p2", true, PeerState::Ready, 1, d),
            peer("p3", false, PeerState::Ready, 1, d),
        ]);
        let traffic = [(A.to_owned(), 900), ("10.2.0.9:11800".to_owned(), 3)].into();
        let doc = StatusDoc::build(&v, &ring, &traffic, 0);
        let nodes: Vec<_> = doc.oap.iter().map(|o| o.node.as_str()).collect();
        assert_eq!(nodes, [A, B, "10.2.0.9:11800"]);
        let a = &doc.oap[0];
        assert!(a.on_ring);
        assert_eq!(a.healthy_in_this_peer_view, Some(true));
        assert_eq!((a.healthy_votes, a.voters), (2, 2));
        assert_eq!(a.messages_sent_by_this_peer, 900);
        let b = &doc.oap[1];
        assert!(!b.on_ring);
        assert_eq!(b.healthy_in_this_peer_view, Some(false));
        assert_eq!(b.healthy_votes, 0);
        assert_eq!(doc.oap[2].healthy_in_this_peer_view, None);
    }

    #[test]
    fn a_lone_peer_agrees_with_itself_and_the_document_round_trips() {
        let ring = Ring::new(&[A, B]);
        let v = view(vec![peer("p1", true, PeerState::Ready, 4, ring.digest())]);
        let doc = StatusDoc::build(&v, &ring, &BTreeMap::new(), 1);
        assert!(doc.ring.all_live_peers_agree);
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains(r#""state":"ready""#), "{json}");
        let back: StatusDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn each_peer_shows_its_gossiped_shedding_and_this_peer_its_rounds() {
        let ring = Ring::new(&[A]);
        let d = ring.digest();
        let mut v = view(vec![
            peer("p1", true, PeerState::Ready, 10, d),
            peer("p2", true, PeerState::Ready, 40, d),
        ]);
        v.peers[1].facts.balance_action = BalanceAction::Shedding;
        let round = ShedRound {
            at_ms: 900,
            drained: 7,
            serving: 33,
            mean: 25.0,
        };
        let latest = ShedDecision {
            hold: Some(Hold::WithinTolerance),
            mean: Some(25.0),
            ..ShedDecision::default()
        };
        let doc = StatusDoc::build(&v, &ring, &BTreeMap::new(), 1000)
            .with_shedding(ShedStatus::new(Some(&latest), vec![round.clone()]));
        let p2 = &doc.peers[1];
        assert_eq!((p2.connections_shed, p2.connections_turned_away), (20, 3));
        assert_eq!(
            (&p2.balance_action, p2.fair_share),
            (&BalanceAction::Shedding, Some(12.5))
        );
        let s = &doc.shedding;
        assert!(s.enabled && !s.turn_away);
        assert_eq!(
            (s.action.as_str(), s.shed, s.mean),
            ("balanced", 0, Some(25.0))
        );
        assert_eq!(s.hold.as_deref(), Some("within tolerance"));
        assert_eq!(s.recent, [round]);
        // JSON carries the gossiped strings, as users and older peers read them.
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["peers"][1]["balance_action"], "shedding");
        assert_eq!(json["shedding"]["action"], "balanced");
        assert_eq!(json["shedding"]["hold"], "within tolerance");
        let back: StatusDoc = serde_json::from_value(json).unwrap();
        assert_eq!(back, doc);

        let off = ShedStatus::new(None, Vec::new());
        assert!(!off.enabled);
        assert_eq!(off.action, BalanceAction::Off);
    }

    #[test]
    fn a_document_from_an_older_peer_still_parses() {
        let ring = Ring::new(&[A]);
        let v = view(vec![peer("p1", true, PeerState::Ready, 4, ring.digest())]);
        let mut json =
            serde_json::to_value(StatusDoc::build(&v, &ring, &BTreeMap::new(), 1)).unwrap();
        json.as_object_mut().unwrap().remove("shedding");
        for key in [
            "connections_shed",
            "connections_turned_away",
            "balance_action",
            "fair_share",
        ] {
            json["peers"][0].as_object_mut().unwrap().remove(key);
        }
        let doc: StatusDoc = serde_json::from_value(json).unwrap();
        assert_eq!(doc.shedding, ShedStatus::default());
        assert_eq!(doc.peers[0].connections_shed, 0);
        assert_eq!(doc.peers[0].fair_share, None);
    }
}
