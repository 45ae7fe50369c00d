//! The shipped defaults against the targets, for 3 and 10 peers on the in-memory
//! transport (paused clock, so figures are protocol latency in virtual time; processing
//! and network time come on top on real hosts):
//! - a change published by one peer is visible on every peer within 2 s;
//! - a killed peer is declared dead on every peer within 10 s.
//!
//! `cargo test -p satmesh-cluster --test convergence -- --nocapture` prints the figures.

mod common;

use std::time::Duration;

use common::*;
use satmesh_cluster::transport::ChannelTransport;
use satmesh_cluster::{Cluster, ClusterSettings};
use tokio::time::Instant;

const CHANGE_TARGET: Duration = Duration::from_secs(2);
const DEATH_TARGET: Duration = Duration::from_secs(10);

async fn measure(count: u16) {
    let transport = ChannelTransport::default();
    let defaults = ClusterSettings::default();
    let mut peers: Vec<Cluster> = Vec::new();
    for n in 1..=count {
        let settings = settings_with(n, defaults.gossip_interval);
        peers.push(join(n, settings, &transport).await);
    }
    let everyone: Vec<&Cluster> = peers.iter().collect();
    let ids: Vec<u16> = (1..=count).collect();
    let joined = wait_all(&everyone, 20 * DEATH_TARGET, "converged", |v| {
        sees_live(v, &ids)
    })
    .await;

    // Small (+1, rate-limited) and large load changes and an OAP health change, each
    // published by a different peer: worst time until every peer sees it.
    let mut worst_change = Duration::ZERO;
    for round in 0..6u64 {
        let from = &peers[(round as usize * 3 + 1) % peers.len()];
        let mut facts = from.facts();
        match round % 3 {
            0 => facts.connections += 1,
            1 => facts.connections += 1000,
            _ => {
                facts
                    .oap_health
                    .insert(format!("10.2.0.{round}:11800"), false);
            }
        }
        let expected = facts.clone();
        let node = from.self_id().node_id.clone();
        tokio::time::sleep(Duration::from_millis(137 * round)).await; // vary the phase
        let published = Instant::now();
        from.publish(facts);
        wait_all(&everyone, 4 * CHANGE_TARGET, "change", |v| {
            v.peer(&node).is_some_and(|p| p.facts == expected)
        })
        .await;
        worst_change = worst_change.max(published.elapsed());
    }

    // Kill one peer (no leave): worst time until every other peer declares it dead.
    let victim = peers.remove(count as usize / 2);
    let victim_id = victim.self_id().node_id.clone();
    let killed = Instant::now();
    drop(victim);
    let survivors: Vec<&Cluster> = peers.iter().collect();
    wait_all(&survivors, 2 * DEATH_TARGET, "dead", |v| {
        v.peer(&victim_id).is_some_and(|p| !p.live)
    })
    .await;
    let death = killed.elapsed();

    eprintln!(
        "{count} peers, gossip {:?}: joined in {joined:?}, change visible everywhere in <= {worst_change:?}, killed peer dead everywhere in {death:?}",
        defaults.gossip_interval
    );
    assert!(
        worst_change <= CHANGE_TARGET,
        "{count} peers: change took {worst_change:?}"
    );
    assert!(death <= DEATH_TARGET, "{count} peers: death took {death:?}");
}

#[tokio::test(start_paused = true)]
async fn defaults_meet_the_targets_with_3_peers() {
    measure(3).await;
}

#[tokio::test(start_paused = true)]
async fn defaults_meet_the_targets_with_10_peers() {
    measure(10).await;
}
