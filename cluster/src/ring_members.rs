//! Which OAP nodes are on the ring: a pure function of gossiped state.
//!
//! Every peer runs [`ring_members`] on its [`ClusterView`]; once gossip has converged all
//! views hold the same facts, so all peers compute the same members (the result is sorted
//! and does not depend on the order peers or nodes were heard of) and build the same ring.
//!
//! **The rule.** Voters are the live ready peers. An OAP node is a member when a strict
//! majority of voters report it healthy; a voter that does not know a node counts as
//! "not healthy". When no peer is ready (a tier shutting down), live draining peers vote
//! instead, so a draining tier keeps routing fixed traffic consistently while it flushes.
//! When no node has a majority the ring is empty, and the caller routes round-robin
//! until one does. With two voters, "majority" means both.
//!
//! **Hysteresis lives in what peers publish, not here.** Damping on local history (say,
//! "keep a node for 5 s after the majority drops it") would make the result depend on
//! when each peer heard what, and peers would disagree exactly while a node flaps. So
//! this function has no memory; instead each peer passes its raw health through a
//! [`HealthDamper`] before publishing it, and a flapping node's *published* health stays
//! put. Every peer then votes on the same damped facts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::view::ClusterView;

/// The OAP nodes on the ring, sorted. See the module docs for the rule.
pub fn ring_members(view: &ClusterView) -> Vec<String> {
    let mut voters: Vec<_> = view.live_ready().collect();
    if voters.is_empty() {
        voters = view.live().collect();
    }
    let mut healthy_votes: BTreeMap<&str, usize> = BTreeMap::new();
    for voter in &voters {
        for (node, healthy) in &voter.facts.oap_health {
            if *healthy {
                *healthy_votes.entry(node).or_default() += 1;
            }
        }
    }
    healthy_votes
        .into_iter()
        .filter(|(_, votes)| votes * 2 > voters.len())
        .map(|(node, _)| node.to_owned())
        .collect()
}

/// Default time a node must look down before it is published down. Covers a reconnect
/// after a GOAWAY; short, because the 2 s target for "an OAP going down is visible on
/// every peer" includes it (fixed traffic for the node waits meanwhile, so that every
/// peer moves its keys at the same time).
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(1);
/// Default time a node must look up before it is published up (also for a node just
/// discovered): long enough that a flapping node stays out instead of moving keys back
/// and forth.
pub const DEFAULT_UP_AFTER: Duration = Duration::from_secs(5);

/// Turns a peer's raw per-node health into the health it publishes: a node flips to down
/// only after it has been down for `down_after`, and to up only after it has been up for
/// `up_after`. New nodes start down. Time is passed in; nothing here reads a clock.
#[derive(Clone, Debug)]
pub struct HealthDamper {
    down_after: Duration,
    up_after: Duration,
    nodes: BTreeMap<String, Damped>,
}

#[derive(Clone, Copy, Debug)]
struct Damped {
    published: bool,
    /// Raw health differs from `published` since this instant.
    pending_since: Option<Instant>,
}

impl Default for HealthDamper {
    fn default() -> Self {
        HealthDamper::new(DEFAULT_DOWN_AFTER, DEFAULT_UP_AFTER)
    }
}

impl HealthDamper {
    pub fn new(down_after: Duration, up_after: Duration) -> HealthDamper {
        HealthDamper {
            down_after,
            up_after,
            nodes: BTreeMap::new(),
        }
    }

    /// Feeds the raw health of every node discovered now (nodes left out are forgotten at
    /// once: discovery removed them, that is not a flap) and returns the health to publish.
    pub fn update(&mut self, raw: &BTreeMap<String, bool>, now: Instant) -> BTreeMap<String, bool> {
        self.nodes.retain(|node, _| raw.contains_key(node));
        for (node, &healthy) in raw {
            let damped = self.nodes.entry(node.clone()).or_insert(Damped {
                published: false,
                pending_since: None,
            });
            if healthy == damped.published {
                damped.pending_since = None;
                continue;
            }
            let since = *damped.pending_since.get_or_insert(now);
            let hold = if healthy {
                self.up_after
            } else {
                self.down_after
            };
            if now.saturating_duration_since(since) >= hold {
                damped.published = healthy;
                damped.pending_since = None;
            }
        }
        self.published()
    }

    /// The health to publish, as of the last update.
    pub fn published(&self) -> BTreeMap<String, bool> {
        self.nodes
            .iter()
            .map(|(node, damped)| (node.clone(), damped.published))
            .collect()
    }

    /// When the next pending flip is due, if raw health stays as last fed; call
    /// [`update`](Self::update) again then.
    pub fn next_change(&self) -> Option<Instant> {
        self.nodes
            .values()
            .filter_map(|d| {
                let hold = if d.published {
                    self.down_after
                } else {
                    self.up_after
                };
                Some(d.pending_since? + hold)
            })
            .min()
    }
}

#[cfg(test)]
mod tests;
