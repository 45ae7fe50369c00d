//! Cluster behaviour on chitchat's in-memory transport, with tokio's paused clock: time
//! advances only when every task waits, so these run in milliseconds and report the
//! protocol's own latencies (in rounds of `ROUND` = 100 ms).

mod common;

use std::time::Duration;

use common::*;
use satmesh_cluster::transport::{ChannelTransport, UdpTransport};
use satmesh_cluster::{Cluster, ClusterSettings, PeerState, ring_members};

const S: Duration = Duration::from_secs(1);

fn all(peers: &[Cluster]) -> Vec<&Cluster> {
    peers.iter().collect()
}

#[tokio::test(start_paused = true)]
async fn three_peers_converge() {
    let transport = ChannelTransport::default();
    let peers = start(3, &transport).await;
    let took = wait_all(&all(&peers), 5 * S, "3 peers", |v| sees_live(v, &[1, 2, 3])).await;
    eprintln!("3 peers converged in {took:?} (rounds of {ROUND:?})");
    let view = peers[0].view();
    assert_eq!(view.peers.len(), 3);
    assert!(
        view.peers.windows(2).all(|w| w[0].id < w[1].id),
        "sorted by id"
    );
    assert_eq!(view.self_peer().unwrap().id, *peers[0].self_id());
    assert_eq!(view.totals().connection_limit, 3 * 4000);
    assert!(view.ring_agreed());
}

#[tokio::test(start_paused = true)]
async fn ten_peers_converge_and_a_change_reaches_all() {
    let transport = ChannelTransport::default();
    let peers = start(10, &transport).await;
    let ids: Vec<u16> = (1..=10).collect();
    let took = wait_all(&all(&peers), 10 * S, "10 peers", |v| sees_live(v, &ids)).await;
    eprintln!("10 peers converged in {took:?}");

    let mut changed = peers[6].facts();
    changed.connections = 1234;
    changed.ring_digest = 0xfeed;
    peers[6].publish(changed);
    let took = wait_all(&all(&peers), 5 * S, "change from peer 7", |v| {
        v.peer("peer-7")
            .is_some_and(|p| p.facts.connections == 1234 && p.facts.ring_digest == 0xfeed)
    })
    .await;
    eprintln!("a change reached 10 peers in {took:?}");
    assert!(
        !peers[0].view().ring_agreed(),
        "peer 7 now routes with another ring"
    );
}

#[tokio::test(start_paused = true)]
async fn a_small_count_change_goes_out_after_the_publish_interval() {
    let transport = ChannelTransport::default();
    let mut peers = Vec::new();
    for n in 1..=2 {
        let settings = ClusterSettings {
            publish_interval: Some(2 * S),
            ..settings(n)
        };
        peers.push(join(n, settings, &transport).await);
    }
    let mut facts = peers[1].facts();
    facts.connections = 1000;
    peers[1].publish(facts.clone());
    wait_all(&all(&peers), 5 * S, "1000 connections", |v| {
        v.peer("peer-2")
            .is_some_and(|p| p.facts.connections == 1000)
    })
    .await;

    facts.connections = 1001;
    peers[1].publish(facts);
    let mut rx = peers[0].watch();
    let started = tokio::time::Instant::now();
    wait_for(&mut rx, 5 * S, "1001 connections", |v| {
        v.peer("peer-2")
            .is_some_and(|p| p.facts.connections == 1001)
    })
    .await;
    let took = started.elapsed();
    assert!(
        took >= S,
        "a +1 change went out after {took:?}, before its interval"
    );
}

#[tokio::test(start_paused = true)]
async fn a_partition_and_its_heal() {
    let transport = ChannelTransport::default();
    let peers = start(3, &transport).await;
    wait_all(&all(&peers), 5 * S, "3 peers", |v| sees_live(v, &[1, 2, 3])).await;

    for other in [1, 2] {
        transport.remove_link(addr(3), addr(other)).await;
    }
    let took = wait_all(&all(&peers[..2]), 10 * S, "3 cut off", |v| {
        is_live(v, 3) == Some(false)
    })
    .await;
    eprintln!("a cut-off peer was declared dead in {took:?}");
    wait_all(&[&peers[2]], 10 * S, "1 and 2 cut off", |v| {
        is_live(v, 1) == Some(false) && is_live(v, 2) == Some(false)
    })
    .await;
    assert!(
        ring_members(&peers[2].view()).is_empty(),
        "alone, peer 3 has no OAP view"
    );

    // Both sides change while apart.
    let mut facts = peers[2].facts();
    facts.connections = 77;
    peers[2].publish(facts);
    let mut facts = peers[0].facts();
    facts.state = PeerState::Draining;
    peers[0].publish(facts);

    for other in [1, 2] {
        transport.add_link(addr(3), addr(other)).await;
    }
    let took = wait_all(&all(&peers), 10 * S, "healed", |v| {
        sees_live(v, &[1, 2, 3])
            && v.peer("peer-3").is_some_and(|p| p.facts.connections == 77)
            && v.peer("peer-1")
                .is_some_and(|p| p.facts.state == PeerState::Draining)
    })
    .await;
    eprintln!("a healed partition converged in {took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_peer_replaces_its_former_self() {
    let transport = ChannelTransport::default();
    let mut peers = start(3, &transport).await;
    wait_all(&all(&peers), 5 * S, "3 peers", |v| sees_live(v, &[1, 2, 3])).await;

    let old = peers.pop().unwrap();
    let old_generation = old.self_id().generation;
    old.shutdown().await.unwrap();
    let restarted = join(3, settings(3), &transport).await;
    let new_generation = restarted.self_id().generation;
    assert!(new_generation > old_generation);
    peers.push(restarted);

    wait_all(&all(&peers), 5 * S, "new generation", |v| {
        let incarnations: Vec<_> = v
            .peers
            .iter()
            .filter(|p| p.id.node_id == "peer-3")
            .collect();
        incarnations.len() == 1
            && incarnations[0].id.generation == new_generation
            && incarnations[0].live
    })
    .await;
    // The old incarnation, now dead in chitchat, never reappears in views.
    tokio::time::sleep(5 * S).await;
    for peer in &peers {
        let view = peer.view();
        let entries: Vec<_> = view
            .peers
            .iter()
            .filter(|p| p.id.node_id == "peer-3")
            .collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id.generation, new_generation);
        assert!(entries[0].live);
    }
}

