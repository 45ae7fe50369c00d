//! Cluster-aware shedding with real satmesh processes: a tier that scales out from one
//! peer rebalances a synthetic fleet of 300 agents that dial the peers
//! first-address-first, without losing a message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use satmesh_tools::load::{self, LoadSpec, Progress};
use tokio_util::sync::CancellationToken;

use crate::support::{admin::*, processes::*, tier::*};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_rebalances_a_first_address_fleet_without_loss() {
    scale_out(Dial::FirstAddress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_rebalances_a_fleet_behind_a_virtual_ip_without_loss() {
    scale_out(Dial::VirtualIp).await;
}

/// How the fleet reaches the tier.
#[derive(Clone, Copy, PartialEq)]
enum Dial {
    /// Every peer's address, first one first (a DNS name with several records).
    FirstAddress,
    /// One address, a random ready peer per connection (a Kubernetes ClusterIP); the
    /// peers do not turn connections away (`balance.turn_away: false`).
    VirtualIp,
}

/// Every agent on one peer, then two more peers: the tier rebalances, settles, and loses
/// nothing.
async fn scale_out(dial: Dial) {
    let sinks = [sink(&[]).await, sink(&[]).await];
    let oaps: Vec<SocketAddr> = sinks.iter().map(|s| s.grpc).collect();
    let grpc: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let gossip: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let envs: &[(&str, &str)] = match dial {
        Dial::FirstAddress => &[],
        Dial::VirtualIp => &[("SATMESH__BALANCE__TURN_AWAY", "false")],
    };

    // One peer first: every agent lands on it.
    let mut peers = vec![tier_peer(0, grpc[0], &gossip, &oaps, envs).await];
    ready(&peers[0]).await;
    let vip = Vip::start(&[&peers[0]]).await;
    let targets = match dial {
        Dial::FirstAddress => grpc
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect(),
        Dial::VirtualIp => vec![vip.addr],
    };
    const AGENTS: u64 = 300;
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let fleet = tokio::spawn(load::run(
        LoadSpec {
            targets: targets.clone(),
            connections: AGENTS as usize,
            streams_per_connection: 1,
            messages_per_call: 5,
            message_bytes: 300,
            duration: Duration::from_secs(120),
            max_messages: None,
            call_interval: Duration::from_millis(200),
            ..LoadSpec::default()
        },
        progress.clone(),
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers[0].metric("satmesh_agent_connections").await < AGENTS as f64 {
        assert!(Instant::now() < deadline, "the fleet never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Scale out to three peers and time the rebalancing.
    for (i, port) in grpc.iter().enumerate().skip(1) {
        let peer = tier_peer(i, *port, &gossip, &oaps, envs).await;
        vip.add(&peer);
        peers.push(peer);
    }
    let started = Instant::now();
    let mean = AGENTS as f64 / 3.0;
    let balanced = loop {
        let mut counts = Vec::new();
        for p in &peers {
            counts.push(p.metric("satmesh_agent_connections").await);
        }
        let max = counts.iter().cloned().fold(0.0, f64::max);
        if max / mean <= 1.25 && counts.iter().sum::<f64>() >= AGENTS as f64 {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "not balanced in 60 s: {counts:?}\nagents without an acknowledged call for 5 s:\n{}\n{}",
                progress.agents.quiet(Duration::from_secs(5)).join("\n"),
                statuses(&peers).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // It settles (5 s without a shed), then nobody sheds again: no oscillation.
    let mut moves = sheds(&peers).await;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = sheds(&peers).await;
        if now == moves {
            break;
        }
        moves = now;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still shedding 60 s after scale-out"
        );
    }
    let settled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        sheds(&peers).await,
        moves,
        "peers shed again after the tier settled"
    );
    let min_moves = AGENTS as f64 - (AGENTS as f64 / 3.0).ceil();
    assert!(
        moves <= 2.0 * min_moves,
        "{moves} moves, minimum {min_moves}"
    );

    // The HPA's view: tier totals from gossip on every peer, and the replicas they need.
    for p in &peers {
        assert_eq!(p.metric("satmesh_tier_connections").await, AGENTS as f64);
        assert_eq!(p.metric("satmesh_tier_peers").await, 3.0);
        assert_eq!(
            p.metric("satmesh_tier_desired_replicas").await,
            1.0,
            "300 / 3000 per pod"
        );
        let util = p.metric("satmesh_connection_utilisation").await;
        assert!(util > 0.0 && util < 0.05, "about 100 of 4000: {util}");
    }

    // Zero loss: everything the agents were told was accepted reaches the OAPs.
    stop.cancel();
    let _ = fleet.await;
    let acked = progress.messages.load(Ordering::Relaxed);
    for p in &mut peers {
        assert!(p.terminate(Duration::from_secs(40)).await.success());
    }
    let mut arrived = 0;
    for s in &sinks {
        arrived += method_count(
            &s.counts().await,
            satmesh_tools::load::SEGMENT_PATH,
            "messages",
        );
    }
    assert!(arrived >= acked, "acknowledged {acked}, arrived {arrived}");
    println!(
        "shedding: balanced (max/mean <= 1.25) {:.1} s after scale-out, settled by {:.1} s, {moves} moves (minimum {min_moves}), {acked} messages acknowledged, {arrived} arrived",
        balanced.as_secs_f64(),
        settled.as_secs_f64()
    );
}

async fn sheds(peers: &[Proc]) -> f64 {
    let mut total = 0.0;
    for p in peers {
        total += p
            .metric("satmesh_connections_drained_total{reason=\"shed\"}")
            .await;
    }
    total
}
