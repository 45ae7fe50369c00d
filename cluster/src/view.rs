//! What one peer knows about the tier: every peer's facts and liveness, as typed values.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::facts::{PeerFacts, PeerId, PeerState};

/// One peer as seen from here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub id: PeerId,
    /// Address the peer gossips on.
    pub gossip_addr: SocketAddr,
    /// Its facts as last received (its last words, when it is dead).
    pub facts: PeerFacts,
    /// Alive according to the failure detector (always true for this peer itself).
    pub live: bool,
    /// The peer's heartbeat counter as last received.
    pub heartbeat: u64,
    /// Milliseconds since its heartbeat last advanced here, as of when the view was
    /// refreshed (once per gossip round).
    pub last_seen_ms_ago: u64,
    pub is_self: bool,
}

impl Peer {
    pub fn is_live_ready(&self) -> bool {
        self.live && self.facts.state == PeerState::Ready
    }
}

/// Sums over the tier, for balance decisions and the status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TierTotals {
    /// Peers in the view, dead ones included.
    pub peers: usize,
    pub live: usize,
    /// Live and ready.
    pub ready: usize,
    /// Agent connections on live peers (draining ones included: they still hold them).
    pub connections: u64,
    /// Of those, draining: their agents have already connected again (most likely to
    /// another peer), so `connections - draining` counts each agent once.
    pub draining: u64,
    /// Connection limits of live ready peers: what the tier can take.
    pub connection_limit: u64,
    /// Events per second received by live peers.
    pub events_per_sec: f64,
}

/// The tier as one peer sees it. Peers are sorted by id and include this peer; a
/// restarted peer appears once, with its newest generation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub self_id: PeerId,
    pub peers: Vec<Peer>,
}

impl ClusterView {
    pub fn self_peer(&self) -> Option<&Peer> {
        self.peers.iter().find(|p| p.is_self)
    }

    pub fn peer(&self, node_id: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.id.node_id == node_id)
    }

    pub fn live(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.live)
    }

    pub fn live_ready(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.is_live_ready())
    }

    pub fn totals(&self) -> TierTotals {
        let mut totals = TierTotals {
            peers: self.peers.len(),
            ..TierTotals::default()
        };
        for peer in self.live() {
            totals.live += 1;
            totals.connections += peer.facts.connections;
            totals.draining += peer.facts.draining.min(peer.facts.connections);
            totals.events_per_sec += peer.facts.events_per_sec;
            if peer.facts.state == PeerState::Ready {
                totals.ready += 1;
                totals.connection_limit += peer.facts.connection_limit;
            }
        }
        totals
    }

    /// Whether every live peer reports the same ring digest (they route fixed traffic
    /// identically). True for a tier of one.
    pub fn ring_agreed(&self) -> bool {
        let mut digests = self.live().map(|p| p.facts.ring_digest);
        let first = digests.next();
        digests.all(|d| Some(d) == first)
    }

    /// Equal apart from heartbeats and last-seen ages, which move every round: a change
    /// stream fires only when this is false.
    pub fn same_state(&self, other: &ClusterView) -> bool {
        self.self_id == other.self_id
            && self.peers.len() == other.peers.len()
            && self.peers.iter().zip(&other.peers).all(|(a, b)| {
                a.id == b.id
                    && a.gossip_addr == b.gossip_addr
                    && a.live == b.live
                    && a.is_self == b.is_self
                    && a.facts == b.facts
            })
    }
}

/// Views for the crate's tests: peers numbered `n`, named `peer-{n}`, gossiping from
/// 10.1.0.n:7946; peer 1 is this one.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Peer `n`, live or not, with `facts`; heartbeat 1, seen just now.
    pub(crate) fn peer(n: u8, live: bool, facts: PeerFacts) -> Peer {
        Peer {
            id: PeerId {
                node_id: format!("peer-{n}"),
                generation: 1,
            },
            gossip_addr: ([10, 1, 0, n], 7946).into(),
            facts,
            live,
            heartbeat: 1,
            last_seen_ms_ago: 0,
            is_self: n == 1,
        }
    }

    /// The tier as its first peer sees it.
    pub(crate) fn view(peers: Vec<Peer>) -> ClusterView {
        ClusterView {
            self_id: peers[0].id.clone(),
            peers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::view;
    use super::*;

    fn peer(n: u8, state: PeerState, live: bool, connections: u64, digest: u64) -> Peer {
        let facts = PeerFacts {
            state,
            connections,
            connection_limit: 100,
            events_per_sec: 10.0,
            ring_digest: digest,
            ..PeerFacts::default()
        };
        super::testing::peer(n, live, facts)
    }

    #[test]
    fn totals_count_live_load_and_ready_capacity() {
        let mut draining = peer(1, PeerState::Ready, true, 10, 7);
        draining.facts.draining = 4;
        let v = view(vec![
            draining,
            peer(2, PeerState::Draining, true, 5, 7),
            peer(3, PeerState::Ready, false, 99, 8),
        ]);
        let t = v.totals();
        assert_eq!((t.peers, t.live, t.ready), (3, 2, 1));
        assert_eq!((t.connections, t.connection_limit), (15, 100));
        assert_eq!(t.draining, 4);
        assert_eq!(t.events_per_sec, 20.0);
        assert_eq!(v.live_ready().count(), 1);
        assert!(v.ring_agreed(), "the dead peer's digest does not count");
    }

    #[test]
    fn ring_disagreement_and_same_state() {
        let a = view(vec![
            peer(1, PeerState::Ready, true, 1, 7),
            peer(2, PeerState::Ready, true, 1, 8),
        ]);
        assert!(!a.ring_agreed());
        let mut b = a.clone();
        b.peers[1].heartbeat = 42;
        b.peers[1].last_seen_ms_ago = 300;
        assert!(a.same_state(&b), "heartbeats alone are no change");
        b.peers[1].live = false;
        assert!(!a.same_state(&b));
    }
}
