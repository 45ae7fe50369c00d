//! Shared test harness: runs the real `satmesh` binary (as a peer or as the sink) on
//! ephemeral loopback ports, and speaks gRPC to it with opaque payloads.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use prost::Message;
use satmesh::codec::PassThrough;
use satmesh_proto::messages::{LogData, MeterData, SegmentObject, SpanObject};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub const BIN: &str = env!("CARGO_BIN_EXE_satmesh");

/// A running satmesh process with the addresses it printed.
pub struct Proc {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Starts `satmesh ARGS` and waits for its `... listening grpc=A admin=B` line.
    pub async fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn satmesh");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("satmesh printed no listening line within 20 s")
            .expect("read stdout")
            .expect("satmesh exited before listening");
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .expect("address")
        };
        let (grpc, admin) = (field("grpc="), field("admin="));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Proc {
            child,
            grpc,
            admin,
            _dir: None,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("satmesh did not exit in time after SIGTERM")
            .expect("wait")
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let r = reqwest::get(&url).await.expect("admin request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    pub async fn counts(&self) -> Value {
        let (_, body) = self.get("/counts").await;
        serde_json::from_str(&body).expect("counts json")
    }

    /// The value of one metric sample line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.trim().parse().expect("metric value"))
    }

    pub async fn set_faults(&self, faults: Value) {
        let url = format!("http://{}/faults", self.admin);
        let r = reqwest::Client::new()
            .post(url)
            .json(&faults)
            .send()
            .await
            .expect("faults");
        assert!(r.status().is_success());
    }
}

