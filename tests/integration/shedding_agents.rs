//! Cluster-aware shedding with the real agents: Python (grpcio) and Rust (tonic) agent
//! processes, all connected to the first peer of a tier that then scales out to three,
//! are spread over the tier without losing what they reported. Both ways a client
//! reconnects are covered:
//!
//! - (b) a DNS name with three records, dialled first-address-first. The peers listen on
//!   127.0.0.2-4 with one port; each agent runs in its own mount namespace whose
//!   /etc/hosts gives `tier.satmesh.test` the three addresses (both agents resolve through
//!   the hosts file: glibc for tonic, c-ares for grpcio), so nothing on the machine changes;
//! - (a) an L4 virtual IP that picks a random ready peer per connection (a Kubernetes
//!   ClusterIP); the peers run with `balance.turn_away: false` there, as the Kubernetes
//!   manifests do, since a refused connection would fail the Python agent's calls.
//!
//! Needs root (`unshare -m`, `mount --bind`), as the rest of the suite's setup does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;

use crate::support::{admin::*, agents::*, processes::*, tier::*};

const NAME: &str = "tier.satmesh.test";
const PYTHON_AGENTS: usize = 6;
/// Each agent reports for about 50 s: connected through the whole rebalancing.
const SEGMENTS: u64 = 300;
const RATE: &str = "6";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_dialling_a_name_with_three_addresses_are_spread_without_loss() {
    let figures = scale_out(Dial::Name).await;
    println!("(b) multi-address, real agents: {figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agents_behind_a_virtual_ip_are_spread_without_loss() {
    let figures = scale_out(Dial::VirtualIp).await;
    println!("(a) virtual IP, real agents: {figures}");
}

/// How the agents reach the tier.
#[derive(Clone, Copy, PartialEq)]
enum Dial {
    /// `tier.satmesh.test`, three records in the agents' own /etc/hosts.
    Name,
    /// One address, a random ready peer per connection; peers do not turn connections
    /// away there (`balance.turn_away: false`).
    VirtualIp,
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

    async fn start_peer(&self, i: usize, oaps: &[SocketAddr], dial: Dial) -> Proc {
        let seeds: Vec<String> = self.gossip.iter().map(|a| a.to_string()).collect();
        let (id, listen, admin, gossip, seeds) = (
            format!("peer-{i}"),
            format!("{}:{}", self.ips[i], self.port),
            format!("{}:0", self.ips[i]),
            self.gossip[i].to_string(),
            seeds.join(","),
        );
        let turn_away = (dial == Dial::Name).to_string();
        let envs = [
            ("SATMESH__CLUSTER__NODE_ID", id.as_str()),
            ("SATMESH__CLUSTER__GOSSIP_LISTEN", gossip.as_str()),
            ("SATMESH__CLUSTER__SEEDS", seeds.as_str()),
            ("SATMESH__SERVER__LISTEN", listen.as_str()),
            ("SATMESH__ADMIN__LISTEN", admin.as_str()),
            ("SATMESH__BALANCE__TURN_AWAY", turn_away.as_str()),
        ];
        satmesh_env(oaps, "", &envs).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Python,
    Rust,
}

/// Starts agent `n` reporting to `collector` for about a minute, in a mount namespace
/// with `hosts` as its /etc/hosts when given; the task ends with its summary, after
/// checking that the agent lost nothing itself.
async fn start_agent(
    kind: Kind,
    n: usize,
    collector: &str,
    hosts: Option<&Path>,
) -> (String, tokio::task::JoinHandle<Value>) {
    let instance = format!("{kind:?}-{n}").to_lowercase();
    let mut cmd = match kind {
        Kind::Python => python_agent(collector).await,
        Kind::Rust => rust_agent(collector).await,
    };
    let (segments, logs) = (SEGMENTS.to_string(), (SEGMENTS / 2).to_string());
    cmd.args(["--service", "shed", "--instance", &instance])
        .args(["--segments", &segments, "--logs", &logs, "--meters", "5"])
        // The Rust agent's flush at exit waits for its client-streams, which it holds
        // open ~30 s after their last item: 40 s was overrun once on a loaded machine.
        .args(["--rate-per-sec", RATE, "--timeout-secs", "90"]);
    if let Some(hosts) = hosts {
        cmd = with_hosts(&cmd, hosts);
    }
    let name = instance.clone();
    let task = tokio::spawn(async move {
        let run = run_agent(&name, &mut cmd, Duration::from_secs(150)).await;
        let (summary, output) = (run.summary, run.output);
        let lost = if kind == Kind::Python {
            "lost"
        } else {
            "dropped"
        };
        assert!(
            summary[lost].as_object().unwrap().values().all(|v| v == 0),
            "{name} lost items itself: {summary}\n{output}"
        );
        assert_eq!(
            summary["segments"].as_u64(),
            Some(SEGMENTS),
            "{name} created every segment: {summary}"
        );
        summary
    });
    (instance, task)
}

/// `cmd` run in its own mount namespace where `hosts` is bind-mounted on /etc/hosts.
fn with_hosts(cmd: &Command, hosts: &Path) -> Command {
    let std = cmd.as_std();
    let mut wrapped = Command::new("unshare");
    wrapped
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(hosts)
        .arg(std.get_program())
        .args(std.get_args());
    for (key, value) in std.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// One peer with every agent, then three; returns the measured figures.
async fn scale_out(dial: Dial) -> String {
    // Behind a VIP a shed agent lands on a random peer, a third of the time the one it
    // left, so the moves are random (about 1.5x the minimum): with 12 agents, twice the
    // minimum was overrun now and then; 30 keep it a few standard deviations away.
    let rust_agents = match dial {
        Dial::Name => 6,
        Dial::VirtualIp => 24,
    };
    let count = PYTHON_AGENTS + rust_agents;
    let tier = TierAddrs::new();
    let sinks = [sink(&[]).await, sink(&[]).await];
    let oaps: Vec<SocketAddr> = sinks.iter().map(|s| s.grpc).collect();
    let mut peers = vec![tier.start_peer(0, &oaps, dial).await];
    ready(&peers[0]).await;
    let vip = Vip::start(&[&peers[0]]).await;
    let hosts = tier.hosts_file();
    let (collector, hosts) = match dial {
        Dial::Name => (format!("{NAME}:{}", tier.port), Some(hosts.path())),
        Dial::VirtualIp => (vip.addr.to_string(), None),
    };

    let mut agents = Vec::new();
    for n in 0..count {
        let kind = if n < PYTHON_AGENTS {
            Kind::Python
        } else {
            Kind::Rust
        };
        agents.push((kind, start_agent(kind, n, &collector, hosts).await));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while peers[0].metric("satmesh_agent_connections").await < count as f64 {
        assert!(
            Instant::now() < deadline,
            "the agents never all connected to the first peer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for i in 1..3 {
        let peer = tier.start_peer(i, &oaps, dial).await;
        vip.add(&peer);
        peers.push(peer);
    }
    let started = Instant::now();
    let mean = count as f64 / 3.0;
    let (balanced, counts) = loop {
        let counts = serving(&peers).await;
        let max = counts.iter().cloned().fold(0.0, f64::max);
        if max / mean <= 1.25 && counts.iter().sum::<f64>() == count as f64 {
            break (started.elapsed(), counts);
        }
        if started.elapsed() > Duration::from_secs(40) {
            panic!(
                "not balanced in 40 s: {counts:?}\n{}",
                statuses(&peers).await
            );
        }
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
    let min_moves = count as f64 - mean.ceil();
    // First-address dialling puts a shed agent where it is wanted: at most twice the
    // minimum. Behind a virtual IP it lands on a random peer (a third of the time the one
    // it left, a third of the time the other busy one, which may then shed it again), so
    // the count is random: 46 moves for a minimum of 20 were seen once in 13 loaded runs.
    // Oscillation is what this guards against, and the settling check above catches it.
    let bound = match dial {
        Dial::Name => 2.0,
        Dial::VirtualIp => 3.0,
    };
    assert!(
        moves <= bound * min_moves,
        "{moves} moves, minimum {min_moves}"
    );
    let returned = sum(&peers, "satmesh_connections_returned_total").await;
    let closings = sum(&peers, "satmesh_listener_closed_total").await;
    let ended = sum(&peers, "satmesh_streams_ended_on_drain_total").await;

    // Zero loss: what each agent reported arrived, split over the two sinks.
    let mut reported = 0;
    for (kind, (instance, task)) in agents {
        let summary = task.await.expect("agent task");
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
    // Read after the agents finished: what arrived on streams satmesh had already ended.
    let after_end = sum(&peers, "satmesh_messages_after_stream_end_total").await;
    for p in &mut peers {
        assert!(p.terminate(Duration::from_secs(40)).await.success());
    }
    format!(
        "{PYTHON_AGENTS} Python + {rust_agents} Rust agents: balanced (max/mean <= 1.25, {counts:?}) {:.1} s after scale-out, settled by {:.1} s, {moves} moves (minimum {min_moves}), {returned} came back, listener closed {closings} times, {ended} streams ended by satmesh ({after_end} messages read after their OK), {reported} items reported, 0 lost",
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
