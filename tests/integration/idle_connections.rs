//! Idle agents (issue 5): 2,000 HTTP/2 connections through one peer, each making one
//! keepAlive call (as an agent's first heartbeat) and then going quiet. Every one must be
//! established and served, the peer must count them all, their calls must reach the OAP,
//! none may be closed while held, and the memory they cost the peer must stay under a
//! generous 64 KiB each (measured: about 33 KiB, see README "Idle connections"), so a
//! regression to several times that fails here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use satmesh_tools::load::KEEPALIVE_PATH;
use satmesh_tools::load::idle::{self, IdleProgress, IdleSpec};
use tokio_util::sync::CancellationToken;

use crate::support::{admin, processes};

const CONNECTIONS: usize = 2000;

/// Resident memory of a process, in KiB (`VmRSS` of /proc/PID/status).
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

fn spec(target: std::net::SocketAddr, connections: usize, hold: Duration) -> IdleSpec {
    IdleSpec {
        target,
        connections,
        hold,
        call: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_are_all_served_and_held() {
    let sink = processes::sink(&[]).await;
    let peer = processes::satmesh_env(
        &[sink.grpc],
        "",
        &[("SATMESH__SERVER__MAX_CONNECTIONS", "5000")],
    )
    .await;
    admin::ready(&peer).await;
    let pid = peer.child.id().expect("peer running");

    // Warm up (runtime workers, the upstream connection, first batches), then measure.
    let warm = idle::run(
        spec(peer.grpc, 50, Duration::ZERO),
        Arc::default(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(warm.served, 50, "warm-up: {warm:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = vm_rss_kib(pid);

    let progress = Arc::new(IdleProgress::default());
    let stop = CancellationToken::new();
    let run = tokio::spawn(idle::run(
        spec(peer.grpc, CONNECTIONS, Duration::from_secs(120)),
        progress.clone(),
        stop.clone(),
    ));
    let started = Instant::now();
    while progress.settled.load(Ordering::Relaxed) < CONNECTIONS as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {progress:?} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        progress.established.load(Ordering::Relaxed),
        CONNECTIONS as u64,
        "{progress:?}"
    );
    assert_eq!(
        progress.served.load(Ordering::Relaxed),
        CONNECTIONS as u64,
        "{progress:?}"
    );

    // The peer counts every connection as open while they idle.
    let mut open = 0.0;
    for _ in 0..100 {
        open = peer.metric("satmesh_agent_connections").await;
        if open == CONNECTIONS as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        open, CONNECTIONS as f64,
        "connections the peer counts as open"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let with = vm_rss_kib(pid);
    let per_connection = with.saturating_sub(before) as f64 / CONNECTIONS as f64;
    eprintln!(
        "peer VmRSS {before} KiB -> {with} KiB with {CONNECTIONS} idle connections: {per_connection:.1} KiB each"
    );
    assert!(
        per_connection < 64.0,
        "an idle connection costs the peer {per_connection:.1} KiB"
    );

    // Every heartbeat reached the OAP exactly once. 2,050 keepAlives at once go upstream
    // as concurrent unary calls on one connection; their answers once piled up past
    // h2's small-DATA-frame allowance, satmesh's client sent the OAP a GOAWAY
    // (ENHANCE_YOUR_CALM) and re-sent calls that had arrived: 10-35 % duplicates.
    let sent = (CONNECTIONS + 50) as u64;
    let counts = admin::wait_for(&sink, Duration::from_secs(10), |c| {
        admin::method_count(c, KEEPALIVE_PATH, "messages") >= sent
    })
    .await;
    let arrived = admin::method_count(&counts, KEEPALIVE_PATH, "messages");
    eprintln!("keepAlive messages: {sent} sent, {arrived} arrived at the sink");
    assert_eq!(arrived, sent, "heartbeats arrived at the sink");

    stop.cancel();
    let report = run.await.expect("idle run");
    assert_eq!(report.closed_early, 0, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");

    // And they are all gone from the peer once closed.
    for _ in 0..100 {
        open = peer.metric("satmesh_agent_connections").await;
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0, "connections left open on the peer");
}

#[tokio::test]
async fn a_refused_target_counts_every_connection_failed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("addr");
    drop(listener);
    let report = idle::run(
        spec(target, 20, Duration::ZERO),
        Arc::default(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!((report.established, report.failed), (0, 20), "{report:?}");
    assert_eq!(report.failures.get("connect"), Some(&20), "{report:?}");
}
