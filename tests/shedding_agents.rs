//! Cluster-aware shedding with the real agents: Python (grpcio) and Rust (tonic) agent
//! processes, all connected to the first peer of a tier that then scales out to three,
//! are spread over the tier without losing what they reported. Both ways a client
//! reconnects are covered:
//!
//! - (b) a DNS name with three records, dialled first-address-first. The peers listen on
//!   127.0.0.2-4 with one port; each agent runs in its own mount namespace whose
//!   /etc/hosts gives `tier.satmesh.test` the three addresses (both agents resolve through
//!   the hosts file: glibc for tonic, c-ares for grpcio), so nothing on the machine changes;
//! - (a) an L4 virtual IP that picks a random peer per connection (a Kubernetes ClusterIP).
//!
//! Needs root (`unshare -m`, `mount --bind`), as the rest of the suite's setup does.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::process::{Child, Command};

const NAME: &str = "tier.satmesh.test";
const PYTHON_AGENTS: usize = 6;
const RUST_AGENTS: usize = 6;
const AGENTS: usize = PYTHON_AGENTS + RUST_AGENTS;
/// Each agent reports for about 60 s: connected through the whole rebalancing.
const SEGMENTS: u64 = 360;
const RATE: &str = "6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_dialling_a_name_with_three_addresses_are_spread_without_loss() {
    let tier = TierAddrs::new();
    let hosts = tier.hosts_file();
    let collector = format!("{NAME}:{}", tier.port);
    let figures = scale_out(&tier, &collector, Some(hosts.path())).await;
    println!("(b) multi-address, real agents: {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_behind_a_virtual_ip_are_spread_without_loss() {
    let tier = TierAddrs::new();
    let vip = vip(tier.grpc_addrs()).await;
    let figures = scale_out(&tier, &vip.to_string(), None).await;
    println!("(a) virtual IP, real agents: {figures}");
}

/// Three peers' addresses: agent port shared on 127.0.0.2-4 (a name's A records carry no
/// port), gossip and admin ports of their own.
struct TierAddrs {
    ips: [Ipv4Addr; 3],
    port: u16,
    gossip: Vec<SocketAddr>,
}

impl TierAddrs {
    fn new() -> TierAddrs {
        let ips = [2, 3, 4].map(|last| Ipv4Addr::new(127, 0, 0, last));
        let port = (0..50)
            .map(|_| free_port())
            .find(|p| {
                ips.iter()
                    .all(|ip| std::net::TcpListener::bind((*ip, *p)).is_ok())
            })
            .expect("a port free on 127.0.0.2-4");
        let gossip = ips
            .iter()
            .map(|ip| {
                std::net::UdpSocket::bind((*ip, 0))
                    .unwrap()
                    .local_addr()
                    .unwrap()
            })
            .collect();
        TierAddrs { ips, port, gossip }
    }

    fn grpc_addrs(&self) -> Vec<SocketAddr> {
        self.ips
            .iter()
            .map(|ip| SocketAddr::from((*ip, self.port)))
            .collect()
    }

    /// This machine's /etc/hosts plus the tier's name with the peers in order.
    fn hosts_file(&self) -> tempfile::NamedTempFile {
        let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        for ip in &self.ips {
            text.push_str(&format!("\n{ip} {NAME}"));
        }
        text.push('\n');
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write hosts file");
        file
    }

    async fn start_peer(&self, i: usize, oaps: &[SocketAddr]) -> Proc {
        let seeds: Vec<String> = self.gossip.iter().map(|a| a.to_string()).collect();
        let (id, listen, admin, gossip, seeds) = (
            format!("peer-{i}"),
            format!("{}:{}", self.ips[i], self.port),
            format!("{}:0", self.ips[i]),
            self.gossip[i].to_string(),
            seeds.join(","),
        );
        let envs = [
            ("SATMESH__CLUSTER__NODE_ID", id.as_str()),
            ("SATMESH__CLUSTER__GOSSIP_LISTEN", gossip.as_str()),
            ("SATMESH__CLUSTER__SEEDS", seeds.as_str()),
            ("SATMESH__SERVER__LISTEN", listen.as_str()),
            ("SATMESH__ADMIN__LISTEN", admin.as_str()),
        ];
        satmesh_env(oaps, "", &envs).await
    }
}

/// An L4 virtual IP, as a Kubernetes ClusterIP: each connection goes to a random
/// backend that accepts, bytes copied both ways.
async fn vip(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let backends = backends.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let pick = backends[rand::random_range(0..backends.len())];
                    if let Ok(mut server) = tokio::net::TcpStream::connect(pick).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Python,
    Rust,
}

struct Agent {
    kind: Kind,
    instance: String,
    child: Child,
}

/// Starts one agent reporting to `collector`, in a mount namespace with `hosts` as its
/// /etc/hosts when given.
async fn start_agent(kind: Kind, n: usize, collector: &str, hosts: Option<&Path>) -> Agent {
    let instance = format!("{kind:?}-{n}").to_lowercase();
    let (program, mut args): (PathBuf, Vec<String>) = match kind {
        Kind::Python => (
            python_bin().await.to_path_buf(),
            vec![format!(
                "{}/tests/agents/python_agent.py",
                env!("CARGO_MANIFEST_DIR")
            )],
        ),
        Kind::Rust => (rust_agent_bin().await.to_path_buf(), vec![]),
    };
    let segments = SEGMENTS.to_string();
    let logs = (SEGMENTS / 2).to_string();
    args.extend(
        [
            "--service",
            "shed",
            "--instance",
            &instance,
            "--segments",
            &segments,
            "--logs",
            &logs,
            "--meters",
            "5",
            "--rate-per-sec",
            RATE,
            "--timeout-secs",
            "40",
        ]
        .map(String::from),
    );
    let mut cmd = match hosts {
        Some(hosts) => {
            let mut c = Command::new("unshare");
            c.args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\""])
                .arg(hosts)
                .arg(&program);
            c
        }
        None => Command::new(&program),
    };
    cmd.args(&args)
        .env("SW_AGENT_COLLECTOR_BACKEND_SERVICES", collector)
        .env_remove("SW_AGENT_AUTHENTICATION")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Agent {
        kind,
        instance,
        child: cmd.spawn().expect("start agent"),
    }
}

