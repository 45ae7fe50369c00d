//! `Tier::drain` and `Tier::leave`: two tiers gossiping on loopback UDP (50 ms rounds),
//! and a tier that runs alone.

use std::time::Duration;

use super::*;
use crate::frontdoor::LifecycleSettings;
use crate::upstream::Health;
use crate::upstream::conn::ConnectSettings;

const ROUND: Duration = Duration::from_millis(50);

fn inputs() -> TierInputs {
    let metrics = Arc::new(Metrics::new());
    let pool = Pool::new(
        ConnectSettings {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        },
        Health {
            eject_after: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        },
        metrics.clone(),
        TaskTracker::new(),
    );
    TierInputs {
        pool,
        connections: Connections::new(LifecycleSettings::default(), None),
        metrics,
        grpc_addr: "127.0.0.1:11800".parse().unwrap(),
        admin_addr: "127.0.0.1:1234".parse().unwrap(),
        connection_limit: 0,
        balance: None,
    }
}

async fn gossiping(node_id: &str, seeds: Vec<String>) -> Tier {
    let settings = ClusterSettings {
        node_id: node_id.into(),
        gossip_listen: "127.0.0.1:0".parse().unwrap(),
        seeds,
        gossip_interval: ROUND,
        ..Default::default()
    };
    start(node_id, Some(settings)).await
}

async fn start(node_id: &str, settings: Option<ClusterSettings>) -> Tier {
    let stop = CancellationToken::new();
    Tier::start(
        node_id.into(),
        settings,
        inputs(),
        &TaskTracker::new(),
        stop,
    )
    .await
    .unwrap()
}

/// Waits (bounded) until `tier`'s view of `node_id` satisfies `f`.
async fn until(tier: &Tier, node_id: &str, f: impl Fn(&Peer) -> bool) {
    let mut view = tier.watch();
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        view.wait_for(|v| v.peers.iter().any(|p| p.id.node_id == node_id && f(p))),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    assert!(seen, "{node_id} never as expected in {:?}", tier.view());
}

#[tokio::test]
async fn alone_drain_publishes_draining_without_waiting() {
    let tier = start("solo", None).await;
    let started = Instant::now();
    assert_eq!(tier.drain().await, Drained::Alone);
    assert!(started.elapsed() < ROUND);
    until(&tier, "solo", |p| p.facts.state == PeerState::Draining).await;
    tier.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_two_rounds_for_live_peers_and_leave_does_not_wait_again() {
    let a = gossiping("a", Vec::new()).await;
    let seed = a.view().peers[0].gossip_addr.to_string();
    let b = gossiping("b", vec![seed]).await;
    until(&a, "b", |p| p.live).await;
    until(&b, "a", |p| p.live && p.facts.state == PeerState::Ready).await;

    let started = Instant::now();
    let drained = a.drain().await;
    let took = started.elapsed();
    assert_eq!(
        drained,
        Drained::Told {
            peers: 1,
            waited: 2 * ROUND
        }
    );
    assert!(took >= 2 * ROUND, "{took:?}");
    until(&b, "a", |p| p.facts.state == PeerState::Draining).await;

    let started = Instant::now();
    a.leave().await;
    assert!(
        started.elapsed() < 2 * ROUND,
        "leave waited again: {:?}",
        started.elapsed()
    );
    b.leave().await;
}
