//! Properties of the shared ring: the same members route the same way whatever their
//! order; load is even; a join or a leave moves only the keys it must.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use satmesh_cluster::ring::{Ring, route_key};

const KEYS: usize = 100_000;
const MAX_OVER_MEAN: f64 = 1.10;

fn keys(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| route_key(&format!("service-{}", i % 97), &format!("instance-{i}")))
        .collect()
}

fn numbered(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("10.0.0.{i}:11800")).collect()
}

/// max/mean of keys per member.
fn max_over_mean(ring: &Ring, keys: &[Vec<u8>]) -> f64 {
    let mut load: HashMap<&str, usize> = HashMap::new();
    for key in keys {
        *load.entry(ring.lookup(key).unwrap()).or_default() += 1;
    }
    assert_eq!(load.len(), ring.len(), "every member owns keys");
    let max = *load.values().max().unwrap();
    max as f64 * ring.len() as f64 / keys.len() as f64
}

fn addresses(min: usize, max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set((any::<[u8; 4]>(), 1024u16..), min..=max).prop_map(|set| {
        set.into_iter()
            .map(|(ip, port)| format!("{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3]))
            .collect()
    })
}

#[test]
fn balance_over_3_to_10_numbered_nodes() {
    let keys = keys(KEYS);
    for n in 3..=10 {
        let ratio = max_over_mean(&Ring::new(&numbered(n)), &keys);
        eprintln!("n={n} max/mean={ratio:.3}");
        assert!(ratio <= MAX_OVER_MEAN, "n={n}: max/mean {ratio:.3}");
    }
}

/// Check one ring change: every key that moved went to `gained` (a join) or came from
/// `lost` and went to its next member on the old ring (a leave). Returns the moved share.
fn moved_share(
    before: &Ring,
    after: &Ring,
    keys: &[Vec<u8>],
    gained: Option<&str>,
    lost: Option<&str>,
) -> f64 {
    let mut moved = 0;
    for key in keys {
        let (old, new) = (before.lookup(key).unwrap(), after.lookup(key).unwrap());
        if old == new {
            assert_ne!(Some(old), lost, "a key stayed on the member that left");
            continue;
        }
        moved += 1;
        if let Some(gained) = gained {
            assert_eq!(new, gained, "a join moved a key to an old member");
        }
        if let Some(lost) = lost {
            assert_eq!(old, lost, "a leave moved a key of a member that stayed");
            assert_eq!(
                new,
                before.lookup_n(key, 2)[1],
                "a key did not go to its successor"
            );
        }
    }
    moved as f64 / keys.len() as f64
}

#[test]
fn join_and_leave_over_3_to_10_numbered_nodes() {
    let keys = keys(KEYS);
    for n in 3..=10 {
        let members = numbered(n + 1);
        let before = Ring::new(&members[..n]);
        let after = Ring::new(&members);
        let share = moved_share(&before, &after, &keys, Some(&members[n]), None);
        let bound = 1.2 / (n + 1) as f64;
        eprintln!(
            "join {n}->{}: moved {share:.4} (1/(n+1) = {:.4})",
            n + 1,
            1.0 / (n + 1) as f64
        );
        assert!(
            share <= bound,
            "join to {}: moved {share:.4} > {bound:.4}",
            n + 1
        );

        let share = moved_share(&after, &before, &keys, None, Some(&members[n]));
        assert!(
            share <= bound,
            "leave from {}: moved {share:.4} > {bound:.4}",
            n + 1
        );
    }
}

proptest! {
    #![proptest_config(Config { cases: 32, failure_persistence: None, ..Config::default() })]

    /// Same member set, any order, duplicates or not: same digest, same routes.
    #[test]
    fn order_and_duplicates_do_not_matter(members in addresses(1, 12), seed in any::<u64>()) {
        let mut shuffled = members.clone();
        for i in (1..shuffled.len()).rev() {
            let j = (seed.rotate_left(i as u32) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        shuffled.push(members[0].clone());
        let (a, b) = (Ring::new(&members), Ring::new(&shuffled));
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert_eq!(a.members(), b.members());
        for key in keys(200) {
            prop_assert_eq!(a.lookup(&key), b.lookup(&key));
            prop_assert_eq!(a.lookup_n(&key, 3), b.lookup_n(&key, 3));
        }
    }
}

proptest! {
    #![proptest_config(Config { cases: 16, failure_persistence: None, ..Config::default() })]

    /// Different member sets give different digests.
    #[test]
    fn digest_tells_member_sets_apart(members in addresses(2, 10)) {
        let fewer = Ring::new(&members[1..]);
        prop_assert_ne!(Ring::new(&members).digest(), fewer.digest());
    }
}

proptest! {
    // Balance is a statistical bound: a fixed seed keeps the sets checked the same on
    // every run (random seeds would make a rare unlucky set a flaky failure). 2000 vnodes
    // stayed under 1.090 over 1000 random sets when measured.
    #![proptest_config(Config { cases: 12, rng_seed: RngSeed::Fixed(0x5a7_3e54), failure_persistence: None, ..Config::default() })]

    #[test]
    fn balance_over_random_addresses(members in addresses(3, 10)) {
        let ratio = max_over_mean(&Ring::new(&members), &keys(KEYS));
        prop_assert!(ratio <= MAX_OVER_MEAN, "{} members: max/mean {:.3}", members.len(), ratio);
    }
}

proptest! {
    #![proptest_config(Config { cases: 24, failure_persistence: None, ..Config::default() })]

    #[test]
    fn a_join_moves_only_its_share_to_the_new_node(members in addresses(4, 11)) {
        let keys = keys(20_000);
        let n = members.len() - 1;
        let (before, after) = (Ring::new(&members[..n]), Ring::new(&members));
        let share = moved_share(&before, &after, &keys, Some(&members[n]), None);
        prop_assert!(share <= 1.2 / (n + 1) as f64, "moved {:.4} joining {} to {}", share, 1, n);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_keys_to_their_successors(members in addresses(3, 10), which in any::<prop::sample::Index>()) {
        let keys = keys(20_000);
        let leaver = which.get(&members).clone();
        let rest: Vec<&String> = members.iter().filter(|m| **m != leaver).collect();
        let (before, after) = (Ring::new(&members), Ring::new(&rest));
        moved_share(&before, &after, &keys, None, Some(&leaver));
    }
}
