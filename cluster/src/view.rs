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
