//! Helpers for cluster tests on chitchat's in-memory transport.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use satmesh_cluster::transport::ChannelTransport;
use satmesh_cluster::{Cluster, ClusterSettings, ClusterView, PeerFacts};
use tokio::sync::watch;
use tokio::time::Instant;

/// Gossip interval of the fast test settings.
pub const ROUND: Duration = Duration::from_millis(100);

pub fn addr(n: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 10_000 + n))
}

pub fn node_id(n: u16) -> String {
    format!("peer-{n}")
}

/// Settings for peer `n` seeded with peer 1, gossiping every `round`.
pub fn settings_with(n: u16, round: Duration) -> ClusterSettings {
    ClusterSettings {
        node_id: node_id(n),
        gossip_listen: addr(n),
        seeds: if n == 1 {
            Vec::new()
        } else {
            vec![addr(1).to_string()]
        },
        cluster_id: "test".into(),
        gossip_interval: round,
        ..ClusterSettings::default()
    }
}

pub fn settings(n: u16) -> ClusterSettings {
    settings_with(n, ROUND)
}

pub fn facts(n: u16) -> PeerFacts {
    PeerFacts {
        grpc_addr: format!("10.1.0.{n}:11800"),
        admin_addr: format!("10.1.0.{n}:1234"),
        connection_limit: 4000,
        ..PeerFacts::default()
    }
}

pub async fn join(n: u16, settings: ClusterSettings, transport: &ChannelTransport) -> Cluster {
    Cluster::join(settings, facts(n), transport)
        .await
        .expect("join on the in-memory transport")
}

/// Peers 1..=count, each seeded with peer 1.
pub async fn start(count: u16, transport: &ChannelTransport) -> Vec<Cluster> {
    let mut peers = Vec::new();
    for n in 1..=count {
        peers.push(join(n, settings(n), transport).await);
    }
    peers
}

/// Waits until `done` holds for the view, or panics after `limit` with the last view.
pub async fn wait_for(
    rx: &mut watch::Receiver<Arc<ClusterView>>,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&ClusterView) -> bool,
) -> Arc<ClusterView> {
    let deadline = Instant::now() + limit;
    loop {
        let view = rx.borrow_and_update().clone();
        if done(&view) {
            return view;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("{what}: the cluster stopped"),
            Err(_) => panic!("{what}: not within {limit:?}; last view: {view:#?}"),
        }
    }
}

/// Waits until `done` holds on every peer's view; returns the time it took.
pub async fn wait_all(
    peers: &[&Cluster],
    limit: Duration,
    what: &str,
    done: impl Fn(&ClusterView) -> bool + Clone,
) -> Duration {
    let started = Instant::now();
    for peer in peers {
        let mut rx = peer.watch();
        let what = format!("{what} (seen by {})", peer.self_id().node_id);
        let left = limit.saturating_sub(started.elapsed());
        wait_for(&mut rx, left, &what, done.clone()).await;
    }
    started.elapsed()
}

/// Every peer in `ids` is in the view, live, with the facts it joined with.
pub fn sees_live(view: &ClusterView, ids: &[u16]) -> bool {
    ids.iter().all(|&n| {
        view.peer(&node_id(n))
            .is_some_and(|p| p.live && p.facts.grpc_addr == facts(n).grpc_addr)
    })
}

pub fn is_live(view: &ClusterView, n: u16) -> Option<bool> {
    view.peer(&node_id(n)).map(|p| p.live)
}
