//! Real SkyWalking agents report through satmesh to its fake OAP (`satmesh sink`), and every
//! message they say they sent arrives there, attributed to their service, instance and token.
//!
//! - `sw-rust-agent` (tests/rust-agent: crates.io `skywalking` 0.10). The test builds it
//!   with `cargo build -p satmesh-rust-agent` into the same target directory.
//! - `tests/agents/python_agent.py` (PyPI `apache-skywalking` 1.2.0, in `target/agents-venv`,
//!   made by `tests/agents/setup.sh`, which the test runs).
//!
//! Each agent prints one JSON line saying what it put on the wire (see their docs for how
//! they count); the test asserts that the agent lost nothing itself, that the sink got
//! exactly those numbers per service/instance, per method and per `authentication` token,
//! and that satmesh then exits 0 on SIGTERM.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;

use crate::support::admin::{method_count, wait_for};
use crate::support::agents::{
    AgentRun, python_agent, python_bin, run_agent, rust_agent, rust_agent_bin,
};
use crate::support::processes::{Proc, satmesh, sink};

const TRACE: &str = "/skywalking.v3.TraceSegmentReportService/collect";
const LOG: &str = "/skywalking.v3.LogReportService/collect";
const METER: &str = "/skywalking.v3.MeterReportService/collect";
const PROPS: &str = "/skywalking.v3.ManagementService/reportInstanceProperties";
const PING: &str = "/skywalking.v3.ManagementService/keepAlive";
/// Bound on everything arriving at the sink once the agents have exited.
const SETTLE: Duration = Duration::from_secs(30);
/// How long counts must stay unchanged (and right) before they are taken as final.
const QUIET: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// satmesh in front of its fake OAP (`satmesh sink`)

/// Poll the sink until it shows exactly what `agents` sent and stays so for `QUIET`; fail
/// with the differences and the counts after `SETTLE` (satmesh's own logs are on stderr).
async fn expect_arrived(sink: &Proc, agents: &[Sent]) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let counts = wait_for(sink, left, |c| mismatches(c, agents).is_empty()).await;
        let problems = mismatches(&counts, agents);
        assert!(
            problems.is_empty() && Instant::now() < deadline,
            "the sink did not receive exactly what the agents sent within {SETTLE:?}:\n  {}\n\
             agents: {agents:#?}\nsink counts: {counts:#}",
            problems.join("\n  ")
        );
        tokio::time::sleep(QUIET).await;
        if sink.counts().await == counts {
            return counts;
        }
    }
}

/// SIGTERM the proxy: it must drain and exit 0.
async fn stop_proxy(proxy: &mut Proc) {
    let status = proxy.terminate(Duration::from_secs(40)).await;
    assert!(
        status.success(),
        "satmesh run exited with {status} on SIGTERM"
    );
}

// ---------------------------------------------------------------------------------------
// What an agent says it sent, and what the sink must show for it

#[derive(Debug, Clone)]
struct Sent {
    agent: &'static str,
    service: String,
    instance: String,
    /// `authentication` metadata; the sink keys calls without it by "".
    token: String,
    segments: u64,
    logs: u64,
    meters: u64,
    properties: u64,
    pings: u64,
}

impl Sent {
    /// The agent's JSON summary; fails if the agent itself lost or failed to send anything.
    fn parse(agent: &'static str, token: &str, run: &AgentRun, want: &Want) -> Sent {
        let (v, output) = (&run.summary, &run.output);
        let num = |k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("{agent} summary has no {k}: {v}\n{output}"))
        };
        let zero = |k: &str| {
            let bad = match &v[k] {
                Value::Object(m) => m.values().any(|x| x.as_u64() != Some(0)),
                x => x.as_u64() != Some(0),
            };
            assert!(!bad, "{agent} reports {k} = {}: {v}\n{output}", v[k]);
        };
        match agent {
            "rust" => zero("dropped"),
            _ => {
                zero("lost");
                assert_eq!(
                    v["created"]["segments"], v["segments"],
                    "{agent} {v}\n{output}"
                );
                assert_eq!(v["created"]["logs"], v["logs"], "{agent} {v}\n{output}");
            }
        }
        zero("stream_errors");
        zero("management_errors");
        let sent = Sent {
            agent,
            service: v["service"].as_str().unwrap_or_default().to_owned(),
            instance: v["instance"].as_str().unwrap_or_default().to_owned(),
            token: token.to_owned(),
            segments: num("segments"),
            logs: num("logs"),
            meters: num("meters"),
            properties: num("properties"),
            pings: num("pings"),
        };
        assert_eq!(
            (sent.service.as_str(), sent.instance.as_str()),
            (want.service, want.instance),
            "{agent} reported under another name: {v}"
        );
        assert_eq!(
            sent.segments, want.segments,
            "{agent} segments: {v}\n{output}"
        );
        assert_eq!(sent.logs, want.logs, "{agent} logs: {v}\n{output}");
        assert!(sent.meters >= want.meters, "{agent} meters: {v}\n{output}");
        assert!(
            sent.properties >= 1 && sent.pings >= 1,
            "{agent} management: {v}\n{output}"
        );
        sent
    }

    fn messages(&self) -> u64 {
        self.segments + self.logs + self.meters + self.properties + self.pings
    }
}

/// One of the numbers an agent sent.
type Count = fn(&Sent) -> u64;