#[tokio::test(start_paused = true)]
async fn a_leaving_peer_shows_draining_then_dies_then_is_forgotten() {
    let transport = ChannelTransport::default();
    let mut peers = Vec::new();
    for n in 1..=3 {
        let settings = ClusterSettings {
            dead_node_grace_period: 4 * S,
            ..settings(n)
        };
        peers.push(join(n, settings, &transport).await);
    }
    wait_all(&all(&peers), 5 * S, "3 peers", |v| sees_live(v, &[1, 2, 3])).await;

    let leaver = peers.pop().unwrap();
    let mut watchers: Vec<_> = peers.iter().map(|p| p.watch()).collect();
    let leaving = tokio::spawn(leaver.leave());
    for rx in &mut watchers {
        wait_for(rx, 2 * S, "draining", |v| {
            v.peer("peer-3")
                .is_some_and(|p| p.live && p.facts.state == PeerState::Draining)
        })
        .await;
    }
    leaving.await.unwrap().unwrap();
    for rx in &mut watchers {
        wait_for(rx, 5 * S, "dead", |v| is_live(v, 3) == Some(false)).await;
    }
    for rx in &mut watchers {
        wait_for(rx, 10 * S, "forgotten", |v| v.peer("peer-3").is_none()).await;
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_alone_do_not_wake_the_change_stream() {
    let transport = ChannelTransport::default();
    let peers = start(3, &transport).await;
    wait_all(&all(&peers), 5 * S, "3 peers", |v| sees_live(v, &[1, 2, 3])).await;
    tokio::time::sleep(S).await;
    let mut rx = peers[0].watch();
    rx.borrow_and_update();
    let woke = tokio::time::timeout(3 * S, rx.changed()).await;
    assert!(woke.is_err(), "the change stream fired without a change");
    // ... while last-seen ages stay fresh.
    let view = peers[0].view();
    assert!(
        view.peers.iter().all(|p| p.last_seen_ms_ago < 1000),
        "{view:#?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_without_seeds_runs_alone() {
    let transport = ChannelTransport::default();
    let mut facts = facts(1);
    facts.oap_health = [("10.2.0.1:11800".to_string(), true)].into();
    let alone = Cluster::join(settings(1), facts, &transport).await.unwrap();
    let view = alone.view();
    assert_eq!(view.peers.len(), 1);
    assert!(view.peers[0].is_self && view.peers[0].live);
    assert_eq!(ring_members(&view), vec!["10.2.0.1:11800".to_string()]);
}

#[tokio::test]
async fn join_rejects_bad_settings_without_retry() {
    let settings = ClusterSettings {
        seeds: vec!["no-port".into()],
        ..settings(1)
    };
    let error = Cluster::join(settings, facts(1), &ChannelTransport::default())
        .await
        .err()
        .expect("a seed without a port is refused");
    assert!(!error.is_retryable(), "{error}");
}

/// The real UDP transport, port 0: two peers on loopback find each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_over_udp_on_loopback() {
    let first = ClusterSettings {
        gossip_listen: "127.0.0.1:0".parse().unwrap(),
        ..settings(1)
    };
    let first = Cluster::join(first, facts(1), &UdpTransport).await.unwrap();
    assert_ne!(first.gossip_addr().port(), 0);
    // A DNS seed, re-resolved, and an advertise address derived from the route to it.
    let second = ClusterSettings {
        gossip_listen: "0.0.0.0:0".parse().unwrap(),
        seeds: vec![format!("localhost:{}", first.gossip_addr().port())],
        seed_refresh: Duration::from_millis(200),
        ..settings(2)
    };
    let second = Cluster::join(second, facts(2), &UdpTransport)
        .await
        .unwrap();
    assert!(
        second.gossip_addr().ip().is_loopback(),
        "{}",
        second.gossip_addr()
    );
    wait_all(&[&first, &second], 10 * S, "over udp", |v| {
        sees_live(v, &[1, 2])
    })
    .await;
    second.leave().await.unwrap();
    first.shutdown().await.unwrap();
}