/// Waits for an agent to finish and returns its summary, checking it lost nothing itself.
async fn finish(agent: Agent) -> Value {
    let Agent {
        kind,
        instance,
        child,
    } = agent;
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{instance} did not finish"))
        .expect("agent output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{instance} failed:\n{stderr}");
    let summary = agent_summary(&out.stdout);
    let lost_key = if kind == Kind::Python { "lost" } else { "dropped" };
    assert!(
        summary[lost_key].as_object().unwrap().values().all(|v| v == 0),
        "{instance} lost items itself: {summary}\n{stderr}"
    );
    assert_eq!(
        summary["segments"].as_u64(),
        Some(SEGMENTS),
        "{instance} created every segment: {summary}"
    );
    summary
}

/// One peer with every agent, then three; returns the measured figures.
async fn scale_out(tier: &TierAddrs, collector: &str, hosts: Option<&Path>) -> String {
    let sinks = [sink(&[]).await, sink(&[]).await];
    let oaps: Vec<SocketAddr> = sinks.iter().map(|s| s.grpc).collect();
    let mut peers = vec![tier.start_peer(0, &oaps).await];
    ready(&peers[0]).await;

    let mut agents = Vec::new();
    for n in 0..AGENTS {
        let kind = if n < PYTHON_AGENTS {
            Kind::Python
        } else {
            Kind::Rust
        };
        agents.push(start_agent(kind, n, collector, hosts).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers[0].metric("satmesh_agent_connections").await < AGENTS as f64 {
        assert!(
            Instant::now() < deadline,
            "the agents never all connected to the first peer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for i in 1..3 {
        peers.push(tier.start_peer(i, &oaps).await);
    }
    let started = Instant::now();
    let mean = AGENTS as f64 / 3.0;
    let (balanced, counts) = loop {
        let counts = serving(&peers).await;
        let max = counts.iter().cloned().fold(0.0, f64::max);
        if max / mean <= 1.25 && counts.iter().sum::<f64>() == AGENTS as f64 {
            break (started.elapsed(), counts);
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "not balanced in 40 s: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Settled: 5 s without a shed; then no shed for 8 s more (no oscillation).
    let mut moves = sum(&peers, "satmesh_connections_drained_total{reason=\"shed\"}").await;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = sum(&peers, "satmesh_connections_drained_total{reason=\"shed\"}").await;
        if now == moves {
            break;
        }
        moves = now;
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "still shedding 40 s after scale-out"
        );
    }
    let settled = started.elapsed();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        sum(&peers, "satmesh_connections_drained_total{reason=\"shed\"}").await,
        moves,
        "peers shed again after the tier settled"
    );
    let min_moves = AGENTS as f64 - mean.ceil();
    assert!(
        moves <= 2.0 * min_moves,
        "{moves} moves, minimum {min_moves}"
    );
    let returned = sum(&peers, "satmesh_connections_returned_total").await;
    let closings = sum(&peers, "satmesh_listener_closed_total").await;

    // Zero loss: what each agent reported arrived, split over the two sinks.
    let mut reported = 0;
    for agent in agents {
        let (kind, instance) = (agent.kind, agent.instance.clone());
        let summary = finish(agent).await;
        for signal in ["segments", "logs", "meters"] {
            let want = summary[signal].as_u64().unwrap();
            reported += want;
            let deadline = Instant::now() + Duration::from_secs(15);
            let got = loop {
                let got = at_sinks(&sinks, signal, &instance).await;
                if got >= want || Instant::now() > deadline {
                    break got;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(got, want, "{signal} of {instance} ({kind:?}) at the sinks");
        }
    }
    for p in &mut peers {
        assert!(p.terminate(Duration::from_secs(40)).await.success());
    }
    format!(
        "{PYTHON_AGENTS} Python + {RUST_AGENTS} Rust agents: balanced (max/mean <= 1.25, {counts:?}) {:.1} s after scale-out, settled by {:.1} s, {moves} moves (minimum {min_moves}), {returned} came back, listener closed {closings} times, {reported} items reported, 0 lost",
        balanced.as_secs_f64(),
        settled.as_secs_f64()
    )
}

/// Connections each peer serves (draining ones are on their way out).
async fn serving(peers: &[Proc]) -> Vec<f64> {
    let mut counts = Vec::new();
    for p in peers {
        let open = p.metric("satmesh_agent_connections").await;
        let draining = p.metric("satmesh_agent_connections_draining").await;
        counts.push(open - draining);
    }
    counts
}

async fn sum(peers: &[Proc], sample: &str) -> f64 {
    let mut total = 0.0;
    for p in peers {
        total += p.metric(sample).await;
    }
    total
}

/// Messages of `signal` from `instance` acknowledged by both sinks together.
async fn at_sinks(sinks: &[Proc], signal: &str, instance: &str) -> u64 {
    let mut total = 0;
    for s in sinks {
        let c = s.counts().await;
        total += c[signal]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["instance"] == instance)
            .map(|e| e["messages"].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    total
}
