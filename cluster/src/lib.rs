//! # satmesh-cluster
//!
//! The cluster room of satmesh: peers gossip their facts (state, load, OAP health, ring
//! digest) and every peer computes the same ring of OAP nodes from what it heard. The
//! cluster only informs routing and shedding; no data passes through it, and it holds no
//! gRPC.
//!
//! # Layout
//!
//! Facts flow out through gossip and come back as views; views turn into a ring:
//! `PeerFacts` -> [`membership::Cluster::publish`] -> chitchat -> [`ClusterView`] ->
//! [`mod@ring_members`] -> [`Ring`] -> [`SharedRing`] (read by the router on the hot path).
//!
//! - [`facts`]: the typed facts one peer publishes and their encoding as chitchat
//!   key-values (one key per fact, small string values, never deleted); `facts/action.rs`
//!   types the shedder's published [`BalanceAction`] and the [`Hold`] reasons.
//! - [`publish`]: the pure rate-limit decision: which fact changes go out at once.
//! - [`membership`]: [`Cluster`], chitchat 0.13 wrapped entirely: join, publish, view,
//!   change stream, leave.
//! - [`view`]: [`ClusterView`] and [`Peer`], what the rest of satmesh reads, with tier
//!   totals and ring agreement.
//! - [`mod@ring_members`]: the pure choice of the ring's OAP nodes from a view (majority of
//!   ready peers), and the [`HealthDamper`] that gives it hysteresis.
//! - [`ring`]: the consistent-hash [`Ring`] (hashring, explicit bytes, 2000 vnodes per
//!   node), its digest, route keys, and the lock-free [`SharedRing`].
//! - [`balance`]: the pure shedding decision from a view and this peer's own count: a
//!   [`ShedDecision`], whose [`action`](ShedDecision::action) is what the peer publishes.
//! - [`settings`]: [`ClusterSettings`], the documented `cluster.*` settings and defaults.
//!
//! Modules depend one way, with `facts` at the bottom (it imports no other module):
//! `facts` <- `view` <- `balance`, `ring_members`; `facts` <- `publish` <- `settings`;
//! `membership` uses them all.

pub mod balance;
pub mod facts;
pub mod membership;
pub mod publish;
pub mod ring;
pub mod ring_members;
pub mod settings;
pub mod view;

pub use balance::ShedDecision;
pub use facts::{BalanceAction, Hold, PeerFacts, PeerId, PeerState};
pub use membership::{Cluster, ClusterError};
pub use publish::PublishLimits;
pub use ring::{Ring, SharedRing, route_key};
pub use ring_members::{HealthDamper, ring_members};
pub use settings::ClusterSettings;
pub use view::{ClusterView, Peer, TierTotals};

/// Chitchat's transports, re-exported so callers need no direct chitchat dependency:
/// `UdpTransport` in production, `ChannelTransport` (in memory, links can be cut) in tests.
pub mod transport {
    pub use chitchat::transport::{ChannelTransport, Transport, UdpTransport};
}
