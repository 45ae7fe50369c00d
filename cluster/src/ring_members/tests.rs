use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::facts::{PeerFacts, PeerState};
use crate::view::Peer;
use crate::view::testing::view;

fn peer(n: u16, state: PeerState, live: bool, health: &[(&str, bool)]) -> Peer {
    let facts = PeerFacts {
        grpc_addr: format!("10.1.0.{n}:11800"),
        state,
        oap_health: health.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..PeerFacts::default()
    };
    crate::view::testing::peer(n as u8, live, facts)
}

const A: &str = "10.2.0.1:11800";
const B: &str = "10.2.0.2:11800";
const C: &str = "10.2.0.3:11800";
use PeerState::{Draining, Ready};

#[test]
fn a_node_needs_a_strict_majority_of_ready_peers() {
    let v = view(vec![
        peer(1, Ready, true, &[(A, true), (B, true), (C, false)]),
        peer(2, Ready, true, &[(A, true), (B, false), (C, true)]),
        peer(3, Ready, true, &[(A, true), (B, false)]),
    ]);
    // A: 3/3, B: 1/3, C: 1/3 (peer 3 does not know C: no vote for it).
    assert_eq!(ring_members(&v), vec![A.to_string()]);
}

#[test]
fn two_voters_must_agree() {
    let v = view(vec![
        peer(1, Ready, true, &[(A, true), (B, true)]),
        peer(2, Ready, true, &[(A, true), (B, false)]),
    ]);
    assert_eq!(ring_members(&v), vec![A.to_string()]);
}

#[test]
fn draining_and_dead_peers_do_not_vote() {
    let v = view(vec![
        peer(1, Ready, true, &[(A, true), (B, false)]),
        peer(2, Draining, true, &[(A, false), (B, true)]),
        peer(3, Ready, false, &[(A, false), (B, true)]),
        peer(4, Draining, false, &[(B, true)]),
    ]);
    assert_eq!(ring_members(&v), vec![A.to_string()]);
}

#[test]
fn a_draining_tier_still_agrees_on_a_ring() {
    let v = view(vec![
        peer(1, Draining, true, &[(A, true), (B, true)]),
        peer(2, Draining, true, &[(A, true), (B, false)]),
        peer(3, Ready, false, &[(B, true)]),
    ]);
    assert_eq!(ring_members(&v), vec![A.to_string()]);
}

#[test]
fn no_majority_gives_an_empty_ring() {
    let v = view(vec![
        peer(1, Ready, true, &[(A, true), (B, false)]),
        peer(2, Ready, true, &[(A, false), (B, true)]),
    ]);
    assert!(ring_members(&v).is_empty());
}

fn arb_view() -> impl Strategy<Value = Vec<Peer>> {
    let nodes = [
        "10.2.0.1:11800",
        "10.2.0.2:11800",
        "10.2.0.3:11800",
        "10.2.0.4:11800",
    ];
    prop::collection::vec(
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(prop::option::of(any::<bool>()), 4),
        ),
        1..8,
    )
    .prop_map(move |specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (ready, live, health))| {
                let health: Vec<(&str, bool)> = nodes
                    .iter()
                    .zip(health)
                    .filter_map(|(n, h)| Some((*n, h?)))
                    .collect();
                let state = if ready { Ready } else { Draining };
                peer(i as u16 + 1, state, live, &health)
            })
            .collect()
    })
}

proptest! {
    /// Peers heard of in any order, with health maps built in any order, give the same
    /// sorted member list.
    #[test]
    fn members_do_not_depend_on_order(peers in arb_view(), seed in any::<u64>()) {
        let expected = ring_members(&view(peers.clone()));
        let mut shuffled = peers;
        let len = shuffled.len();
        for i in (1..len).rev() {
            let j = (seed.wrapping_mul(i as u64 + 7) >> 7) as usize % (i + 1);
            shuffled.swap(i, j);
        }
        for p in &mut shuffled {
            let reversed: BTreeMap<String, bool> =
                p.facts.oap_health.iter().rev().map(|(k, v)| (k.clone(), *v)).collect();
            p.facts.oap_health = reversed;
        }
        prop_assert_eq!(ring_members(&view(shuffled)), expected.clone());
        let mut sorted = expected.clone();
        sorted.sort();
        prop_assert_eq!(sorted, expected);
    }
}

fn raw(entries: &[(&str, bool)]) -> BTreeMap<String, bool> {
    entries.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

#[test]
fn damper_admits_a_new_node_after_up_after() {
    let t0 = Instant::now();
    let mut d = HealthDamper::new(3 * S, 2 * S);
    assert_eq!(d.update(&raw(&[(A, true)]), t0), raw(&[(A, false)]));
    assert_eq!(d.next_change(), Some(t0 + 2 * S));
    assert_eq!(
        d.update(&raw(&[(A, true)]), t0 + 1999 * MS),
        raw(&[(A, false)])
    );
    assert_eq!(d.update(&raw(&[(A, true)]), t0 + 2 * S), raw(&[(A, true)]));
    assert_eq!(d.next_change(), None);
}

#[test]
fn damper_drops_a_node_only_after_down_after() {
    let t0 = Instant::now();
    let mut d = HealthDamper::new(3 * S, 2 * S);
    d.update(&raw(&[(A, true)]), t0);
    d.update(&raw(&[(A, true)]), t0 + 2 * S);
    assert_eq!(d.update(&raw(&[(A, false)]), t0 + 3 * S), raw(&[(A, true)]));
    assert_eq!(d.update(&raw(&[(A, false)]), t0 + 5 * S), raw(&[(A, true)]));
    assert_eq!(
        d.update(&raw(&[(A, false)]), t0 + 6 * S),
        raw(&[(A, false)])
    );
}

#[test]
fn damper_holds_a_flapping_node_steady() {
    let t0 = Instant::now();
    let mut d = HealthDamper::new(3 * S, 2 * S);
    d.update(&raw(&[(A, true)]), t0);
    d.update(&raw(&[(A, true)]), t0 + 2 * S);
    // Down and up every second: never down for 3 s in a row, so published stays up.
    for step in 0..20u32 {
        let healthy = step % 2 == 1;
        let published = d.update(&raw(&[(A, healthy)]), t0 + 3 * S + step * S);
        assert_eq!(published, raw(&[(A, true)]), "step {step}");
    }
}

#[test]
fn damper_forgets_undiscovered_nodes_at_once() {
    let t0 = Instant::now();
    let mut d = HealthDamper::new(3 * S, 2 * S);
    d.update(&raw(&[(A, true), (B, true)]), t0);
    d.update(&raw(&[(A, true), (B, true)]), t0 + 2 * S);
    assert_eq!(
        d.update(&raw(&[(A, true)]), t0 + 2 * S + MS),
        raw(&[(A, true)])
    );
}
