//! The disk queue through the real binary: what agents were told OK about survives a
//! SIGKILL, with the OAP down (everything on disk) and with it up (mid-flow); a second
//! satmesh on the same directory exits 2 naming it; a memory-queue peer delivers what a
//! disk-queue run left. Counted at the sink, bytes compared.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;

use crate::support::{admin::*, agents::*, client::*, messages::*, processes::*};

const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";

fn disk_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("SATMESH__PIPELINE__QUEUE", "disk".to_owned()),
        ("SATMESH__PIPELINE__DISK__PATH", dir.display().to_string()),
        // Small segments, so a run spans several and deletes some.
        (
            "SATMESH__PIPELINE__DISK__SEGMENT_BYTES",
            "262144".to_owned(),
        ),
    ]
}

async fn peer(oap: std::net::SocketAddr, envs: &[(&'static str, String)]) -> Proc {
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    satmesh_env(&[oap], "upstream:\n  backoff_max: 200ms\n", &envs).await
}

async fn kill9(p: &mut Proc) {
    p.child.start_kill().expect("SIGKILL");
    tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("killed in time")
        .expect("wait");
}

/// `callers` synthetic agents on `client`'s connection, reporting at once: caller `n`
/// sends `calls` client-streams of `per_call` segments (`pad` bytes of padding) of
/// `service`, each call from an instance of its own, `{tag}-{n}-{call}`, and stops at the
/// first call not answered OK. Each task returns the instances it was told OK about.
fn callers(
    client: &Client,
    service: &'static str,
    tag: &str,
    callers: usize,
    (calls, per_call, pad): (usize, usize, usize),
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..callers)
        .map(|n| {
            let (client, tag) = (client.clone(), format!("{tag}-{n}"));
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for c in 0..calls {
                    let instance = format!("{tag}-{c}");
                    let batch: Vec<Bytes> = (0..per_call)
                        .map(|i| segment(service, &instance, i, pad))
                        .collect();
                    match client.stream(SEGMENTS, batch, md(&[])).await {
                        Ok(_) => acknowledged.push(instance),
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect()
}

/// Messages of `signal` (`segments`, `logs`, `meters`) in the sink's `counts`, by
/// service instance.
fn by_instance(counts: &serde_json::Value, signal: &str) -> HashMap<String, u64> {
    let mut arrived = HashMap::new();
    for e in counts[signal].as_array().into_iter().flatten() {
        if let (Some(instance), Some(n)) = (e["instance"].as_str(), e["messages"].as_u64()) {
            *arrived.entry(instance.to_owned()).or_default() += n;
        }
    }
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_acknowledged_with_the_oap_down_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let mut first = peer(sink.grpc, &disk_env(dir.path())).await;
    let client = Client::connect(first.grpc).await;
    let acknowledged = send_segments(&client, "down", 40, 25).await;
    kill9(&mut first).await;
    assert_eq!(method_count(&sink.counts().await, SEGMENTS, "messages"), 0);

    sink.set_faults(json!({})).await;
    let second = peer(sink.grpc, &disk_env(dir.path())).await;
    assert_all_arrived(&sink, SEGMENTS, &acknowledged, Duration::from_secs(20)).await;
    assert_eq!(
        second.metric("satmesh_disk_records_replayed_total").await,
        acknowledged.len() as f64
    );
    assert_eq!(
        second.metric("satmesh_disk_records_corrupt_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_in_the_middle_of_live_flow_loses_nothing_acknowledged() {
    for fsync in ["always", "interval"] {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(&[]).await;
        let mut envs = disk_env(dir.path());
        envs.push(("SATMESH__PIPELINE__DISK__FSYNC", fsync.to_owned()));
        let mut first = peer(sink.grpc, &envs).await;
        ready(&first).await;
        let client = Client::connect(first.grpc).await;
        // Four agents report at once, each call from an instance of its own; the kill
        // comes while their calls are in flight.
        let agents = callers(&client, "svc", "live", 4, (2000, 10, 200));
        let deadline = Instant::now() + Duration::from_secs(20);
        while method_count(&sink.counts().await, SEGMENTS, "messages") < 2000 {
            assert!(
                Instant::now() < deadline,
                "no flow reached the sink ({fsync})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill9(&mut first).await;
        let mut acknowledged = Vec::new();
        for agent in agents {
            let calls = agent.await.unwrap();
            assert!(
                !calls.is_empty(),
                "an agent was acknowledged nothing ({fsync})"
            );
            acknowledged.extend(calls);
        }
        let second = peer(sink.grpc, &envs).await;
        // At least once: all 10 messages of every acknowledged call arrived (more only
        // from batches the OAP took whose acknowledgement the kill cut off).
        let deadline = Instant::now() + Duration::from_secs(30);
        let missing = loop {
            let arrived = by_instance(&sink.counts().await, "segments");
            let missing: Vec<&String> = acknowledged
                .iter()
                .filter(|i| arrived.get(*i).copied().unwrap_or(0) < 10)
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                break missing.len();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let arrived = method_count(&sink.counts().await, SEGMENTS, "messages");
        println!(
            "fsync {fsync}: {} calls ({} messages) acknowledged before the kill, {arrived} messages arrived, {} replayed",
            acknowledged.len(),
            acknowledged.len() * 10,
            second.metric("satmesh_disk_records_replayed_total").await
        );
        assert_eq!(
            missing, 0,
            "acknowledged calls missing at the sink ({fsync})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_satmesh_on_the_same_directory_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&[]).await;
    let first = peer(sink.grpc, &disk_env(dir.path())).await;
    let envs = disk_env(dir.path());
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("run")
        .env("SATMESH__SERVER__LISTEN", "127.0.0.1:0")
        .env("SATMESH__ADMIN__LISTEN", "127.0.0.1:0")
        .env("SATMESH__UPSTREAM__STATIC", sink.grpc.to_string())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
    let out = run_to_end("second satmesh", &mut cmd, Duration::from_secs(20)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    let pid = first.child.id().unwrap().to_string();
    assert!(
        stderr.contains(&pid),
        "names the holder's pid {pid}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_queue_peer_delivers_what_a_disk_queue_run_left() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let mut first = peer(sink.grpc, &disk_env(dir.path())).await;
    let client = Client::connect(first.grpc).await;
    let left = send_segments(&client, "left", 10, 20).await;
    kill9(&mut first).await;
    sink.set_faults(json!({})).await;
    let memory = vec![(
        "SATMESH__PIPELINE__DISK__PATH",
        dir.path().display().to_string(),
    )];
    let second = peer(sink.grpc, &memory).await;
    let client = Client::connect(second.grpc).await;
    let new = send_segments(&client, "new", 5, 20).await;
    let all: Vec<Bytes> = left.into_iter().chain(new).collect();
    assert_all_arrived(&sink, SEGMENTS, &all, Duration::from_secs(20)).await;
    // All of it acknowledged: no segment is left behind.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .count();
        // The last segment of the first run is only deleted once read whole; it is.
        if segments == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{segments} segments left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount (needs root, as the rest of the suite's setup does)");
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_file_system_slows_agents_and_loses_nothing() {
    let fs = Tmpfs::mount("16m");
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    // max_bytes far above the tmpfs: the file system's ENOSPC is what stops the writer.
    let mut envs = disk_env(fs.dir.path());
    envs.push((
        "SATMESH__PIPELINE__DISK__MAX_BYTES",
        "1073741824".to_owned(),
    ));
    envs.push((
        "SATMESH__PIPELINE__DISK__SEGMENT_BYTES",
        "1048576".to_owned(),
    ));
    let mut peer = peer(sink.grpc, &envs).await;
    let client = Client::connect(peer.grpc).await;
    // 4 agents x 200 calls x 25 segments of ~1.3 KiB: ~26 MB, more than the tmpfs holds
    // with the OAP down.
    let agents = callers(&client, "svc", "full", 4, (200, 25, 1200));
    let deadline = Instant::now() + Duration::from_secs(60);
    while peer.metric("satmesh_disk_full").await < 1.0 {
        assert!(Instant::now() < deadline, "the file system never filled");
        if agents.iter().all(|a| a.is_finished()) {
            for agent in agents {
                agent.await.expect("agent");
            }
            panic!("everything fit: make the load larger");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full: the agents wait, satmesh lives on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        agents.iter().any(|a| !a.is_finished()),
        "agents were not slowed"
    );
    assert!(peer.child.try_wait().unwrap().is_none(), "satmesh exited");

    sink.set_faults(json!({})).await;
    let mut acknowledged = Vec::new();
    for agent in agents {
        let calls = tokio::time::timeout(Duration::from_secs(120), agent)
            .await
            .expect("agents finish once the OAP drains the disk")
            .unwrap();
        acknowledged.extend(calls);
    }
    assert_eq!(
        acknowledged.len(),
        800,
        "every call answered OK: slowed, never failed"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let arrived = by_instance(&sink.counts().await, "segments");
        let missing = acknowledged
            .iter()
            .filter(|i| arrived.get(*i).copied().unwrap_or(0) < 25)
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged calls missing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.metric("satmesh_disk_full").await > 0.0 {
        assert!(Instant::now() < deadline, "still full after draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peer.child.try_wait().unwrap().is_none(), "satmesh exited");
    assert!(peer.terminate(Duration::from_secs(30)).await.success());
}

/// Real agents (2 Python, 2 Rust) and a synthetic fleet report through a disk-queue peer
/// on a fixed port; it is SIGKILLed in the middle and restarted on the same port and
/// directory; the agents carry on and end normally. Every message the Python agents and
/// the fleet were told OK about arrives, per service instance and signal (the Rust
/// agent's figures are printed: see below).
async fn real_agents_through_a_sigkill(oap_down: bool) {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&[]).await;
    if oap_down {
        sink.set_faults(json!({"refuse": true})).await;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut envs = disk_env(dir.path());
    envs.push(("SATMESH__SERVER__LISTEN", listen.clone()));
    let mut first = peer(sink.grpc, &envs).await;

    let mut agents = Vec::new();
    for (n, python) in [(0, true), (1, true), (2, false), (3, false)] {
        let instance = format!("{}-{n}", if python { "py" } else { "rs" });
        let mut cmd = if python {
            python_agent(&listen).await
        } else {
            rust_agent(&listen).await
        };
        cmd.args(["--service", "kill9", "--instance", &instance])
            .args(["--segments", "120", "--logs", "60", "--meters", "5"])
            .args(["--rate-per-sec", "20", "--timeout-secs", "60"]);
        agents.push((
            instance.clone(),
            python,
            tokio::spawn(async move {
                run_agent(&instance, &mut cmd, Duration::from_secs(150))
                    .await
                    .summary
            }),
        ));
    }
    // The synthetic fleet: 8 clients, a call of 10 segments each at a time.
    let fleet = |addr: std::net::SocketAddr, round: usize| async move {
        let client = Client::connect(addr).await;
        callers(
            &client,
            "fleet",
            &format!("fleet-{round}"),
            8,
            (300, 10, 300),
        )
    };
    let before = fleet(first.grpc, 0).await;
    // Kill once the agents have been acknowledged a good part of their data.
    let deadline = Instant::now() + Duration::from_secs(60);
    while first
        .metric("satmesh_messages_in_total{protocol=\"trace\"}")
        .await
        < 600.0
    {
        assert!(Instant::now() < deadline, "the agents never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill9(&mut first).await;
    let mut acknowledged = Vec::new();
    for task in before {
        acknowledged.extend(task.await.unwrap());
    }
    let second = peer(sink.grpc, &envs).await;
    let after = fleet(second.grpc, 1).await;
    if oap_down {
        sink.set_faults(json!({})).await;
    }
    for task in after {
        acknowledged.extend(task.await.unwrap());
    }

    // What each side says it was told OK about, and what arrived.
    let mut summaries = Vec::new();
    for (instance, python, task) in agents {
        summaries.push((instance, python, task.await.expect("agent ran to its end")));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = sink.counts().await;
        let arrived: HashMap<&str, HashMap<String, u64>> = ["segments", "logs", "meters"]
            .into_iter()
            .map(|signal| (signal, by_instance(&c, signal)))
            .collect();
        let at = |signal: &str, instance: &str| -> u64 {
            arrived[signal].get(instance).copied().unwrap_or(0)
        };
        let mut missing = Vec::new();
        // The Rust agent (skywalking 0.10) holds one client-stream open for ~30 s and is
        // told OK only when it ends; its counts are what it handed to the wire, with no
        // way to tell which of them a cut stream carried. Its figures are printed, not
        // held to "told OK => arrived".
        for (instance, _, summary) in summaries.iter().filter(|(_, python, _)| *python) {
            for signal in ["segments", "logs", "meters"] {
                let told_ok = summary[signal].as_u64().unwrap_or(0);
                if at(signal, instance) < told_ok {
                    missing.push(format!(
                        "{instance} {signal}: {} of {told_ok}",
                        at(signal, instance)
                    ));
                }
            }
        }
        let fleet_missing = acknowledged
            .iter()
            .filter(|i| at("segments", i) < 10)
            .count();
        if missing.is_empty() && fleet_missing == 0 {
            let fleet_arrived: u64 = acknowledged.iter().map(|i| at("segments", i)).sum();
            println!(
                "oap down {oap_down}: fleet {} calls acknowledged, {fleet_arrived} of {} messages arrived; agents {}; replayed {}",
                acknowledged.len(),
                acknowledged.len() * 10,
                summaries
                    .iter()
                    .map(|(i, _, s)| format!(
                        "{i}: {}/{}/{} told OK, {}/{}/{} arrived",
                        s["segments"],
                        s["logs"],
                        s["meters"],
                        at("segments", i),
                        at("logs", i),
                        at("meters", i)
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                second.metric("satmesh_disk_records_replayed_total").await
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged but missing: {missing:?}, fleet calls {fleet_missing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_and_a_fleet_lose_nothing_acknowledged_to_a_sigkill_with_the_oap_down() {
    real_agents_through_a_sigkill(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_and_a_fleet_lose_nothing_acknowledged_to_a_sigkill_mid_flow() {
    real_agents_through_a_sigkill(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_oap_down_keeps_the_queue_on_disk_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let mut envs = disk_env(dir.path());
    envs.extend([
        ("SATMESH__SHUTDOWN__DEADLINE", "2s".to_owned()),
        ("SATMESH__SHUTDOWN__CONNECTION_GRACE", "1s".to_owned()),
        ("SATMESH__SHUTDOWN__DRAIN_WINDOW", "200ms".to_owned()),
    ]);
    let mut first = peer(sink.grpc, &envs).await;
    let client = Client::connect(first.grpc).await;
    let acknowledged = send_segments(&client, "term", 20, 25).await;
    // The deadline passes with every message undelivered: none is dropped, all stay.
    assert!(first.terminate(Duration::from_secs(20)).await.success());
    assert_eq!(method_count(&sink.counts().await, SEGMENTS, "messages"), 0);

    sink.set_faults(json!({})).await;
    let second = peer(sink.grpc, &envs).await;
    assert_all_arrived(&sink, SEGMENTS, &acknowledged, Duration::from_secs(20)).await;
    assert_eq!(
        second
            .metric(
                "satmesh_messages_dropped_total{protocol=\"trace\",reason=\"shutdown_deadline\"}"
            )
            .await,
        0.0
    );
    assert_eq!(
        second.metric("satmesh_disk_records_replayed_total").await,
        acknowledged.len() as f64
    );
}