/// Every difference between the sink's counts and what the agents sent.
fn mismatches(counts: &Value, agents: &[Sent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: String, got: u64, want: u64| {
        if got != want {
            out.push(format!("{what}: sink has {got}, agents sent {want}"));
        }
    };
    let sum = |f: Count| agents.iter().map(f).sum::<u64>();

    for (signal, f) in [
        ("segments", (|s: &Sent| s.segments) as Count),
        ("logs", |s| s.logs),
        ("meters", |s| s.meters),
    ] {
        for a in agents {
            let got = per_instance(counts, signal, &a.service, &a.instance);
            check(
                format!("{signal} of {}/{} ({})", a.service, a.instance, a.agent),
                got,
                f(a),
            );
        }
        // Nothing else arrived for any other service or instance either.
        check(
            format!("{signal} of all services"),
            per_instance_total(counts, signal),
            sum(f),
        );
    }
    for (path, field, f) in [
        (TRACE, "messages", (|s: &Sent| s.segments) as Count),
        (LOG, "messages", |s| s.logs),
        (METER, "messages", |s| s.meters),
        (PROPS, "calls", |s| s.properties),
        (PING, "calls", |s| s.pings),
    ] {
        check(
            format!("{path} {field}"),
            method_count(counts, path, field),
            sum(f),
        );
    }

    // Every message the sink acknowledged parsed as its method's payload.
    check(
        "malformed messages".to_owned(),
        counts["malformed"].as_u64().unwrap_or(0),
        0,
    );

    let mut tokens: Vec<&str> = agents.iter().map(|a| a.token.as_str()).collect();
    tokens.sort_unstable();
    tokens.dedup();
    for token in tokens {
        let want = agents
            .iter()
            .filter(|a| a.token == token)
            .map(Sent::messages)
            .sum();
        let got = counts["authentication"][token].as_u64().unwrap_or(0);
        check(format!("messages with authentication {token:?}"), got, want);
    }
    out
}

fn per_instance(counts: &Value, signal: &str, service: &str, instance: &str) -> u64 {
    entries(counts, signal)
        .filter(|e| e["service"] == service && e["instance"] == instance)
        .map(|e| e["messages"].as_u64().unwrap_or(0))
        .sum()
}

fn per_instance_total(counts: &Value, signal: &str) -> u64 {
    entries(counts, signal)
        .map(|e| e["messages"].as_u64().unwrap_or(0))
        .sum()
}

fn entries<'a>(counts: &'a Value, signal: &str) -> impl Iterator<Item = &'a Value> {
    counts[signal].as_array().into_iter().flatten()
}

// ---------------------------------------------------------------------------------------
// The agents

/// What an agent is asked to send.
struct Want {
    service: &'static str,
    instance: &'static str,
    token: Option<&'static str>,
    segments: u64,
    logs: u64,
    meters: u64,
}

async fn run_rust_agent(collector: impl std::fmt::Display, want: &Want) -> Sent {
    let cmd = rust_agent(collector).await;
    report("rust", cmd, want, Duration::from_secs(60)).await
}

async fn run_python_agent(collector: impl std::fmt::Display, want: &Want) -> Sent {
    let cmd = python_agent(collector).await;
    report("python", cmd, want, Duration::from_secs(90)).await
}

/// Runs the agent with `want`'s flags and checks what it says it sent.
async fn report(agent: &'static str, mut cmd: Command, want: &Want, within: Duration) -> Sent {
    cmd.args(["--service", want.service, "--instance", want.instance])
        .args(["--segments", &want.segments.to_string()])
        .args(["--logs", &want.logs.to_string()])
        .args(["--meters", &want.meters.to_string()]);
    if let Some(token) = want.token {
        cmd.args(["--token", token]);
    }
    let run = run_agent(&format!("{agent} agent"), &mut cmd, within).await;
    Sent::parse(agent, want.token.unwrap_or(""), &run, want)
}

// ---------------------------------------------------------------------------------------
// Tests

const RUST: Want = Want {
    service: "rust-svc",
    instance: "rust-1",
    token: None,
    segments: 50,
    logs: 40,
    meters: 10,
};

const PYTHON: Want = Want {
    service: "python-svc",
    instance: "python-1",
    token: None,
    segments: 50,
    logs: 40,
    meters: 6,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_agent_reports_arrive_through_satmesh() {
    let sink = sink(&[]).await;
    let mut proxy = satmesh(&[sink.grpc], "").await;
    let sent = run_rust_agent(proxy.grpc, &RUST).await;
    expect_arrived(&sink, &[sent]).await;
    stop_proxy(&mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_reports_arrive_through_satmesh() {
    let sink = sink(&[]).await;
    let mut proxy = satmesh(&[sink.grpc], "").await;
    let sent = run_python_agent(proxy.grpc, &PYTHON).await;
    expect_arrived(&sink, &[sent]).await;
    stop_proxy(&mut proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_tokens_are_kept_apart() {
    // Build and install first, so the two agents really run at the same time.
    rust_agent_bin().await;
    python_bin().await;
    let sink = sink(&[]).await;
    let mut proxy = satmesh(&[sink.grpc], "").await;
    let rust = Want {
        token: Some("token-rust"),
        ..RUST
    };
    let python = Want {
        token: Some("token-python"),
        ..PYTHON
    };
    let (a, b) = tokio::join!(
        run_rust_agent(proxy.grpc, &rust),
        run_python_agent(proxy.grpc, &python)
    );
    let counts = expect_arrived(&sink, &[a, b]).await;
    assert_eq!(
        counts["authentication"].get(""),
        None,
        "calls without a token reached the sink: {counts:#}"
    );
    stop_proxy(&mut proxy).await;
}
