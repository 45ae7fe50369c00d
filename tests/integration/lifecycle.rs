//! The connection lifecycle through the real binary: draining one connection (and
//! gossiping it as draining), ending a long-lived client-stream between two messages
//! (never inside one), the connection limit with a multi-address client, max connection
//! age, a SIGTERM drain spread over its window, the peer's shutdown ending every task it
//! started, and the real Python and Rust agents drained mid-run losing nothing.
//! Every message is counted at the sink.

use std::time::{Duration, Instant};

use bytes::Bytes;
use satmesh::codec::grpc_frame;
use satmesh::config::Config;
use satmesh::peer::{Listeners, Peer};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::support::{admin::*, agents::*, client::*, messages::*, processes::*, raw_h2::*};

const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";
const LOGS: &str = "/skywalking.v3.LogReportService/collect";
const METERS: &str = "/skywalking.v3.MeterReportService/collect";
const KEEPALIVE: &str = "/skywalking.v3.ManagementService/keepAlive";

fn segments(tag: &str, from: usize, n: usize) -> Vec<Bytes> {
    (from..from + n)
        .map(|i| segment("svc", tag, i, 100))
        .collect()
}

/// Polls `f` until it holds; panics with `what` after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_one_connection_lets_its_open_stream_finish_and_loses_nothing() {
    let sink = sink(&[]).await;
    let peer = satmesh(&[sink.grpc], "").await;
    let a = Client::connect(peer.grpc).await;
    a.unary(KEEPALIVE, segment("s", "a", 0, 0), md(&[]))
        .await
        .unwrap();
    let ids = peer.connection_ids("serving").await;
    assert_eq!(ids.len(), 1);
    let a_id = ids[0];
    let b = Client::connect(peer.grpc).await;
    b.unary(KEEPALIVE, segment("s", "b", 0, 0), md(&[]))
        .await
        .unwrap();

    // A's stream is open when its connection gets the GOAWAY.
    let (tx, call) = a.open_stream(SEGMENTS).await;
    let first = segments("a", 0, 10);
    for m in &first {
        tx.send(m.clone()).await.unwrap();
    }
    eventually(Duration::from_secs(5), "10 messages read", || async {
        peer.metric("satmesh_messages_in_total{protocol=\"trace\"}")
            .await
            >= 10.0
    })
    .await;
    assert!(peer.drain_connection(a_id).await);
    assert!(!peer.drain_connection(a_id).await, "already draining");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer.connection_ids("draining").await, [a_id]);
    // The peer tells the tier it holds two connections, one of them draining: its share
    // is the one it keeps serving.
    eventually(Duration::from_secs(5), "draining published", || async {
        let (_, body) = peer.get("/status").await;
        let doc: Value = serde_json::from_str(&body).expect("status JSON");
        let me = &doc["peers"][0];
        (me["connections"].as_u64(), me["draining"].as_u64()) == (Some(2), Some(1))
    })
    .await;
    // The open stream carries on and ends as the agent wants.
    let rest = segments("a", 10, 10);
    for m in &rest {
        tx.send(m.clone()).await.unwrap();
    }
    drop(tx);
    call.await.unwrap().expect("the open stream finished OK");
    // The connection closed once its stream was done; A's next call reconnects.
    eventually(
        Duration::from_secs(5),
        "drained connection closed",
        || async { !peer.connection_ids("draining").await.contains(&a_id) },
    )
    .await;
    let later = segments("a", 20, 5);
    a.stream(SEGMENTS, later.clone(), md(&[]))
        .await
        .expect("A reconnected");
    let b_sent = segments("b", 0, 5);
    b.stream(SEGMENTS, b_sent.clone(), md(&[]))
        .await
        .expect("B untouched");

    let sent: Vec<Bytes> = [first, rest, later, b_sent].concat();
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
    let c = peer.connections().await;
    assert_eq!(c["drained"]["shed"], 1, "{c}");
    assert_eq!(c["serving"], 2, "B and A's new connection: {c}");
    assert!(c["closed_hard"].as_object().unwrap().is_empty(), "{c}");
    assert_eq!(
        peer.metric("satmesh_connections_drained_total{reason=\"shed\"}")
            .await,
        1.0
    );
    assert_eq!(
        peer.metric("satmesh_streams_ended_on_drain_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_stream_on_a_draining_connection_is_ended_with_ok_between_messages_and_still_read()
 {
    let sink = sink(&[]).await;
    let peer = satmesh(
        &[sink.grpc],
        // A second of draining: the bursts every 250 ms below must go on for a few rounds
        // after the drain even when a loaded machine stretches the sleeps.
        "server:\n  drain_stream_after: 1s\n  drain_stream_quiet: 100ms\n",
    )
    .await;
    let client = Client::connect(peer.grpc).await;
    let (tx, call) = client.open_stream(SEGMENTS).await;
    // Like the Rust agent: bursts on one stream that the agent never closes.
    let mut sent = Vec::new();
    let mut drained_at = None;
    // Up to 20 s of bursts: far more than the second plus a quiet moment the rule needs,
    // and far less than the 60 s grace that would close the connection hard.
    for round in 0..80 {
        if call.is_finished() {
            break;
        }
        for m in segments("long", round * 5, 5) {
            tx.send(m.clone()).await.unwrap();
            sent.push(m);
        }
        if round == 2 {
            eventually(Duration::from_secs(5), "15 messages read", || async {
                peer.metric("satmesh_messages_in_total{protocol=\"trace\"}")
                    .await
                    >= 15.0
            })
            .await;
            let id = peer.connection_ids("serving").await[0];
            // Taken before the request: the drain starts no earlier, so the stream's end
            // is at least `drain_stream_after` later however slow the request is.
            drained_at = Some(Instant::now());
            assert!(peer.drain_connection(id).await);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_at = drained_at.expect("drained");
    assert!(call.is_finished(), "satmesh ended the stream");
    let ended_after = drained_at.elapsed();
    call.await.unwrap().expect("ended with OK");
    // Never before `drain_stream_after`; then at the first quiet moment, which comes
    // every 250 ms here (a loaded machine only stretches it), and long before the grace.
    assert!(
        ended_after >= Duration::from_secs(1) && ended_after < Duration::from_secs(20),
        "ended {ended_after:?} after the drain"
    );
    assert!(sent.len() > 15, "the stream carried on while draining");
    // A hyper client keeps feeding a request body after a complete response, as the Rust
    // agent's reporter does until its next stream takes over: satmesh still reads and
    // queues it (no reset that would drop what was on its way), until the agent ends it.
    let after = segments("long", 1000, 5);
    for m in &after {
        tx.send(m.clone()).await.unwrap();
    }
    // At least these 5: on a loaded machine the OK can also overtake part of the last
    // burst of the loop (sent before the client saw the call end), which counts too.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after_end = peer.metric("satmesh_messages_after_stream_end_total").await;
        if after_end >= 5.0 {
            println!("messages read after the OK: {after_end}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "5 messages after the OK within 5 s: {after_end} counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        peer.connections().await["connections"][0]["open_streams"],
        1,
        "the ended stream is still read"
    );
    drop(tx);
    sent.extend(after);
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
    assert_eq!(
        peer.metric("satmesh_streams_ended_on_drain_total").await,
        1.0
    );
    eventually(
        Duration::from_secs(5),
        "the drained connection closed once the agent ended its stream",
        || async { peer.connections().await["open"] == 0 },
    )
    .await;
}

/// A raw HTTP/2 client: a gRPC call whose message arrives in two halves, a pause apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_never_ended_inside_a_message() {
    let sink = sink(&[]).await;
    let peer = satmesh(
        &[sink.grpc],
        "server:\n  drain_stream_after: 100ms\n  drain_stream_quiet: 100ms\n",
    )
    .await;
    let (response, mut send, _connection) = raw_h2_call(peer.grpc, SEGMENTS).await;
    let message = segment("svc", "halves", 0, 4000);
    let frame = grpc_frame(&message);
    let half = frame.len() / 2;
    send.send_data(Bytes::copy_from_slice(&frame[..half]), false)
        .unwrap();
    eventually(Duration::from_secs(5), "the stream is open", || async {
        peer.connections().await["connections"][0]["open_streams"] == 1
    })
    .await;
    let id = peer.connection_ids("serving").await[0];
    assert!(peer.drain_connection(id).await);
    // Patience and pause pass many times over: half a message keeps the stream open.
    let mut response = Box::pin(response);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut response)
            .await
            .is_err(),
        "satmesh answered in the middle of a message"
    );
    send.send_data(Bytes::copy_from_slice(&frame[half..]), false)
        .unwrap();
    // Now a boundary: after the pause satmesh ends the call with OK.
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("ended after the message")
        .unwrap();
    assert_eq!(raw_h2_status(response).await, "0");
    assert_all_arrived(&sink, SEGMENTS, &[message], Duration::from_secs(10)).await;
}

/// The Python agent (grpc-core pick-first) with `ipv4:FULL,OTHER`: the full peer resets
/// its connection before the HTTP/2 handshake and the agent lands on the other at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_turns_the_next_connection_away_to_the_next_address() {
    let python = python_bin().await;
    let sink = sink(&[]).await;
    let full = satmesh(&[sink.grpc], "server:\n  max_connections: 1\n").await;
    let other = satmesh(&[sink.grpc], "").await;
    let holder = Client::connect(full.grpc).await;
    holder
        .unary(KEEPALIVE, segment("s", "holder", 0, 0), md(&[]))
        .await
        .unwrap();
    assert_eq!(full.metric("satmesh_connection_limit").await, 1.0);

    // The N+1th connection is reset before any HTTP/2 byte (the reset may even beat
    // `connect` returning).
    if let Ok(mut raw) = tokio::net::TcpStream::connect(full.grpc).await {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(2), raw.read(&mut buf))
            .await
            .expect("closed at once");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "no HTTP/2 preface: {read:?}"
        );
    }
    eventually(Duration::from_secs(2), "the turn-away counted", || async {
        full.metric("satmesh_connections_turned_away_total{reason=\"limit\"}")
            .await
            == 1.0
    })
    .await;

    // grpcio sends the whole target as :authority ("a:p,b:p"), which h2 rejects; the
    // wrapper sets grpc.default_authority (see frontdoor::admission).
    let wrapper = "import grpc, runpy, sys\n\
        o = grpc.insecure_channel\n\
        grpc.insecure_channel = lambda t, options=None, compression=None: o(t, options=list(options or []) + [('grpc.default_authority', 'satmesh')], compression=compression)\n\
        sys.argv = sys.argv[1:]\n\
        runpy.run_path(sys.argv[0], run_name='__main__')";
    let mut agent = Command::new(python);
    agent
        .args(["-c", wrapper, PYTHON_AGENT])
        .args(["--service", "py", "--instance", "py-1", "--segments", "20"])
        .args(["--logs", "10", "--meters", "1"])
        .env(
            "SW_AGENT_COLLECTOR_BACKEND_SERVICES",
            format!("ipv4:{},{}", full.grpc, other.grpc),
        )
        .env_remove("SW_AGENT_AUTHENTICATION");
    let started = Instant::now();
    let summary = run_agent("python agent", &mut agent, Duration::from_secs(90))
        .await
        .summary;
    let took = started.elapsed();
    assert_eq!(summary["stream_errors"], 0, "{summary}");
    assert_eq!(summary["management_errors"], 0, "{summary}");
    assert_eq!(summary["segments"], 20, "{summary}");
    let c = wait_for(&sink, Duration::from_secs(10), |c| {
        method_count(c, SEGMENTS, "messages") >= 20 && method_count(c, LOGS, "messages") >= 10
    })
    .await;
    assert_eq!(method_count(&c, SEGMENTS, "messages"), 20);
    assert_eq!(method_count(&c, LOGS, "messages"), 10);
    assert_eq!(
        method_count(&c, METERS, "messages"),
        summary["meters"].as_u64().unwrap()
    );
    // Everything went through the other peer; the full one turned the agent away.
    let (f, o) = (full.connections().await, other.connections().await);
    assert_eq!(f["accepted"], 1, "{f}");
    assert!(f["turned_away"]["limit"].as_u64().unwrap() >= 2, "{f}");
    assert!(o["accepted"].as_u64().unwrap() >= 1, "{o}");
    assert!(
        other
            .metric("satmesh_messages_in_total{protocol=\"trace\"}")
            .await
            >= 20.0,
        "the agent reported through the other peer"
    );
    eprintln!("python agent run with a turned-away first address took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_drains_a_connection_after_about_its_age() {
    let sink = sink(&[]).await;
    let peer = satmesh(
        &[sink.grpc],
        "server:\n  max_connection_age: 1s\n  max_connection_age_grace: 5s\n",
    )
    .await;
    let client = Client::connect(peer.grpc).await;
    let connected = Instant::now();
    client
        .unary(KEEPALIVE, segment("s", "age", 0, 0), md(&[]))
        .await
        .unwrap();
    let first = peer.connection_ids("serving").await[0];
    eventually(
        Duration::from_secs(5),
        "first connection aged out",
        || async { !peer.connection_ids("serving").await.contains(&first) },
    )
    .await;
    let aged = connected.elapsed();
    assert!(
        aged >= Duration::from_millis(850) && aged <= Duration::from_millis(1400),
        "drained after {aged:?} (1 s +-10 %)"
    );
    // Calls go on across several aged-out connections. hyper's client (under tonic)
    // fails the first call it dispatches to a connection that already got its GOAWAY,
    // before sending a byte of it: retried once, it must then succeed, and the sink
    // must see every message exactly once (a retried call that had arrived would show
    // twice).
    let mut sent = Vec::new();
    let mut retried = 0;
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        let batch = segments("age", i * 3, 3);
        if let Err(status) = client.stream(SEGMENTS, batch.clone(), md(&[])).await {
            retried += 1;
            eprintln!("call raced a GOAWAY: {status:?}");
            client
                .stream(SEGMENTS, batch.clone(), md(&[]))
                .await
                .expect("the retry succeeds");
        }
        sent.extend(batch);
        i += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        retried <= 4,
        "at most one failed call per drain ({retried})"
    );
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
    let drained = peer
        .metric("satmesh_connections_drained_total{reason=\"age\"}")
        .await;
    assert!(drained >= 3.0, "aged out {drained} times in 3.5 s");
    assert_eq!(
        peer.metric("satmesh_connections_closed_hard_total{reason=\"age\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_spreads_the_goaways_over_the_drain_window() {
    let sink = sink(&[]).await;
    let mut peer = satmesh(
        &[sink.grpc],
        "shutdown:\n  drain_window: 3s\n  connection_grace: 2s\n  deadline: 10s\n",
    )
    .await;
    // Three idle HTTP/2 connections; each ends when its GOAWAY comes.
    let mut closed = Vec::new();
    for _ in 0..3 {
        let tcp = tokio::net::TcpStream::connect(peer.grpc).await.unwrap();
        let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
        closed.push(tokio::spawn(async move {
            let _ = conn.await;
            drop(h2);
            Instant::now()
        }));
    }
    eventually(Duration::from_secs(5), "three connections", || async {
        peer.connections().await["open"] == 3
    })
    .await;
    let signalled = Instant::now();
    let status = peer.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    let mut at = Vec::new();
    for c in closed {
        at.push(c.await.unwrap() - signalled);
    }
    at.sort();
    // GOAWAYs at 0, 1 and 2 s (3 s / 3 apart).
    for (i, t) in at.iter().enumerate() {
        let want = Duration::from_secs(i as u64);
        assert!(
            *t >= want.saturating_sub(Duration::from_millis(50))
                && *t < want + Duration::from_millis(700),
            "connection {i} closed at {t:?}: {at:?}"
        );
    }
}

/// The peer's own lifecycle, in process on a runtime of its own: with discovery,
/// shedding, self-reports and gossip running and an agent connected, `Peer::shutdown`
/// ends every task the peer started: none is left on its tracker, and (so that a task
/// spawned past the tracker is caught too) none on its runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_task_the_peer_started() {
    let sink = sink(&[]).await;
    let gossip = format!("127.0.0.1:{}", free_udp_port());
    let oap = sink.grpc.to_string();
    let env = [
        ("SATMESH__SERVER__LISTEN", "127.0.0.1:0"),
        ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0"),
        ("SATMESH__UPSTREAM__STATIC", oap.as_str()),
        ("SATMESH__UPSTREAM__DNS_REFRESH", "100ms"),
        ("SATMESH__CLUSTER__NODE_ID", "peer-0"),
        ("SATMESH__CLUSTER__GOSSIP_LISTEN", gossip.as_str()),
        ("SATMESH__CLUSTER__SEEDS", gossip.as_str()),
        ("SATMESH__CLUSTER__GOSSIP_INTERVAL_MS", "50"),
        ("SATMESH__BALANCE__INTERVAL", "100ms"),
        ("SATMESH__SELF_REPORT__ENABLED", "true"),
        ("SATMESH__SELF_REPORT__INTERVAL", "100ms"),
        ("SATMESH__SHUTDOWN__DRAIN_WINDOW", "0s"),
        ("SATMESH__SHUTDOWN__CONNECTION_GRACE", "2s"),
        ("SATMESH__SHUTDOWN__DEADLINE", "10s"),
    ];
    let config = Config::load(
        None,
        Some(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
    )
    .unwrap();
    assert!(config.balance.enabled, "shedding is on by default");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let peer = runtime
        .spawn(async move {
            let listeners = Listeners::bind(&config).await?;
            Peer::start(config, listeners).await
        })
        .await
        .unwrap()
        .expect("the peer starts");

    // Work for every part: an agent's data and the peer's own reports reach the OAP.
    let agent = Client::connect(peer.grpc_addr()).await;
    let sent = segments("tasks", 0, 20);
    agent.stream(SEGMENTS, sent.clone(), md(&[])).await.unwrap();
    assert_all_arrived(&sink, SEGMENTS, &sent, Duration::from_secs(10)).await;
    let reports = satmesh::selfreport::PATH;
    let c = wait_for(&sink, Duration::from_secs(10), |c| {
        method_count(c, reports, "messages") > 0
    })
    .await;
    assert!(
        method_count(&c, reports, "messages") > 0,
        "a self-report: {c}"
    );
    // Discovery, the shedder, the self-reporter, the tier's two tasks, admin, the accept
    // loop, two senders, the OAP's connection manager and its connection.
    assert!(peer.tasks_running() >= 11, "{} tasks", peer.tasks_running());

    let report = runtime.spawn(peer.shutdown()).await.unwrap();
    assert_eq!(report.tasks_left, 0, "{report:?}");
    assert_eq!(report.events_dropped, 0, "{report:?}");
    let metrics = runtime.metrics();
    eventually(
        Duration::from_secs(5),
        "no task left on the peer's runtime",
        || {
            let alive = metrics.num_alive_tasks();
            async move { alive == 0 }
        },
    )
    .await;
    runtime.shutdown_background();
}

// ---------------------------------------------------------------------------------------
// The real agents, their connections aged out (drained) again and again mid-run

fn assert_agent_counts(c: &Value, summary: &Value) {
    for (path, key) in [(SEGMENTS, "segments"), (LOGS, "logs"), (METERS, "meters")] {
        assert_eq!(
            method_count(c, path, "messages"),
            summary[key].as_u64().unwrap(),
            "{key} at the sink; agent: {summary}\nsink: {c}"
        );
    }
}

async fn settled(sink: &Proc, summary: &Value) -> Value {
    let want = |k: &str| summary[k].as_u64().unwrap();
    wait_for(sink, Duration::from_secs(15), |c| {
        method_count(c, SEGMENTS, "messages") >= want("segments")
            && method_count(c, LOGS, "messages") >= want("logs")
            && method_count(c, METERS, "messages") >= want("meters")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_drained_mid_run_loses_nothing() {
    python_bin().await; // installed before the peer's connections start ageing
    let sink = sink(&[]).await;
    let peer = satmesh(
        &[sink.grpc],
        "server:\n  max_connection_age: 1s\n  max_connection_age_grace: 10s\n",
    )
    .await;
    let mut agent = python_agent(peer.grpc).await;
    agent
        .args(["--service", "py", "--instance", "py-1", "--segments", "60"])
        .args(["--logs", "30", "--meters", "3", "--rate-per-sec", "25"]);
    let summary = run_agent("python agent", &mut agent, Duration::from_secs(90))
        .await
        .summary;
    assert_eq!(summary["stream_errors"], 0, "{summary}");
    assert_eq!(summary["management_errors"], 0, "{summary}");
    assert_eq!(
        (summary["segments"].as_u64(), summary["logs"].as_u64()),
        (Some(60), Some(30))
    );
    let c = settled(&sink, &summary).await;
    assert_agent_counts(&c, &summary);
    let drained = peer
        .metric("satmesh_connections_drained_total{reason=\"age\"}")
        .await;
    assert!(
        drained >= 2.0,
        "the agent's connection was drained mid-run ({drained})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_agent_drained_mid_run_has_its_long_streams_ended_and_loses_nothing() {
    rust_agent_bin().await; // built before the peer's connections start ageing
    let sink = sink(&[]).await;
    // The agent does not end a stream satmesh answered OK: hyper keeps piping its request
    // body, which the skywalking crate ends only after 30 s without an item, so each
    // drained connection stays open, its streams ended and idle, until the agent exits.
    // The grace (a deployment's 60 s) outlasts the agent's whole run (60 s at most, see
    // `run_agent` below): how fast a loaded machine runs the agent decides no hard close.
    let peer = satmesh(
        &[sink.grpc],
        "server:\n  max_connection_age: 1s\n  max_connection_age_grace: 60s\n  \
         drain_stream_after: 200ms\n  drain_stream_quiet: 100ms\n",
    )
    .await;
    let mut agent = rust_agent(peer.grpc).await;
    agent
        .args(["--service", "rs", "--instance", "rs-1", "--segments", "60"])
        .args(["--logs", "30", "--meters", "20", "--rate-per-sec", "25"]);
    let AgentRun { summary, output } =
        run_agent("rust agent", &mut agent, Duration::from_secs(60)).await;
    // A call the agent starts while its old connection is still draining fails once in
    // hyper's client before any of it is sent (nothing popped into it): it may show as
    // a stream or management error; what it reported must still all arrive.
    eprintln!("rust agent: {summary}\n{output}");
    assert!(
        summary["dropped"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == 0),
        "{summary}"
    );
    let c = settled(&sink, &summary).await;
    assert_agent_counts(&c, &summary);
    let drained = peer
        .metric("satmesh_connections_drained_total{reason=\"age\"}")
        .await;
    assert!(
        drained >= 2.0,
        "the agent's connection was drained mid-run ({drained})"
    );
    let ended = peer.metric("satmesh_streams_ended_on_drain_total").await;
    assert!(
        ended >= 1.0,
        "its 30 s streams were ended between messages ({ended})"
    );
    // Every connection, drained or not, is closed by the agent as it exits, none by
    // satmesh: no stream was reset.
    eventually(
        Duration::from_secs(10),
        "the agent's connections closed",
        || async { peer.connections().await["connections"] == Value::Array(vec![]) },
    )
    .await;
    let c = peer.connections().await;
    assert!(
        c["closed_hard"].as_object().unwrap().is_empty(),
        "no stream was reset: {c}"
    );
    assert_eq!(
        peer.metric("satmesh_connections_closed_hard_total{reason=\"age\"}")
            .await,
        0.0,
        "no stream was reset"
    );
}
