//! Scale-in without loss, with real satmesh processes: three peers behind an L4 virtual
//! IP carry a synthetic fleet; one gets SIGTERM. The tier hears `draining` before any of
//! its agents is sent away, it exits within the pod's grace period, its agents end up on
//! the other peers, and every acknowledged message reaches an OAP.
//!
//! The drain window is 3 s here (the shipped default is 10 s) to keep the test short;
//! `SCALE_IN_DRAIN_WINDOW=10s` (or any duration) runs it with another window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use satmesh_tools::load::{self, LoadSpec, Progress};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{admin::*, processes::*, tier::*};

const AGENTS: u64 = 150;
const MESSAGES_PER_CALL: u64 = 5;
/// The peer that is scaled in.
const VICTIM: usize = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_the_tier_first_then_moves_every_agent_without_loss() {
    let window = std::env::var("SCALE_IN_DRAIN_WINDOW").unwrap_or_else(|_| "3s".into());
    let window_secs = humantime::parse_duration(&window)
        .expect("SCALE_IN_DRAIN_WINDOW is a duration")
        .as_secs();
    let (grace, pre_stop) = pod_grace_period();
    // What a pod has between SIGTERM and SIGKILL: the preStop sleep runs first.
    let budget = grace - pre_stop;

    let sinks = [sink(&[]).await, sink(&[]).await];
    let oaps: Vec<SocketAddr> = sinks.iter().map(|s| s.grpc).collect();
    let grpc: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let gossip: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    // Behind a virtual IP a peer does not turn connections away (see `balance.turn_away`).
    let envs = [
        ("SATMESH__SHUTDOWN__DRAIN_WINDOW", window.as_str()),
        ("SATMESH__BALANCE__TURN_AWAY", "false"),
    ];
    let mut peers = Vec::new();
    for (i, port) in grpc.iter().enumerate() {
        peers.push(tier_peer(i, *port, &gossip, &oaps, &envs).await);
    }
    let vip = Vip::start(&peers.iter().collect::<Vec<_>>()).await;
    let target = vip.addr;
    for p in &peers {
        ready(p).await;
    }
    let formed = Instant::now() + Duration::from_secs(20);
    for p in &peers {
        while status(p.admin)
            .await
            .map(|s| s["totals"]["peers_ready"].clone())
            != Some(3.into())
        {
            assert!(Instant::now() < formed, "the tier never formed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The fleet runs for a fixed time, so every call it starts ends and is counted: what
    // it was told was taken is exact. Long enough for the scale-in and a quiet tail.
    let progress = Arc::new(Progress::default());
    let fleet = tokio::spawn(load::run(
        LoadSpec {
            targets: vec![target],
            connections: AGENTS as usize,
            streams_per_connection: 1,
            messages_per_call: MESSAGES_PER_CALL as usize,
            message_bytes: 300,
            duration: Duration::from_secs(22 + window_secs),
            max_messages: None,
            call_interval: Duration::from_millis(200),
            ..LoadSpec::default()
        },
        progress.clone(),
        CancellationToken::new(),
    ));
    let fleet_started = Instant::now();
    let deadline = fleet_started + Duration::from_secs(10);
    while total(&peers, "satmesh_agent_connections").await < AGENTS as f64 {
        assert!(Instant::now() < deadline, "the fleet never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let shedding settle (no shed for 2 s, at most until 10 s in), so only the shutdown
    // moves agents below.
    let mut sheds = total(&peers, SHED).await;
    let deadline = fleet_started + Duration::from_secs(10);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = total(&peers, SHED).await;
        if now == sheds {
            break;
        }
        sheds = now;
    }
    let on_victim = peers[VICTIM].metric("satmesh_agent_connections").await;
    let failed_before = progress.errors.load(Ordering::Relaxed);
    assert!(on_victim > 0.0, "no agent on the peer to scale in");

    // SIGTERM, then poll every 50 ms: the others' view of the victim, and the victim's
    // readiness, listener, GOAWAYs and connections, until it exits.
    let victim = peers.remove(VICTIM);
    let (victim_admin, victim_grpc) = (victim.admin, victim.grpc);
    let victim_id = format!("peer-{VICTIM}");
    let signalled = Instant::now();
    let exited = terminate(victim);
    let mut seen = Seen::default();
    let (code, exit) = loop {
        let at = signalled.elapsed();
        let probe = seen.refused.is_none();
        let (views, metrics, readyz, refused) = tokio::join!(
            futures_util::future::join_all(peers.iter().map(|p| status(p.admin))),
            get(victim_admin, "/metrics"),
            get(victim_admin, "/readyz"),
            async move { probe && tokio::net::TcpStream::connect(victim_grpc).await.is_err() },
        );
        for (i, view) in views.iter().enumerate() {
            if seen.draining[i].is_none() && state_of(view.as_ref(), &victim_id) == "draining" {
                seen.draining[i] = Some(at);
            }
        }
        if let Some((_, body)) = &metrics {
            if seen.goaway.is_none() && sample(body, SHUTDOWN_GOAWAYS) > 0.0 {
                seen.goaway = Some(at);
            }
            if seen.drop.is_none() && sample(body, "satmesh_agent_connections") < on_victim {
                seen.drop = Some(at);
            }
        }
        if seen.not_ready.is_none() && readyz.is_some_and(|(code, _)| code == 503) {
            seen.not_ready = Some(at);
        }
        if refused {
            seen.refused = Some(at);
        }
        if exited.is_finished() {
            break exited.await.unwrap();
        }
        assert!(
            at < Duration::from_secs(budget),
            "the peer did not exit within the pod's {budget} s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.success(), "the terminated peer exited with {code:?}");

    // (a) The tier knew before the first GOAWAY, and before any connection left.
    let told = seen
        .draining
        .iter()
        .map(|t| t.expect("a remaining peer never saw the victim draining"))
        .max()
        .unwrap();
    let goaway = seen.goaway.expect("no shutdown GOAWAY seen");
    let drop = seen
        .drop
        .expect("the victim's connection count never dropped");
    assert!(
        told <= goaway,
        "GOAWAY at {goaway:?} before the tier knew at {told:?}"
    );
    assert!(
        told <= drop,
        "connections left at {drop:?} before the tier knew at {told:?}"
    );
    let not_ready = seen.not_ready.expect("/readyz never answered 503");
    let refused = seen.refused.expect("new connections were never refused");
    assert!(not_ready <= goaway && refused <= goaway, "{seen:?}");
    // (b) Exit within the pod's grace period.
    assert!(exit < Duration::from_secs(budget), "exit at {exit:?}");

    // (c) Every agent ends up on the remaining peers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while total(&peers, "satmesh_agent_connections").await < AGENTS as f64 {
        assert!(
            Instant::now() < deadline,
            "agents missing 10 s after the exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_moved = signalled.elapsed();
    assert!(
        !fleet.is_finished(),
        "the fleet ended before the scale-in did; lengthen its duration"
    );

    // (d) Zero loss: the fleet ends by itself, the remaining peers flush on SIGTERM.
    let report = fleet.await.unwrap();
    let acked = progress.messages.load(Ordering::Relaxed);
    let failed_calls = progress.errors.load(Ordering::Relaxed);
    let mut rest = Vec::new();
    for mut p in peers {
        rest.push(tokio::spawn(async move {
            p.terminate(Duration::from_secs(budget)).await
        }));
    }
    for r in rest {
        assert!(r.await.unwrap().success());
    }
    let mut arrived = 0;
    for s in &sinks {
        arrived += method_count(&s.counts().await, load::SEGMENT_PATH, "messages");
    }
    assert!(arrived >= acked, "acknowledged {acked}, arrived {arrived}");
    // More may arrive than was acknowledged only for calls the agent saw fail (a real
    // agent resends or drops those).
    assert!(
        arrived - acked <= failed_calls * MESSAGES_PER_CALL,
        "acknowledged {acked}, arrived {arrived}, failed calls {failed_calls}: {:?}",
        report.errors_by_status
    );
    let ms = |d: Duration| d.as_millis();
    println!(
        "scale-in (drain_window {window}): not ready {} ms, refusing {} ms, draining seen by both peers {} ms, first GOAWAY {} ms, first connection gone {} ms, exit {} ms (pod budget {budget} s = grace {grace} s - preStop {pre_stop} s), {on_victim} connections moved (all {AGENTS} on 2 peers by {} ms), {acked} messages acknowledged, {arrived} arrived; failed calls {failed_calls} ({} after SIGTERM) {:?}",
        ms(not_ready),
        ms(refused),
        ms(told),
        ms(goaway),
        ms(drop),
        ms(exit),
        ms(all_moved),
        failed_calls - failed_before,
        report.errors_by_status,
    );
}

const SHED: &str = "satmesh_connections_drained_total{reason=\"shed\"}";
const SHUTDOWN_GOAWAYS: &str = "satmesh_connections_drained_total{reason=\"shutdown\"}";

/// First times (from SIGTERM) each observation was made.
#[derive(Debug, Default)]
struct Seen {
    /// Each remaining peer's `/status` shows the victim `draining`.
    draining: [Option<Duration>; 2],
    /// The victim's `/readyz` answers 503.
    not_ready: Option<Duration>,
    /// A TCP connect to the victim's agent port fails.
    refused: Option<Duration>,
    /// The victim has sent its first shutdown GOAWAY.
    goaway: Option<Duration>,
    /// The victim's open connections fell below their count at SIGTERM.
    drop: Option<Duration>,
}

/// Sends SIGTERM; the task ends with the exit status and when it came.
fn terminate(mut p: Proc) -> tokio::task::JoinHandle<(std::process::ExitStatus, Duration)> {
    let pid = p.child.id().expect("running").to_string();
    let signalled = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    tokio::spawn(async move {
        let code = p.child.wait().await.expect("wait");
        (code, signalled.elapsed())
    })
}

/// An admin GET that may fail (the victim's admin listener closes as it exits).
async fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    let r = client
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.ok()?))
}

async fn status(admin: SocketAddr) -> Option<Value> {
    let (_, body) = get(admin, "/status").await?;
    serde_json::from_str(&body).ok()
}

/// The gossiped state of `node_id` in a `/status` document ("" when absent).
fn state_of<'a>(status: Option<&'a Value>, node_id: &str) -> &'a str {
    status
        .and_then(|s| s["peers"].as_array())
        .and_then(|peers| peers.iter().find(|p| p["node_id"] == node_id))
        .and_then(|p| p["state"].as_str())
        .unwrap_or("")
}

/// One sample of a Prometheus text body, 0 when absent.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn total(peers: &[Proc], sample: &str) -> f64 {
    let mut sum = 0.0;
    for p in peers {
        sum += p.metric(sample).await;
    }
    sum
}

/// `terminationGracePeriodSeconds` and the preStop sleep of the Deployment in
/// deploy/kubernetes/base, in seconds.
fn pod_grace_period() -> (u64, u64) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/base/deployment.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read deployment.yaml");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let number =
        |line: &str, key: &str| -> Option<u64> { line.strip_prefix(key)?.trim().parse().ok() };
    let grace = lines
        .iter()
        .find_map(|l| number(l, "terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds in deployment.yaml");
    let pre_stop = lines
        .iter()
        .position(|l| *l == "preStop:")
        .and_then(|i| {
            lines[i..]
                .iter()
                .take(4)
                .find_map(|l| number(l, "seconds:"))
        })
        .unwrap_or(0);
    (grace, pre_stop)
}
