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

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::OnceCell,
    task::JoinHandle,
};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
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
// Child processes

type Lines = Arc<Mutex<Vec<String>>>;

/// A child process whose stdout and stderr are collected line by line; killed on drop.
struct Proc {
    name: String,
    child: Child,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let (stdout, stderr) = (Lines::default(), Lines::default());
        let readers = vec![
            tokio::spawn(collect(child.stdout.take().expect("piped"), stdout.clone())),
            tokio::spawn(collect(child.stderr.take().expect("piped"), stderr.clone())),
        ];
        Proc {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The first stdout line starting with `prefix`.
    async fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let found = lock(&self.stdout)
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain().await;
                panic!(
                    "{} exited ({status}) before printing {prefix:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not print {prefix:?} within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait for the process to exit, killing it (and failing) after `timeout`.
    async fn finish(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait on child");
                self.drain().await;
                status
            }
            Err(_) => {
                let _ = self.child.kill().await;
                self.drain().await;
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("process still running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot send SIGTERM to {} (pid {pid})", self.name);
    }

    /// Let the readers reach end of file after the process exited.
    async fn drain(&mut self) {
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
        }
    }

    /// The tail of what the process printed, for failure messages.
    fn dump(&self) -> String {
        let tail = |lines: &Lines| {
            let lines = lock(lines);
            let from = lines.len().saturating_sub(80);
            lines[from..].join("\n")
        };
        format!(
            "--- {} stdout (tail) ---\n{}\n--- {} stderr (tail) ---\n{}\n---",
            self.name,
            tail(&self.stdout),
            self.name,
            tail(&self.stderr)
        )
    }
}

async fn collect(pipe: impl AsyncRead + Unpin, into: Lines) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        lock(&into).push(line);
    }
}

fn lock(lines: &Lines) -> std::sync::MutexGuard<'_, Vec<String>> {
    lines.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `key=IP:PORT` field of a listening line.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// satmesh: a sink (fake OAP) and a proxy in front of it

struct Mesh {
    sink: Proc,
    sink_admin: String,
    proxy: Proc,
    /// What agents dial.
    proxy_grpc: String,
    _config: tempfile::NamedTempFile,
}

