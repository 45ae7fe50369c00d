//! `satmesh bench` as a user runs it: against a `satmesh sink` directly and through a
//! `satmesh run` peer, with segments, meter streams and keepAlive calls; the report's JSON
//! and the sink's `/latency` must agree with what the sink counted.

use std::time::Duration;

use satmesh_tools::load::{KEEPALIVE_PATH, METER_PATH, SEGMENT_PATH};
use serde_json::Value;

use crate::support::{admin::*, processes::*};

/// Runs `satmesh bench ARGS` to its end; returns its stdout and stderr.
async fn bench(args: &[&str]) -> (String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .arg("bench")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("satmesh bench ended within 30 s")
    .expect("run satmesh bench");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "bench failed: {}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// A paced mixed load for 2 s: 2 connections x 2 segment streams, one meter stream each,
/// 4 instances, keepAlive at 40/s, with the sink's delivery latency.
async fn mixed_load(target: std::net::SocketAddr, sink: &Proc) -> Value {
    let (target, admin) = (target.to_string(), sink.admin.to_string());
    let (stdout, stderr) = bench(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--streams",
        "2",
        "--messages-per-call",
        "10",
        "--size",
        "300",
        "--call-interval",
        "10ms",
        "--instances",
        "4",
        "--meter-streams",
        "1",
        "--keepalive-rate",
        "40",
        "--duration",
        "2s",
        "--sink-admin",
        &admin,
        "--json",
    ])
    .await;
    // Progress: one line a second while it runs.
    assert!(
        stderr.lines().any(|l| l.starts_with("bench: 1s ")),
        "no progress line in {stderr}"
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert!(report["seconds"].as_f64().unwrap() >= 2.0, "{report}");
    let messages = u(&report, "messages");
    assert!(messages > 0, "{report}");
    assert!(report["messages_per_second"].as_f64().unwrap() > 0.0);
    // Every segment is 300 bytes, give or take two.
    let bytes = u(&report, "bytes");
    assert!(
        bytes.abs_diff(300 * messages) <= 2 * messages,
        "{bytes} bytes for {messages} segments"
    );
    assert!(u(&report, "meters") > 0, "{report}");
    assert_eq!(
        report["errors_by_status"],
        serde_json::json!({}),
        "{report}"
    );
    let unary = &report["unary"];
    assert!(u(unary, "calls") > 0, "{report}");
    let (p50, p99, p999, max) = (
        u(unary, "p50_us"),
        u(unary, "p99_us"),
        u(unary, "p999_us"),
        u(unary, "max_us"),
    );
    assert!(p50 <= p99 && p99 <= p999 && p999 <= max, "{unary}");
    let delivery = &report["delivery"];
    assert_eq!(u(delivery, "count"), messages, "{report}");
    assert!(u(delivery, "p50_us") <= u(delivery, "p99_us"), "{delivery}");
    report
}

/// The sink got what the bench was told was taken, and measured each segment once.
async fn assert_sink_agrees(sink: &Proc, report: &Value) {
    let messages = u(report, "messages");
    let counts = wait_for(sink, Duration::from_secs(10), |c| {
        method_count(c, SEGMENT_PATH, "messages") >= messages
            && method_count(c, METER_PATH, "messages") >= u(report, "meters")
            && method_count(c, KEEPALIVE_PATH, "messages") >= u(&report["unary"], "calls")
    })
    .await;
    let segments = method_count(&counts, SEGMENT_PATH, "messages");
    assert_eq!(segments, messages, "{counts}");
    assert_eq!(
        method_count(&counts, METER_PATH, "messages"),
        u(report, "meters")
    );
    assert_eq!(
        method_count(&counts, KEEPALIVE_PATH, "messages"),
        u(&report["unary"], "calls")
    );
    // Segments were reported as the 4 instances, meters name theirs in their first element.
    let instances: Vec<&str> = counts["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        instances,
        [
            "bench-inst-0",
            "bench-inst-1",
            "bench-inst-2",
            "bench-inst-3"
        ],
        "sorted by (service, instance): {counts}"
    );
    assert!(counts["meter_names"]["bench_http_requests_total"].as_u64() > Some(0));
    let (status, body) = sink.get("/latency").await;
    assert_eq!(status, 200);
    let latency: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(u(&latency, "count"), segments, "{latency}");
    assert!(u(&latency, "p50_us") <= u(&latency, "p999_us"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_the_sink_reports_what_the_sink_counted() {
    let sink = sink(&[]).await;
    let report = mixed_load(sink.grpc, &sink).await;
    assert_sink_agrees(&sink, &report).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_through_a_peer_reports_delivery_to_the_sink() {
    let sink = sink(&[]).await;
    let peer = satmesh(&[sink.grpc], "pipeline:\n  flush_interval: 5ms\n").await;
    ready(&peer).await;
    // Segments from before the bench do not count: the bench resets /latency first.
    let (before, _) = bench(&[
        "--target",
        &sink.grpc.to_string(),
        "--connections",
        "1",
        "--streams",
        "1",
        "--messages",
        "20",
        "--messages-per-call",
        "10",
        "--json",
    ])
    .await;
    let before: Value = serde_json::from_str(before.trim()).unwrap();
    assert_eq!(u(&before, "messages"), 20, "{before}");
    let report = mixed_load(peer.grpc, &sink).await;
    let c = wait_for(&sink, Duration::from_secs(10), |c| {
        method_count(c, SEGMENT_PATH, "messages") >= 20 + u(&report, "messages")
    })
    .await;
    assert_eq!(
        method_count(&c, SEGMENT_PATH, "messages"),
        20 + u(&report, "messages")
    );
    let (_, body) = sink.get("/latency").await;
    let latency: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(u(&latency, "count"), u(&report, "messages"), "{latency}");
    // POST /latency/reset empties it.
    let reset: Value = reqwest::Client::new()
        .post(format!("http://{}/latency/reset", sink.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reset,
        serde_json::json!({"count": 0, "p50_us": 0, "p99_us": 0, "p999_us": 0, "max_us": 0})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_count_ends_the_bench_before_its_duration() {
    let sink = sink(&[]).await;
    let started = std::time::Instant::now();
    let (stdout, _) = bench(&[
        "--target",
        &sink.grpc.to_string(),
        "--connections",
        "2",
        "--streams",
        "2",
        "--messages-per-call",
        "10",
        "--messages",
        "200",
        "--meter-streams",
        "1",
        "--keepalive-rate",
        "20",
        "--duration",
        "60s",
    ])
    .await;
    assert!(started.elapsed() < Duration::from_secs(20), "{stdout}");
    assert!(stdout.starts_with("200 segments in "), "{stdout}");
    assert!(stdout.contains("errors: none"), "{stdout}");
    let c = sink.counts().await;
    assert_eq!(method_count(&c, SEGMENT_PATH, "messages"), 200);
}
