//! Gossip convergence of a real tier on loopback, with the shipped defaults.
//!
//!   cargo build --release && cargo run --release --example convergence -- 3
//!   cargo run --release --example convergence -- 10
//!
//! Starts N `satmesh run` peers (seeding each other) in front of two `satmesh sink` OAPs,
//! waits until they agree on one ring, then measures, polling every peer's `/status`:
//! 1. a connection count change (an agent connects to peer 0) until every peer shows it;
//! 2. an OAP going down (its sink is killed) until every peer shows every live peer
//!    reporting it unhealthy (includes the deliberate 0.5 s damping before a peer reports
//!    a node down), and until every peer routes with the new ring;
//! 3. a peer killed with SIGKILL until every other peer shows it dead.
//!
//! Each is repeated where it can be and reported as min / median / max.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const POLL: Duration = Duration::from_millis(20);

struct Proc {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
}

async fn spawn(bin: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn satmesh");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("listening line");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap()
            .parse()
            .unwrap()
    };
    Proc {
        child,
        grpc: field("grpc="),
        admin: field("admin="),
    }
}

async fn status(http: &reqwest::Client, p: &Proc) -> Option<Value> {
    let r = http
        .get(format!("http://{}/status", p.admin))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Polls `peers` until `check` holds on every one; returns the time it took.
async fn until(
    http: &reqwest::Client,
    peers: &[&Proc],
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut all = true;
        for p in peers {
            all &= status(http, p).await.is_some_and(|s| check(&s));
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no convergence in 120 s"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn peer<'a>(s: &'a Value, id: &str) -> Option<&'a Value> {
    s["peers"].as_array()?.iter().find(|p| p["node_id"] == id)
}

fn summary(label: &str, mut xs: Vec<Duration>) {
    xs.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label}: min {:.0} ms, median {:.0} ms, max {:.0} ms ({} runs)",
        ms(xs[0]),
        ms(xs[xs.len() / 2]),
        ms(xs[xs.len() - 1]),
        xs.len()
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(3, |a| a.parse().expect("peer count"));
    let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/satmesh");
    let http = reqwest::Client::new();
    let sink_args = ["sink", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    let mut sinks = vec![
        spawn(bin, &sink_args, &[]).await,
        spawn(bin, &sink_args, &[]).await,
    ];
    let oaps: Vec<String> = sinks.iter().map(|s| s.grpc.to_string()).collect();
    let ports: Vec<u16> = (0..n)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut peers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let envs = [
            ("SATMESH__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
            ("SATMESH__UPSTREAM__STATIC", oaps.join(",")),
            ("SATMESH__CLUSTER__NODE_ID", format!("peer-{i}")),
            (
                "SATMESH__CLUSTER__GOSSIP_LISTEN",
                format!("127.0.0.1:{port}"),
            ),
            ("SATMESH__CLUSTER__SEEDS", seeds.join(",")),
        ];
        peers.push(spawn(bin, &["run"], &envs).await);
    }
    let all: Vec<&Proc> = peers.iter().collect();
    let formed = until(&http, &all, |s| {
        s["totals"]["peers_live"] == n
            && s["ring"]["members"]
                .as_array()
                .is_some_and(|m| m.len() == 2)
            && s["ring"]["all_live_peers_agree"] == true
    })
    .await;
    println!("{n} peers, 2 OAPs, shipped defaults (gossip 500 ms)");
    println!(
        "tier formed (all live, one ring of 2 OAPs) after {:.1} s",
        formed.as_secs_f64()
    );

    // 1. A connection count change on peer 0, seen by every peer.
    let mut changes = Vec::new();
    for _ in 0..5 {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", peers[0].grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        changes.push(
            until(&http, &all, |s| {
                peer(s, "peer-0").is_some_and(|p| p["connections"] == 1)
            })
            .await,
        );
        drop(channel);
        until(&http, &all, |s| {
            peer(s, "peer-0").is_some_and(|p| p["connections"] == 0)
        })
        .await;
    }
    summary("connection count change visible on every peer", changes);

    // 2. An OAP goes down.
    let gone = sinks.remove(0);
    let gone_addr = gone.grpc.to_string();
    let mut gone = gone;
    let started = Instant::now();
    gone.child.kill().await.unwrap();
    let seen = until(&http, &all, |s| {
        s["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .filter(|p| p["live"] == true)
                .all(|p| p["oap_view"][&gone_addr] == false)
        })
    })
    .await;
    until(&http, &all, |s| {
        s["ring"]["members"]
            .as_array()
            .is_some_and(|m| m.len() == 1)
            && s["ring"]["all_live_peers_agree"] == true
    })
    .await;
    println!(
        "OAP down: every peer shows every live peer's view of it as unhealthy after {} ms; every peer routes with the new ring after {} ms (both from the kill)",
        seen.as_millis(),
        started.elapsed().as_millis()
    );

    // 3. Killed peers declared dead everywhere (one at a time, keeping at least 2).
    let mut deaths = Vec::new();
    let kills = (n - 2).clamp(1, 3);
    for k in 0..kills {
        let victim = n - 1 - k;
        let id = format!("peer-{victim}");
        peers[victim].child.kill().await.unwrap();
        let survivors: Vec<&Proc> = peers[..victim].iter().collect();
        deaths.push(
            until(&http, &survivors, |s| {
                peer(s, &id).is_some_and(|p| p["live"] == false)
            })
            .await,
        );
    }
    summary("killed peer declared dead on every other peer", deaths);
}