impl Mesh {
    async fn start() -> Mesh {
        let bin = env!("CARGO_BIN_EXE_satmesh");
        let mut sink = Proc::spawn(
            "satmesh sink",
            Command::new(bin).args(["sink", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]),
        );
        let line = sink
            .wait_line("sink listening", Duration::from_secs(20))
            .await;
        let (sink_grpc, sink_admin) = (field(&line, "grpc"), field(&line, "admin"));

        let config = tempfile::Builder::new()
            .prefix("satmesh-real-agents-")
            .suffix(".yaml")
            .tempfile()
            .expect("temp config");
        let yaml = format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\n\
             admin: {{ listen: \"127.0.0.1:0\" }}\n\
             upstream: {{ static: [\"{sink_grpc}\"] }}\n"
        );
        std::fs::write(config.path(), yaml).expect("write config");
        let mut proxy = Proc::spawn(
            "satmesh run",
            Command::new(bin)
                .args(["run", "--config"])
                .arg(config.path()),
        );
        let line = proxy
            .wait_line("satmesh listening", Duration::from_secs(20))
            .await;
        Mesh {
            sink,
            sink_admin,
            proxy_grpc: field(&line, "grpc"),
            proxy,
            _config: config,
        }
    }

    async fn counts(&self) -> Result<Value, String> {
        let url = format!("http://{}/counts", self.sink_admin);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        resp.json().await.map_err(|e| format!("GET {url}: {e}"))
    }

    /// Poll the sink until it shows exactly what `agents` sent and stays so for `QUIET`;
    /// fail with the differences, the counts and satmesh's output after `SETTLE`.
    async fn expect_arrived(&self, agents: &[Sent]) -> Value {
        let start = Instant::now();
        let mut stable: Option<(Value, Instant)> = None;
        loop {
            let (counts, problems) = match self.counts().await {
                Ok(c) => {
                    let p = mismatches(&c, agents);
                    (c, p)
                }
                Err(e) => (Value::Null, vec![e]),
            };
            if problems.is_empty() {
                match &stable {
                    Some((prev, since)) if *prev == counts => {
                        if since.elapsed() >= QUIET {
                            return counts;
                        }
                    }
                    _ => stable = Some((counts.clone(), Instant::now())),
                }
            } else {
                stable = None;
            }
            if start.elapsed() > SETTLE {
                panic!(
                    "the sink did not receive exactly what the agents sent within {SETTLE:?}:\n  {}\n\
                     agents: {agents:#?}\nsink counts: {counts:#}\n{}\n{}",
                    problems.join("\n  "),
                    self.proxy.dump(),
                    self.sink.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM the proxy: it must drain and exit 0.
    async fn stop_proxy(&mut self) {
        self.proxy.sigterm();
        let status = self.proxy.finish(Duration::from_secs(40)).await;
        assert!(
            status.success(),
            "satmesh run exited with {status} on SIGTERM\n{}",
            self.proxy.dump()
        );
    }
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
    /// The agent's JSON line; fails if the agent itself lost or failed to send anything.
    fn parse(agent: &'static str, token: &str, stdout: &str, want: &Want, output: &str) -> Sent {
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'));
        let v: Value = line
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("{agent} printed no JSON summary\n{output}"));
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

/// Every difference between the sink's counts and what the agents sent.
fn mismatches(counts: &Value, agents: &[Sent]) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |what: String, got: u64, want: u64| {
        if got != want {
            out.push(format!("{what}: sink has {got}, agents sent {want}"));
        }
    };
    let sum = |f: fn(&Sent) -> u64| agents.iter().map(f).sum::<u64>();

    for (signal, f) in [
        ("segments", (|s: &Sent| s.segments) as fn(&Sent) -> u64),
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
    check(
        format!("{TRACE} messages"),
        method(counts, TRACE, "messages"),
        sum(|s| s.segments),
    );
    check(
        format!("{LOG} messages"),
        method(counts, LOG, "messages"),
        sum(|s| s.logs),
    );
    check(
        format!("{METER} messages"),
        method(counts, METER, "messages"),
        sum(|s| s.meters),
    );
    check(
        format!("{PROPS} calls"),
        method(counts, PROPS, "calls"),
        sum(|s| s.properties),
    );
    check(
        format!("{PING} calls"),
        method(counts, PING, "calls"),
        sum(|s| s.pings),
    );

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

fn method(counts: &Value, path: &str, field: &str) -> u64 {
    counts["methods"][path][field].as_u64().unwrap_or(0)
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

static RUST_AGENT: OnceCell<PathBuf> = OnceCell::const_new();
static PYTHON_VENV: OnceCell<PathBuf> = OnceCell::const_new();

/// `sw-rust-agent`, built next to the satmesh binary under test.
async fn rust_agent_bin() -> &'static Path {
    RUST_AGENT.get_or_init(build_rust_agent).await
}

async fn build_rust_agent() -> PathBuf {
    let profile_dir = Path::new(env!("CARGO_BIN_EXE_satmesh"))
        .parent()
        .expect("binary directory");
    let target_dir = profile_dir.parent().expect("target directory");
    let bin = profile_dir.join("sw-rust-agent");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(REPO)
        .args([
            "build",
            "-p",
            "satmesh-rust-agent",
            "--bin",
            "sw-rust-agent",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    let mut build = Proc::spawn("cargo build -p satmesh-rust-agent", &mut cmd);
    let status = build.finish(Duration::from_secs(900)).await;
    assert!(
        status.success() && bin.exists(),
        "could not build {} (run `cargo build -p satmesh-rust-agent` yourself to see why; \
         its build needs `protoc`: apt-get install protobuf-compiler)\n{}",
        bin.display(),
        build.dump()
    );
    bin
}

/// The Python interpreter of `target/agents-venv`, made by tests/agents/setup.sh.
async fn python_bin() -> &'static Path {
    PYTHON_VENV
        .get_or_init(|| async {
            let mut setup = Proc::spawn(
                "tests/agents/setup.sh",
                Command::new("bash").arg(Path::new(REPO).join("tests/agents/setup.sh")),
            );
            let status = setup.finish(Duration::from_secs(600)).await;
            assert!(
                status.success(),
                "tests/agents/setup.sh failed (it installs apache-skywalking==1.2.0 from PyPI \
                 into target/agents-venv)\n{}",
                setup.dump()
            );
            Path::new(REPO).join("target/agents-venv/bin/python")
        })
        .await
}

async fn run_rust_agent(collector: &str, want: &Want) -> Sent {
    let mut cmd = Command::new(rust_agent_bin().await);
    cmd.env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector);
    run_agent("rust", cmd, want, Duration::from_secs(60)).await
}

async fn run_python_agent(collector: &str, want: &Want) -> Sent {
    let mut cmd = Command::new(python_bin().await);
    cmd.arg(Path::new(REPO).join("tests/agents/python_agent.py"))
        .env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector)
        .env_remove("SW_AGENT_AUTHENTICATION");
    run_agent("python", cmd, want, Duration::from_secs(90)).await
}

async fn run_agent(agent: &'static str, mut cmd: Command, want: &Want, timeout: Duration) -> Sent {
    cmd.args(["--service", want.service, "--instance", want.instance])
        .args(["--segments", &want.segments.to_string()])
        .args(["--logs", &want.logs.to_string()])
        .args(["--meters", &want.meters.to_string()]);
    if let Some(token) = want.token {
        cmd.args(["--token", token]);
    }
    let mut proc = Proc::spawn(&format!("{agent} agent"), &mut cmd);
    let status = proc.finish(timeout).await;
    let output = proc.dump();
    assert!(
        status.success(),
        "{agent} agent exited with {status}\n{output}"
    );
    let stdout = lock(&proc.stdout).join("\n");
    Sent::parse(agent, want.token.unwrap_or(""), &stdout, want, &output)
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
    let mut mesh = Mesh::start().await;
    let sent = run_rust_agent(&mesh.proxy_grpc, &RUST).await;
    mesh.expect_arrived(&[sent]).await;
    mesh.stop_proxy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_agent_reports_arrive_through_satmesh() {
    let mut mesh = Mesh::start().await;
    let sent = run_python_agent(&mesh.proxy_grpc, &PYTHON).await;
    mesh.expect_arrived(&[sent]).await;
    mesh.stop_proxy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_with_tokens_are_kept_apart() {
    // Build and install first, so the two agents really run at the same time.
    rust_agent_bin().await;
    python_bin().await;
    let mut mesh = Mesh::start().await;
    let rust = Want {
        token: Some("token-rust"),
        ..RUST
    };
    let python = Want {
        token: Some("token-python"),
        ..PYTHON
    };
    let (a, b) = tokio::join!(
        run_rust_agent(&mesh.proxy_grpc, &rust),
        run_python_agent(&mesh.proxy_grpc, &python)
    );
    let counts = mesh.expect_arrived(&[a, b]).await;
    assert_eq!(
        counts["authentication"].get(""),
        None,
        "calls without a token reached the sink: {counts:#}"
    );
    mesh.stop_proxy().await;
}
