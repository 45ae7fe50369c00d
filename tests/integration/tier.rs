//! Several real satmesh peers and sinks on loopback, gossiping with the shipped defaults:
//! one ring on every peer, each service instance's meters at exactly one OAP whichever
//! peer its agent uses, and only a stopped OAP's instances move.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::support::{client::*, messages::*, processes::*};

const METERS: &str = "/skywalking.v3.MeterReportService/collect";

/// Starts `n` peers that seed each other, all in front of `oaps`.
async fn tier(n: usize, oaps: &[SocketAddr]) -> Vec<Proc> {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let seeds = seeds.join(",");
    let mut peers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let id = format!("peer-{i}");
        let listen = format!("127.0.0.1:{port}");
        let envs = [
            ("SATMESH__CLUSTER__NODE_ID", id.as_str()),
            ("SATMESH__CLUSTER__GOSSIP_LISTEN", listen.as_str()),
            ("SATMESH__CLUSTER__SEEDS", seeds.as_str()),
        ];
        peers.push(satmesh_env(oaps, "", &envs).await);
    }
    peers
}

async fn status(p: &Proc) -> Value {
    let (_, body) = p.get("/status").await;
    serde_json::from_str(&body).expect("status json")
}

/// Waits until every peer sees `peers` live peers and routes with one ring of `oaps`.
async fn converged(peers: &[Proc], oaps: &[SocketAddr], within: Duration) -> String {
    let want: Vec<String> = {
        let mut v: Vec<String> = oaps.iter().map(|a| a.to_string()).collect();
        v.sort();
        v
    };
    let start = Instant::now();
    loop {
        let mut digests = Vec::new();
        let mut ok = true;
        for p in peers {
            let s = status(p).await;
            let members: Vec<String> = s["ring"]["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_owned())
                .collect();
            ok &= s["totals"]["peers_live"] == peers.len()
                && members == want
                && s["ring"]["all_live_peers_agree"] == true;
            digests.push(s["ring"]["digest"].as_str().unwrap().to_owned());
        }
        if ok && digests.iter().all(|d| *d == digests[0]) {
            return digests[0].clone();
        }
        assert!(
            start.elapsed() < within,
            "tier did not converge in {within:?}: digests {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Meter messages of `instance`, one call, through `peer`.
async fn report(peer: &Proc, instance: usize, n: usize, round: usize) {
    let client = Client::connect(peer.grpc).await;
    let payloads: Vec<Bytes> = (0..n)
        .map(|k| meter("svc", &format!("inst-{instance}"), round * 1000 + k))
        .collect();
    client
        .stream(METERS, payloads, md(&[]))
        .await
        .expect("meters accepted");
}

/// instance -> sink index -> messages, over every sink.
async fn placement(sinks: &[&Proc]) -> BTreeMap<String, BTreeMap<usize, u64>> {
    let mut out: BTreeMap<String, BTreeMap<usize, u64>> = BTreeMap::new();
    for (i, sink) in sinks.iter().enumerate() {
        for e in sink.counts().await["meters"].as_array().unwrap() {
            let n = e["messages"].as_u64().unwrap();
            out.entry(e["instance"].as_str().unwrap().to_owned())
                .or_default()
                .insert(i, n);
        }
    }
    out
}

async fn wait_total(
    sinks: &[&Proc],
    total: u64,
    within: Duration,
) -> BTreeMap<String, BTreeMap<usize, u64>> {
    let start = Instant::now();
    loop {
        let p = placement(sinks).await;
        let got: u64 = p.values().flat_map(|m| m.values()).sum();
        if got >= total || start.elapsed() > within {
            assert_eq!(got, total, "meter messages at the sinks");
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_routing_is_one_ring_across_peers_and_survives_agent_moves_and_oap_loss() {
    let sinks = [sink(&[]).await, sink(&[]).await, sink(&[]).await];
    let oaps: Vec<SocketAddr> = sinks.iter().map(|s| s.grpc).collect();
    let peers = tier(3, &oaps).await;
    let digest = converged(&peers, &oaps, Duration::from_secs(30)).await;

    // 30 instances, each through peer i % 3, then moved to peer (i + 1) % 3.
    const INSTANCES: usize = 30;
    for i in 0..INSTANCES {
        report(&peers[i % 3], i, 5, 0).await;
    }
    for i in 0..INSTANCES {
        report(&peers[(i + 1) % 3], i, 5, 1).await;
    }
    let all: Vec<&Proc> = sinks.iter().collect();
    let before = wait_total(&all, (INSTANCES * 10) as u64, Duration::from_secs(15)).await;
    assert_eq!(before.len(), INSTANCES);
    let mut owner = BTreeMap::new();
    for (instance, at) in &before {
        assert_eq!(
            at.len(),
            1,
            "{instance} reached one sink only, whichever peer carried it: {at:?}"
        );
        assert_eq!(at.values().sum::<u64>(), 10);
        owner.insert(instance.clone(), *at.keys().next().unwrap());
    }
    let used: std::collections::BTreeSet<usize> = owner.values().copied().collect();
    assert_eq!(
        used.len(),
        3,
        "30 instances spread over all 3 OAP nodes: {owner:?}"
    );

    // Stop OAP 0: only its instances move, and each to one other node.
    let [mut gone, s1, s2] = sinks;
    gone.child.kill().await.unwrap();
    let rest = [&oaps[1], &oaps[2]].map(|a| *a);
    let moved_digest = converged(&peers, &rest, Duration::from_secs(30)).await;
    assert_ne!(moved_digest, digest);
    let survivors: Vec<&Proc> = vec![&s1, &s2];
    let base: BTreeMap<String, BTreeMap<usize, u64>> = placement(&survivors).await;
    for i in 0..INSTANCES {
        report(&peers[(i + 2) % 3], i, 5, 2).await;
    }
    let expected_total: u64 =
        base.values().flat_map(|m| m.values()).sum::<u64>() + (INSTANCES * 5) as u64;
    let after = wait_total(&survivors, expected_total, Duration::from_secs(15)).await;
    for (instance, &was) in &owner {
        let old = base.get(instance).cloned().unwrap_or_default();
        let now = &after[instance];
        let grew: Vec<usize> = now
            .iter()
            .filter(|(k, v)| old.get(k).copied().unwrap_or(0) < **v)
            .map(|(k, _)| *k + 1)
            .collect();
        assert_eq!(
            grew.len(),
            1,
            "{instance}'s new messages at exactly one node: {now:?} (was {old:?})"
        );
        if was != 0 {
            assert_eq!(
                grew[0], was,
                "{instance} was on a surviving node and must stay there"
            );
        }
    }
}
