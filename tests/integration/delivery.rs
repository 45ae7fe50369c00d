//! What satmesh acknowledged reaches an OAP: outages, failing OAPs, a full queue,
//! shutdown, tokens and routing, through the real binary.

use std::time::{Duration, Instant};

use bytes::Bytes;
use satmesh::codec::grpc_frame;
use serde_json::json;
use tonic::Code;

use crate::support::{admin::*, client::*, messages::*, processes::*, raw_h2::*};

const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";
const KEEPALIVE: &str = "/skywalking.v3.ManagementService/keepAlive";
const CDS: &str = "/skywalking.v3.ConfigurationDiscoveryService/fetchConfigurations";
const PROCESSES: &str = "/skywalking.v3.EBPFProcessService/reportProcesses";

fn segments(instance: &str, n: usize) -> Vec<Bytes> {
    (0..n).map(|i| segment("svc", instance, i, 200)).collect()
}

/// `satmesh_upstream_failures_total` of the peer's only OAP node: connection attempts that
/// did not end in a completed HTTP/2 handshake, plus failed calls.
async fn upstream_failures(peer: &Proc, oap: std::net::SocketAddr) -> f64 {
    peer.metric(&format!(
        "satmesh_upstream_failures_total{{node=\"{oap}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oap_that_accepts_then_closes_is_never_ready() {
    // The refusing sink accepts each connection and resets it at once. A TCP connect is
    // not an OAP: the peer must not report ready at any moment, however often it retries.
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let peer = satmesh(
        &[sink.grpc],
        "upstream:\n  backoff_min: 5ms\n  backoff_max: 20ms\n",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut polls, mut ready_seen) = (0, 0);
    // Until the peer has demonstrably tried 100 times, every /readyz is looked at.
    while upstream_failures(&peer, sink.grpc).await < 100.0 {
        assert!(
            Instant::now() < deadline,
            "the peer tried fewer than 100 connections in 30 s"
        );
        polls += 1;
        if peer.get("/readyz").await.0 == 200 {
            ready_seen += 1;
        }
    }
    assert!(polls >= 10, "only {polls} /readyz polls during the refusal");
    assert_eq!(
        ready_seen, 0,
        "/readyz said ready {ready_seen} of {polls} times"
    );
    assert_eq!(
        peer.metric(&format!("satmesh_upstream_up{{node=\"{}\"}}", sink.grpc))
            .await,
        0.0
    );

    // Once the sink accepts again, the same peer becomes ready.
    sink.set_faults(json!({})).await;
    ready(&peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oap_down_for_a_while_then_back_loses_nothing() {
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let peer = satmesh(&[sink.grpc], "upstream:\n  backoff_max: 200ms\n").await;
    // No OAP reachable: not ready, yet agents are still answered once their data is queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_failures(&peer, sink.grpc).await < 2.0 {
        assert!(Instant::now() < deadline, "the peer never tried the OAP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peer.get("/readyz").await.0, 503);
    let client = Client::connect(peer.grpc).await;
    let sent = send_segments(&client, "outage", 20, 25).await;
    let keepalive = segment("svc", "ping", 0, 0);
    client
        .unary(KEEPALIVE, keepalive.clone(), md(&[]))
        .await
        .expect("keepAlive queued");
    // The peer holds the data while it goes on trying the OAP.
    let tried = upstream_failures(&peer, sink.grpc).await;
    while upstream_failures(&peer, sink.grpc).await < tried + 2.0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "the peer stopped trying the OAP"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peer.get("/readyz").await.0, 503);
    assert_eq!(method_count(&sink.counts().await, SEGMENTS, "messages"), 0);
    assert!(peer.metric("satmesh_queue_events").await >= 501.0);

    sink.set_faults(json!({})).await;
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
    assert_all_arrived(&sink, KEEPALIVE, &[keepalive], Duration::from_secs(5)).await;
    ready(&peer).await;
    assert_eq!(
        peer.metric("satmesh_messages_out_total{protocol=\"trace\"}")
            .await,
        500.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_oap_is_retried_on_the_other_and_nothing_is_lost() {
    // One OAP fails 40 % of calls with UNAVAILABLE, the other half with INTERNAL (the
    // shape of a call racing a GOAWAY): every message still arrives, exactly once.
    let flaky = sink(&["--fail-fraction", "0.4"]).await;
    let other = sink(&["--fail-fraction", "0.2", "--fail-code", "13"]).await;
    let peer = satmesh(&[flaky.grpc, other.grpc], "pipeline:\n  batch_size: 20\n").await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let mut sent = Vec::new();
    for round in 0..4 {
        let c = client.clone();
        sent.extend(send_segments(&c, &format!("flaky-{round}"), 25, 20).await);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = flaky.counts().await;
        let b = other.counts().await;
        let got = method_count(&a, SEGMENTS, "messages") + method_count(&b, SEGMENTS, "messages");
        if got >= sent.len() as u64 || Instant::now() > deadline {
            assert_eq!(got, sent.len() as u64, "messages across both sinks");
            let d = method_count(&a, SEGMENTS, "digest")
                .wrapping_add(method_count(&b, SEGMENTS, "digest"));
            assert_eq!(d, digest(&sent));
            assert!(
                method_count(&a, SEGMENTS, "failed_calls") > 0,
                "the fault was exercised"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        peer.metric("satmesh_messages_retried_total{protocol=\"trace\"}")
            .await
            > 0.0
    );
    assert_eq!(
        peer.metric(
            "satmesh_messages_dropped_total{protocol=\"trace\",reason=\"rejected_by_oap\"}"
        )
        .await,
        0.0
    );
}

/// A sink that refuses every call, behind a peer whose queue holds 100 events: the queue
/// fills at once and stays full until the sink's fault is cleared.
async fn refusing_sink_and_a_100_event_queue() -> (Proc, Proc) {
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let peer = satmesh_env(
        &[sink.grpc],
        "upstream:\n  backoff_max: 200ms\n",
        &[("SATMESH__PIPELINE__QUEUE_EVENTS", "100")],
    )
    .await;
    (sink, peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_slows_the_agent_instead_of_dropping() {
    let (sink, peer) = refusing_sink_and_a_100_event_queue().await;
    let client = Client::connect(peer.grpc).await;
    let sent = segments("pressure", 400);
    let call = {
        let (c, s) = (client.clone(), sent.clone());
        tokio::spawn(async move { c.stream(SEGMENTS, s, md(&[])).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !call.is_finished(),
        "the agent's call waits while the queue is full"
    );
    assert_eq!(
        peer.metric("satmesh_queue_events").await,
        100.0,
        "queue holds exactly its capacity"
    );
    let received = peer
        .metric("satmesh_messages_in_total{protocol=\"trace\"}")
        .await;
    assert!(
        received <= 101.0,
        "satmesh stopped reading the stream ({received} messages read)"
    );

    sink.set_faults(json!({})).await;
    let answer = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("call completes");
    answer
        .unwrap()
        .expect("answered OK once everything was queued");
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_queue_and_exits_zero() {
    // A slow OAP: the queue is still full of acknowledged data when SIGTERM arrives.
    let sink = sink(&["--delay-per-message-ms", "1"]).await;
    let mut peer = satmesh(&[sink.grpc], "pipeline:\n  batch_size: 50\n").await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let sent = send_segments(&client, "drain", 40, 50).await;
    let queued = peer.metric("satmesh_queue_events").await;
    assert!(queued > 0.0, "data still queued at SIGTERM");
    let status = peer.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status:?}");
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(2)).await;
    // The agent's connection was closed with GOAWAY: new calls fail.
    assert!(
        client
            .stream(SEGMENTS, segments("late", 1), md(&[]))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_counts_what_it_could_not_deliver() {
    // In-process, to read the shutdown report: the OAP refuses every connection, so the
    // queued messages cannot be delivered before the deadline and must be counted.
    let sink = sink(&[]).await;
    sink.set_faults(json!({"refuse": true})).await;
    let config = satmesh::config::Config::load(
        None,
        Some(
            [
                ("SATMESH__SERVER__LISTEN", "127.0.0.1:0"),
                ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0"),
                ("SATMESH__UPSTREAM__STATIC", &sink.grpc.to_string()),
                ("SATMESH__UPSTREAM__BACKOFF_MAX", "100ms"),
                ("SATMESH__SHUTDOWN__DEADLINE", "1s"),
                ("SATMESH__SHUTDOWN__CONNECTION_GRACE", "500ms"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ),
    )
    .unwrap();
    let listeners = satmesh::peer::Listeners::bind(&config).await.unwrap();
    let (grpc, _) = listeners.addrs().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let peer = tokio::spawn({
        let stop = stop.clone();
        async move { satmesh::peer::run(config, listeners, async move { stop.cancelled().await }).await }
    });
    let client = Client::connect(grpc).await;
    send_segments(&client, "doomed", 2, 10).await;
    let started = Instant::now();
    stop.cancel();
    let report = tokio::time::timeout(Duration::from_secs(10), peer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "exit near the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(
        report.events_dropped, 20,
        "every undeliverable message is counted"
    );
    assert_eq!(method_count(&sink.counts().await, SEGMENTS, "messages"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_token_reaches_the_oap_with_its_own_data() {
    let sink = sink(&[]).await;
    let peer = satmesh(&[sink.grpc], "").await;
    let client = Client::connect(peer.grpc).await;
    let (a, b) = (segments("a", 30), segments("b", 20));
    let ca = client.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let ta = tokio::spawn(async move {
        ca.stream(SEGMENTS, a2, md(&[("authentication", "token-a")]))
            .await
    });
    client
        .stream(SEGMENTS, b2, md(&[("authentication", "token-b")]))
        .await
        .unwrap();
    ta.await.unwrap().unwrap();
    let c = wait_for(&sink, Duration::from_secs(5), |c| {
        method_count(c, SEGMENTS, "messages") == 50
    })
    .await;
    assert_eq!(c["authentication"]["token-a"], 30);
    assert_eq!(c["authentication"]["token-b"], 20);
    let per_instance: Vec<(String, u64)> = c["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["instance"].as_str().unwrap().to_owned(),
                e["messages"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_instance, [("a".to_owned(), 30), ("b".to_owned(), 20)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_upstream_token_is_sent_on_every_call_unary_included() {
    let sink = sink(&["--echo"]).await;
    let peer = satmesh(&[sink.grpc], "upstream:\n  token: oap-secret\n").await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let agent = md(&[("authentication", "agent-token")]);
    client
        .stream(SEGMENTS, segments("t", 5), agent.clone())
        .await
        .unwrap();
    client
        .unary(KEEPALIVE, segment("s", "t", 0, 0), agent.clone())
        .await
        .unwrap();
    client
        .unary(CDS, segment("s", "t", 1, 0), agent)
        .await
        .unwrap();
    let c = wait_for(&sink, Duration::from_secs(5), |c| {
        c["authentication"]["oap-secret"] == 7
    })
    .await;
    assert_eq!(c["authentication"]["oap-secret"], 7);
    assert!(c["authentication"].get("agent-token").is_none(), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_nobody_answers_gets_empty_commands_and_a_sync_report_gets_an_error() {
    // The OAP accepts connections but answers slowly, past the sync deadline.
    let sink = sink(&["--delay-per-message-ms", "3000"]).await;
    let peer = satmesh(&[sink.grpc], "upstream:\n  sync_timeout: 300ms\n").await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let started = Instant::now();
    let answer = client
        .unary(CDS, segment("s", "i", 0, 0), md(&[]))
        .await
        .expect("query answered OK");
    assert_eq!(answer, Bytes::new(), "empty Commands");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        peer.metric("satmesh_query_fallbacks_total{protocol=\"cds\"}")
            .await,
        1.0
    );
    let err = client
        .unary(PROCESSES, segment("s", "i", 0, 0), md(&[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_routing_follows_the_weights_and_round_robin_spreads() {
    let heavy = sink(&[]).await;
    let light = sink(&[]).await;
    let extra = format!(
        "upstream:\n  weights: [\"{}=3\"]\nrouting:\n  protocols:\n    management: weighted\n",
        heavy.grpc
    );
    let peer = satmesh(&[heavy.grpc, light.grpc], &extra).await;
    ready(&peer).await;
    // Both nodes connected before traffic, so the split is the schedule's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer
        .metric(&format!("satmesh_upstream_up{{node=\"{}\"}}", light.grpc))
        .await
        != 1.0
        || peer
            .metric(&format!("satmesh_upstream_up{{node=\"{}\"}}", heavy.grpc))
            .await
            != 1.0
    {
        assert!(Instant::now() < deadline, "both upstreams connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client::connect(peer.grpc).await;
    // keepAlive (management, weighted) and segments (trace, round-robin): one event per
    // batch, since each call waits for the flush before the next is sent.
    for i in 0..40 {
        client
            .unary(KEEPALIVE, segment("s", "w", i, 0), md(&[]))
            .await
            .unwrap();
        client
            .stream(SEGMENTS, vec![segment("s", "r", i, 0)], md(&[]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let all = |c: &serde_json::Value| method_count(c, KEEPALIVE, "messages");
    let segs = |c: &serde_json::Value| method_count(c, SEGMENTS, "messages");
    // Both sinks read together until every message of both paths is in: a snapshot of
    // one taken before the other's last arrival would miss a batch still on its way.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (h, l) = loop {
        let (h, l) = (heavy.counts().await, light.counts().await);
        if all(&h) + all(&l) >= 40 && segs(&h) + segs(&l) >= 40 {
            break (h, l);
        }
        assert!(
            Instant::now() < deadline,
            "not all arrived: keepAlive {}+{}, segments {}+{}",
            all(&h),
            all(&l),
            segs(&h),
            segs(&l)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(all(&h) + all(&l), 40);
    assert_eq!((all(&h), all(&l)), (30, 10), "3:1 weights");
    let (rh, rl) = (
        method_count(&h, SEGMENTS, "messages"),
        method_count(&l, SEGMENTS, "messages"),
    );
    assert_eq!(rh + rl, 40);
    assert!(
        (15..=25).contains(&rh),
        "round-robin splits evenly: {rh}/{rl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_and_metrics() {
    let sink = sink(&[]).await;
    let peer = satmesh(&[sink.grpc], "").await;
    ready(&peer).await;
    assert_eq!(peer.get("/healthz").await.0, 200);
    let client = Client::connect(peer.grpc).await;
    client
        .stream(SEGMENTS, segments("m", 3), md(&[]))
        .await
        .unwrap();
    wait_for(&sink, Duration::from_secs(5), |c| {
        method_count(c, SEGMENTS, "messages") == 3
    })
    .await;
    let (_, text) = peer.get("/metrics").await;
    for name in [
        "satmesh_agent_connections 1",
        "satmesh_calls_in_total{protocol=\"trace\"} 1",
        "satmesh_messages_in_total{protocol=\"trace\"} 3",
        "satmesh_messages_out_total{protocol=\"trace\"} 3",
        "satmesh_queue_events 0",
        "satmesh_batch_size_count",
        "satmesh_delivery_latency_seconds_bucket",
        "satmesh_upstream_latency_seconds_bucket",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    assert!(text.contains(&format!("satmesh_upstream_up{{node=\"{}\"}} 1", sink.grpc)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_racing_an_oap_goaway_are_retried_not_failed() {
    // The OAP sends GOAWAY on every connection after 7 calls: queries and batches that
    // race it must still be answered by an OAP, never by the fallback or an error.
    let sink = sink(&["--echo", "--goaway-after-calls", "7"]).await;
    let peer = satmesh(
        &[sink.grpc],
        "upstream:\n  backoff_min: 10ms\n  backoff_max: 50ms\n",
    )
    .await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let mut queries = Vec::new();
    for i in 0..100 {
        let c = client.clone();
        queries.push(tokio::spawn(async move {
            let q = segment("s", "q", i, 8);
            let answer = c
                .unary(CDS, q.clone(), md(&[]))
                .await
                .expect("query answered");
            assert_eq!(answer, q, "the OAP's own answer, not the fallback");
        }));
    }
    let sent = send_segments(&client, "goaway", 30, 10).await;
    for q in queries {
        q.await.unwrap();
    }
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
    assert_eq!(
        peer.metric("satmesh_query_fallbacks_total{protocol=\"cds\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oap_nodes_come_from_a_dns_name() {
    let sink = sink(&[]).await;
    let name = format!("localhost:{}", sink.grpc.port());
    let peer = satmesh_env(
        &[],
        "",
        &[
            ("SATMESH__UPSTREAM__STATIC", ""),
            ("SATMESH__UPSTREAM__DNS", &name),
        ],
    )
    .await;
    ready(&peer).await;
    let client = Client::connect(peer.grpc).await;
    let sent = send_segments(&client, "dns", 2, 5).await;
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(5)).await;
    assert_eq!(
        peer.metric(&format!("satmesh_upstream_up{{node=\"{}\"}}", sink.grpc))
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_keyed_protocol_can_be_routed_fixed_and_unkeyed_ones_cannot() {
    const LOGS: &str = "/skywalking.v3.LogReportService/collect";
    let (a, b) = (sink(&[]).await, sink(&[]).await);
    let peer = satmesh(
        &[a.grpc, b.grpc],
        "routing:\n  protocols:\n    log: fixed\n",
    )
    .await;
    // Alone, the peer's ring holds the OAP nodes it has seen up for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = peer.get("/status").await;
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        if s["ring"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "ring never formed: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = Client::connect(peer.grpc).await;
    for round in 0..4 {
        for i in 0..20 {
            let batch: Vec<Bytes> = (0..3)
                .map(|k| log("svc", &format!("i{i}"), round * 10 + k))
                .collect();
            client.stream(LOGS, batch, md(&[])).await.unwrap();
        }
    }
    let total = |c: &serde_json::Value| method_count(c, LOGS, "messages");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ca, cb) = loop {
        let (ca, cb) = (a.counts().await, b.counts().await);
        if total(&ca) + total(&cb) >= 240 || Instant::now() > deadline {
            break (ca, cb);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(total(&ca) + total(&cb), 240);
    let on = |c: &serde_json::Value| -> Vec<String> {
        c["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["instance"].as_str().unwrap().to_owned())
            .collect()
    };
    let (ia, ib) = (on(&ca), on(&cb));
    assert!(
        ia.iter().all(|i| !ib.contains(i)),
        "an instance's logs at one OAP only: {ia:?} / {ib:?}"
    );
    assert_eq!(ia.len() + ib.len(), 20);
    assert!(
        !ia.is_empty() && !ib.is_empty(),
        "instances spread over both OAPs"
    );

    // A protocol whose messages carry no service and instance cannot be fixed.
    let out = std::process::Command::new(BIN)
        .args(["check-config"])
        .env("SATMESH__ROUTING__PROTOCOLS__ENVOY_ACCESS_LOG", "fixed")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routing.protocols.envoy_access_log"));
}

/// An agent that writes each small message in a DATA frame of its own (grpc-java and
/// grpcio do) while the queue is full and satmesh has stopped reading: thousands of tiny
/// frames wait in the connection's receive window. HTTP/2 flow control must hold the
/// agent back; the connection must not be torn down for "too many small DATA frames"
/// (h2's framing-overhead budget: upstream h2 0.4.20 gives it half the connection
/// window, see third_party/h2/SATMESH.md), which would lose what the agent had in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_messages_in_frames_of_their_own_wait_out_a_full_queue() {
    let (sink, peer) = refusing_sink_and_a_100_event_queue().await;
    let (response, mut send, connection) = raw_h2_call(peer.grpc, SEGMENTS).await;
    // 8,000 messages of ~30 bytes: 240 KB, well inside the windows, but 8,000 frames
    // under h2's 256-byte overhead threshold (about 4,500 of them exhaust its default).
    let sent: Vec<Bytes> = (0..8000).map(|i| segment("s", "tiny", i, 0)).collect();
    assert!(sent.iter().all(|m| m.len() < 64), "tiny messages");
    for m in &sent {
        send.send_data(grpc_frame(m), false).unwrap();
    }
    // Everything is on the wire well within a second; satmesh reads 100 and waits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !connection.is_finished(),
        "satmesh closed the connection: {:?}",
        connection.await
    );
    let mut response = Box::pin(response);
    if let Ok(early) = tokio::time::timeout(Duration::from_millis(10), &mut response).await {
        panic!("the call ended while the queue was full: {early:?}");
    }
    let read = peer
        .metric("satmesh_messages_in_total{protocol=\"trace\"}")
        .await;
    assert!(read <= 101.0, "satmesh stopped reading ({read} read)");

    sink.set_faults(json!({})).await;
    send.send_data(Bytes::new(), true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("answered once the queue drained")
        .expect("no reset, no GOAWAY");
    assert_eq!(raw_h2_status(response).await, "0");
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(30)).await;
}