/// Starts a sink with extra flags.
pub async fn sink(flags: &[&str]) -> Proc {
    let mut args = vec!["sink", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    Proc::spawn(&args, &[]).await
}

/// Starts a peer with a config: listeners on port 0, `upstream.static` = `oaps`, plus
/// `extra` YAML sections.
pub async fn satmesh(oaps: &[SocketAddr], extra: &str) -> Proc {
    satmesh_env(oaps, extra, &[]).await
}

/// Like [`satmesh`], with `SATMESH__...` environment overrides. Listeners and the OAP
/// list come by environment, so `extra` may hold any section.
pub async fn satmesh_env(oaps: &[SocketAddr], extra: &str, envs: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("satmesh.yaml");
    std::fs::write(&path, extra).expect("write config");
    let list: Vec<String> = oaps.iter().map(|a| a.to_string()).collect();
    let list = list.join(",");
    let mut all = vec![
        ("SATMESH__SERVER__LISTEN", "127.0.0.1:0"),
        ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0"),
        ("SATMESH__UPSTREAM__STATIC", list.as_str()),
    ];
    all.extend_from_slice(envs);
    let mut p = Proc::spawn(
        &["run", "--config", path.to_str().expect("utf-8 path")],
        &all,
    )
    .await;
    p._dir = Some(dir);
    p
}

/// Polls `f` over the sink's counts until it holds or `within` passes.
pub async fn wait_for(p: &Proc, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let c = p.counts().await;
        if f(&c) {
            return c;
        }
        if start.elapsed() > within {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the peer's /readyz says ready.
pub async fn ready(p: &Proc) {
    for _ in 0..200 {
        if p.get("/readyz").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("satmesh never became ready");
}

pub fn method_count(c: &Value, path: &str, field: &str) -> u64 {
    c["methods"][path][field].as_u64().unwrap_or(0)
}

/// A gRPC client with opaque payloads, like an agent with one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
}

pub fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (k, v) in pairs {
        md.insert(*k, v.parse().expect("metadata value"));
    }
    md
}

fn request<T>(message: T, metadata: MetadataMap) -> Request<T> {
    let mut r = Request::new(message);
    *r.metadata_mut() = metadata;
    r
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to satmesh");
        Client {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// The same connection, sending its messages gzip-compressed (`grpc-encoding: gzip`).
    pub fn gzip(&self) -> Client {
        Client {
            grpc: self
                .grpc
                .clone()
                .send_compressed(tonic::codec::CompressionEncoding::Gzip),
        }
    }

    pub async fn unary(
        &self,
        path: &str,
        payload: Bytes,
        metadata: MetadataMap,
    ) -> Result<Bytes, Status> {
        let mut g = self.grpc.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        g.unary(request(payload, metadata), path, PassThrough)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn stream(
        &self,
        path: &str,
        payloads: Vec<Bytes>,
        metadata: MetadataMap,
    ) -> Result<Bytes, Status> {
        let mut g = self.grpc.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        let s = futures_util::stream::iter(payloads);
        g.client_streaming(request(s, metadata), path, PassThrough)
            .await
            .map(|r| r.into_inner())
    }

    /// A client-stream fed from a channel, for streams that stay open.
    pub async fn open_stream(
        &self,
        path: &str,
    ) -> (
        tokio::sync::mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<Result<Bytes, Status>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut g = self.grpc.clone();
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        let task = tokio::spawn(async move {
            g.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let s = tokio_stream_from(rx);
            g.client_streaming(Request::new(s), path, PassThrough)
                .await
                .map(|r| r.into_inner())
        });
        (tx, task)
    }

    pub async fn bidi(&self, path: &str, payloads: Vec<Bytes>) -> Result<Vec<Bytes>, Status> {
        use futures_util::StreamExt;
        let mut g = self.grpc.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        let s = futures_util::stream::iter(payloads);
        let answers = g
            .streaming(Request::new(s), path, PassThrough)
            .await?
            .into_inner();
        answers.collect::<Vec<_>>().await.into_iter().collect()
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A SegmentObject (`satmesh_proto::messages`) with one span whose operation name is
/// `pad` bytes of padding, followed by field 99: a field the protocol does not define,
/// which must reach the OAP untouched.
pub fn segment(service: &str, instance: &str, n: usize, pad: usize) -> Bytes {
    let fill = char::from(b'a' + (n % 26) as u8);
    let mut bytes = SegmentObject {
        trace_id: format!("trace-{n}"),
        trace_segment_id: format!("seg-{n}"),
        spans: vec![SpanObject {
            operation_name: std::iter::repeat_n(fill, pad).collect(),
            ..SpanObject::default()
        }],
        service: service.into(),
        service_instance: instance.into(),
        is_size_limited: false,
    }
    .encode_to_vec();
    prost::encoding::string::encode(99, &format!("future-field-{n}"), &mut bytes);
    bytes.into()
}

pub fn meter(service: &str, instance: &str, n: usize) -> Bytes {
    MeterData {
        service: service.into(),
        service_instance: instance.into(),
        timestamp: n as i64,
        ..MeterData::default()
    }
    .encode_to_vec()
    .into()
}

pub fn log(service: &str, instance: &str, n: usize) -> Bytes {
    LogData {
        timestamp: n as i64,
        service: service.into(),
        service_instance: instance.into(),
        ..LogData::default()
    }
    .encode_to_vec()
    .into()
}

pub fn digest(payloads: &[Bytes]) -> u64 {
    payloads.iter().fold(0u64, |acc, p| {
        acc.wrapping_add(satmesh_tools::sink::fnv1a(p))
    })
}

// ---------------------------------------------------------------------------------------
// Connection lifecycle: the front door's admin routes, and the real agents' binaries.

impl Proc {
    pub async fn post(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.admin);
        let r = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .expect("admin request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// `GET /connections`: the limit, counts by reason and every live connection.
    pub async fn connections(&self) -> Value {
        let (_, body) = self.get("/connections").await;
        serde_json::from_str(&body).expect("connections json")
    }

    /// Ids of the live connections in `state` (`serving`, `draining`), oldest first.
    pub async fn connection_ids(&self, state: &str) -> Vec<u64> {
        self.connections().await["connections"]
            .as_array()
            .expect("connections array")
            .iter()
            .filter(|c| c["state"] == state)
            .map(|c| c["id"].as_u64().expect("id"))
            .collect()
    }

    /// Drains connection `id` (reason `shed`); true if it was serving.
    pub async fn drain_connection(&self, id: u64) -> bool {
        let (status, body) = self.post(&format!("/connections/drain?id={id}")).await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("drain json");
        v["drained"] == 1
    }
}

static PYTHON_VENV: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
static RUST_AGENT: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();

/// The Python agent's script (PyPI `apache-skywalking`), run by [`python_bin`].
pub const PYTHON_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/agents/python_agent.py");

/// The Python interpreter of `target/agents-venv` (apache-skywalking 1.2.0), made by
/// tests/agents/setup.sh on first use.
pub async fn python_bin() -> &'static Path {
    PYTHON_VENV
        .get_or_init(|| async {
            let repo = env!("CARGO_MANIFEST_DIR");
            let mut setup = Command::new("bash");
            setup.arg(format!("{repo}/tests/agents/setup.sh"));
            let what = "tests/agents/setup.sh";
            let out = run_to_end(what, &mut setup, Duration::from_secs(600)).await;
            assert!(
                out.status.success(),
                "{what} failed (it installs apache-skywalking==1.2.0 from PyPI into \
                 target/agents-venv)\n{}",
                printed(what, &out.stdout, &out.stderr)
            );
            Path::new(repo).join("target/agents-venv/bin/python")
        })
        .await
}

/// `sw-rust-agent` (tests/rust-agent), built on first use next to the satmesh binary
/// under test, with the same profile.
pub async fn rust_agent_bin() -> &'static Path {
    RUST_AGENT
        .get_or_init(|| async {
            let profile_dir = Path::new(BIN).parent().expect("binary dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let bin = profile_dir.join("sw-rust-agent");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
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
                    build.arg("--release");
                }
                Some(other) => {
                    build.args(["--profile", other]);
                }
            }
            let what = "cargo build -p satmesh-rust-agent";
            let out = run_to_end(what, &mut build, Duration::from_secs(900)).await;
            assert!(
                out.status.success() && bin.exists(),
                "could not build {} (its build needs `protoc`: apt-get install \
                 protobuf-compiler)\n{}",
                bin.display(),
                printed(what, &out.stdout, &out.stderr)
            );
            bin
        })
        .await
}

/// `sw-rust-agent` reporting to `collector`; add its flags (`--service`, `--segments`, ...).
pub async fn rust_agent(collector: impl std::fmt::Display) -> Command {
    let mut cmd = Command::new(rust_agent_bin().await);
    cmd.env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector.to_string());
    cmd
}

/// The Python agent reporting to `collector`, `SW_AGENT_AUTHENTICATION` cleared (a token
/// comes only by `--token`); add its flags (`--service`, `--segments`, ...).
pub async fn python_agent(collector: impl std::fmt::Display) -> Command {
    let mut cmd = Command::new(python_bin().await);
    cmd.arg(PYTHON_AGENT)
        .env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector.to_string())
        .env_remove("SW_AGENT_AUTHENTICATION");
    cmd
}

/// What an agent said when it ended.
pub struct AgentRun {
    /// The JSON summary line it printed last on stdout.
    pub summary: Value,
    /// The tails of its stdout and stderr, for failure messages.
    pub output: String,
}

/// Runs an agent to its end (killed, and failing, after `within`): it must exit 0 and
/// print its JSON summary.
pub async fn run_agent(what: &str, cmd: &mut Command, within: Duration) -> AgentRun {
    let out = run_to_end(what, cmd, within).await;
    let output = printed(what, &out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "{what} exited with {}\n{output}",
        out.status
    );
    AgentRun {
        summary: agent_summary(&out.stdout),
        output,
    }
}

/// Runs `cmd` to its end with stdout and stderr captured; kills it and fails with what it
/// printed so far after `within`.
pub async fn run_to_end(what: &str, cmd: &mut Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let ended = tokio::time::timeout(within, async {
        tokio::try_join!(
            child.wait(),
            out.read_to_end(&mut stdout),
            err.read_to_end(&mut stderr)
        )
    })
    .await;
    // What was read before a timeout stays in the buffers, for the message.
    let status = match ended {
        Ok(Ok((status, _, _))) => status,
        Ok(Err(e)) => panic!("waiting on {what}: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "{what} did not exit within {within:?}\n{}",
                printed(what, &stdout, &stderr)
            );
        }
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The last lines a process printed on stdout and on stderr, for failure messages.
pub fn printed(what: &str, stdout: &[u8], stderr: &[u8]) -> String {
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    format!(
        "--- {what} stdout (tail) ---\n{}\n--- {what} stderr (tail) ---\n{}\n---",
        tail(stdout),
        tail(stderr)
    )
}

/// The JSON summary an agent printed last on stdout: its last line that is a JSON object.
pub fn agent_summary(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .find(Value::is_object)
        .unwrap_or_else(|| panic!("the agent printed no JSON summary:\n{text}"))
}

/// Waits (bounded) until the sink acknowledged exactly `sent` on `path`, bytes unchanged.
pub async fn assert_all_arrived(sink: &Proc, path: &str, sent: &[Bytes], within: Duration) {
    let c = wait_for(sink, within, |c| {
        method_count(c, path, "messages") >= sent.len() as u64
    })
    .await;
    assert_eq!(
        method_count(&c, path, "messages"),
        sent.len() as u64,
        "messages at the sink"
    );
    assert_eq!(
        method_count(&c, path, "digest"),
        digest(sent),
        "payload bytes at the sink"
    );
}

/// A free TCP port on loopback (for listeners that must be known before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on loopback (gossip ports peers list as seeds).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// A tier on loopback: peers that seed each other, and an L4 virtual IP in front of them.

/// Starts peer `i` of a tier: node id `peer-{i}`, agents on `127.0.0.1:{grpc}`, gossip on
/// `127.0.0.1:{gossip[i]}`, every gossip port as a seed, plus `envs` overrides.
pub async fn tier_peer(
    i: usize,
    grpc: u16,
    gossip: &[u16],
    oaps: &[SocketAddr],
    envs: &[(&str, &str)],
) -> Proc {
    let seeds: Vec<String> = gossip.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let seeds = seeds.join(",");
    let (id, listen, glisten) = (
        format!("peer-{i}"),
        format!("127.0.0.1:{grpc}"),
        format!("127.0.0.1:{}", gossip[i]),
    );
    let mut all = vec![
        ("SATMESH__CLUSTER__NODE_ID", id.as_str()),
        ("SATMESH__CLUSTER__GOSSIP_LISTEN", glisten.as_str()),
        ("SATMESH__CLUSTER__SEEDS", seeds.as_str()),
        ("SATMESH__SERVER__LISTEN", listen.as_str()),
    ];
    all.extend_from_slice(envs);
    satmesh_env(oaps, "", &all).await
}

/// An L4 virtual IP in front of a tier, as a Kubernetes ClusterIP with kube-proxy: each
/// new connection goes to one random *ready* backend, bytes copied both ways. A backend
/// is ready while its `/readyz` answers 200, polled every 100 ms (the endpoints controller
/// and kube-proxy take about a second). Like kube-proxy, a connection whose backend
/// refuses it is closed, not sent to another backend.
pub struct Vip {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<Backend>>>,
}

#[derive(Clone, Copy)]
struct Backend {
    grpc: SocketAddr,
    admin: SocketAddr,
    ready: bool,
}

impl Vip {
    pub async fn start(peers: &[&Proc]) -> Vip {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vip = Vip {
            addr: listener.local_addr().unwrap(),
            backends: Arc::default(),
        };
        for p in peers {
            vip.add(p);
        }
        let backends = vip.backends.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let ready: Vec<SocketAddr> = lock(&backends)
                    .iter()
                    .filter(|b| b.ready)
                    .map(|b| b.grpc)
                    .collect();
                if ready.is_empty() {
                    continue;
                }
                let pick = ready[rand::random_range(0..ready.len())];
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(pick).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        let backends = Arc::downgrade(&vip.backends);
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .build()
                .unwrap();
            while let Some(backends) = backends.upgrade() {
                let admins: Vec<SocketAddr> = lock(&backends).iter().map(|b| b.admin).collect();
                for admin in admins {
                    let ready = http
                        .get(format!("http://{admin}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    for b in lock(&backends).iter_mut().filter(|b| b.admin == admin) {
                        b.ready = ready;
                    }
                }
                drop(backends);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        vip
    }

    /// Puts `peer` behind the VIP (it takes connections once its readiness is seen).
    pub fn add(&self, peer: &Proc) {
        lock(&self.backends).push(Backend {
            grpc: peer.grpc,
            admin: peer.admin,
            ready: false,
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A gRPC call on a raw HTTP/2 connection (`h2`), for tests that shape the DATA frames
/// themselves: the response, the request stream, and the connection's task.
pub async fn raw_h2_call(
    addr: SocketAddr,
    path: &str,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, send) = h2.send_request(request, false).unwrap();
    (response, send, connection)
}

/// Reads a raw HTTP/2 gRPC response to its end and returns its `grpc-status`.
pub async fn raw_h2_status(response: http::Response<h2::RecvStream>) -> String {
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}
