//! When a peer's new facts are worth gossiping: a pure decision, no clock inside.
//!
//! Facts that change routing or membership decisions (state, addresses, connection limit,
//! OAP health, ring digest) go out at once, and so does a change of the shedder's action
//! (a person watching the status page sees a peer start and stop shedding as it happens).
//! Load figures (connections, those serving, events/s, the fair share) go out at once
//! when they moved by more than `large_change` (relative), otherwise at most once per
//! `interval`, so a count changing by one does not bump the peer's gossip version (and
//! wake every peer's change stream) each time. The shed and turned-away totals only ever wait for `interval`: a
//! client without backoff may be turned away thousands of times a second, and no decision
//! reads them. Chitchat itself coalesces writes made between two gossip rounds, so
//! `interval` near the gossip interval is enough.

use std::time::Duration;

use crate::facts::PeerFacts;

/// Limits on how often load counters are republished.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PublishLimits {
    /// Least time between two publications of small load changes.
    pub interval: Duration,
    /// A relative change of a load counter above this (0.10 = 10 %) goes out at once.
    pub large_change: f64,
}

/// What to do with wanted facts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    /// Nothing changed.
    Unchanged,
    /// Publish now.
    Now,
    /// Only small load changes: decide again after this long (with the facts wanted then).
    After(Duration),
}

/// Decides whether `wanted` goes out, `since_published` after `published` went out.
pub fn decide(
    published: &PeerFacts,
    wanted: &PeerFacts,
    since_published: Duration,
    limits: PublishLimits,
) -> Publish {
    if published == wanted {
        return Publish::Unchanged;
    }
    let urgent = published.state != wanted.state
        || published.grpc_addr != wanted.grpc_addr
        || published.admin_addr != wanted.admin_addr
        || published.connection_limit != wanted.connection_limit
        || published.oap_health != wanted.oap_health
        || published.ring_digest != wanted.ring_digest
        || published.balance_action != wanted.balance_action;
    let large = is_large(
        published.connections as f64,
        wanted.connections as f64,
        limits.large_change,
    ) || is_large(
        published.serving() as f64,
        wanted.serving() as f64,
        limits.large_change,
    ) || is_large(
        published.events_per_sec,
        wanted.events_per_sec,
        limits.large_change,
    ) || is_large(
        published.fair_share.unwrap_or(0.0),
        wanted.fair_share.unwrap_or(0.0),
        limits.large_change,
    );
    if urgent || large || since_published >= limits.interval {
        Publish::Now
    } else {
        Publish::After(limits.interval - since_published)
    }
}

/// A move from `old` to `new` by more than `ratio` of `old` (any move away from zero).
fn is_large(old: f64, new: f64, ratio: f64) -> bool {
    if old == new {
        return false;
    }
    if old == 0.0 {
        return true;
    }
    ((new - old) / old).abs() > ratio
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{BalanceAction, PeerState};

    const LIMITS: PublishLimits = PublishLimits {
        interval: Duration::from_millis(500),
        large_change: 0.10,
    };
    const MS: Duration = Duration::from_millis(1);

    fn facts(connections: u64) -> PeerFacts {
        PeerFacts {
            grpc_addr: "10.0.0.1:11800".into(),
            connections,
            connection_limit: 4000,
            events_per_sec: 1000.0,
            ..PeerFacts::default()
        }
    }

    #[test]
    fn same_facts_are_not_republished() {
        assert_eq!(
            decide(&facts(5), &facts(5), 10 * LIMITS.interval, LIMITS),
            Publish::Unchanged
        );
    }

    #[test]
    fn a_count_moving_by_one_waits_for_the_interval() {
        assert_eq!(
            decide(&facts(800), &facts(801), 100 * MS, LIMITS),
            Publish::After(400 * MS)
        );
        assert_eq!(
            decide(&facts(800), &facts(801), 500 * MS, LIMITS),
            Publish::Now
        );
    }

    #[test]
    fn a_large_count_change_goes_out_at_once() {
        assert_eq!(decide(&facts(800), &facts(881), MS, LIMITS), Publish::Now);
        assert_eq!(decide(&facts(800), &facts(719), MS, LIMITS), Publish::Now);
        assert_eq!(
            decide(&facts(800), &facts(880), MS, LIMITS),
            Publish::After(499 * MS)
        );
        assert_eq!(decide(&facts(0), &facts(1), MS, LIMITS), Publish::Now);
        let mut busier = facts(800);
        busier.events_per_sec = 1200.0;
        assert_eq!(decide(&facts(800), &busier, MS, LIMITS), Publish::Now);
        // A shed round: as many open, but a fifth of them now draining.
        let mut shedding = facts(800);
        shedding.draining = 160;
        assert_eq!(decide(&facts(800), &shedding, MS, LIMITS), Publish::Now);
    }

    #[test]
    fn routing_facts_go_out_at_once() {
        let base = facts(800);
        let mut draining = base.clone();
        draining.state = PeerState::Draining;
        let mut sick = base.clone();
        sick.oap_health.insert("10.9.0.1:11800".into(), false);
        let mut rerouted = base.clone();
        rerouted.ring_digest = 7;
        let mut shedding = base.clone();
        shedding.balance_action = BalanceAction::Shedding;
        for wanted in [draining, sick, rerouted, shedding] {
            assert_eq!(decide(&base, &wanted, Duration::ZERO, LIMITS), Publish::Now);
        }
    }

    #[test]
    fn shed_and_turned_away_totals_wait_for_the_interval_however_much_they_grow() {
        let mut base = facts(800);
        base.connections_turned_away = 10;
        let mut busy = base.clone();
        busy.connections_shed = 50;
        busy.connections_turned_away = 5000;
        assert_eq!(decide(&base, &busy, MS, LIMITS), Publish::After(499 * MS));
        assert_eq!(decide(&base, &busy, 500 * MS, LIMITS), Publish::Now);
    }

    #[test]
    fn the_fair_share_is_a_load_figure() {
        let mut base = facts(800);
        base.fair_share = Some(100.0);
        let mut moved = base.clone();
        moved.fair_share = Some(105.0);
        assert_eq!(decide(&base, &moved, MS, LIMITS), Publish::After(499 * MS));
        moved.fair_share = Some(120.0);
        assert_eq!(decide(&base, &moved, MS, LIMITS), Publish::Now);
        moved.fair_share = None;
        assert_eq!(decide(&base, &moved, MS, LIMITS), Publish::Now);
    }
}
