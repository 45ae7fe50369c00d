//! `satmesh demo`: a whole tier in one process, on loopback, without Kubernetes: two fake
//! OAPs (sinks), three satmesh peers gossiping with each other, and a synthetic agent
//! fleet whose target lists the peers first-address-first, so every agent starts on the
//! first peer. It prints the tier's status table as the peers rebalance (and the URL of
//! the status page), and stops cleanly on Ctrl-C or after the duration.
//!
//! The peers are satmesh's own, started by the binary through [`Tier`]: this crate does
//! not link the satmesh library.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::load::{self, LoadSpec, Progress};
use crate::sink::{Faults, Sink};

pub struct DemoSpec {
    pub agents: usize,
    pub peers: usize,
    pub duration: Option<Duration>,
}

/// What one peer of the demo tier is started with; the rest of its config is the default.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    /// `cluster.node_id`.
    pub node_id: String,
    /// `upstream.static`: the demo's sinks.
    pub oaps: Vec<SocketAddr>,
    /// `cluster.gossip_listen`, picked free by the demo.
    pub gossip: SocketAddr,
    /// `cluster.seeds`: every peer's gossip address.
    pub seeds: Vec<SocketAddr>,
}

/// A started peer: where it listens (agents' gRPC and admin, both on port 0 of
/// loopback), and how to stop it.
pub struct PeerHandle {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Cancelled to shut the peer down.
    pub stop: CancellationToken,
    /// Ends when the peer has shut down.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// satmesh's side of the demo, given by the binary.
pub trait Tier {
    /// Binds and starts one peer.
    fn start_peer(&self, peer: PeerSpec) -> impl Future<Output = anyhow::Result<PeerHandle>>;
    /// The tier's status table as `satmesh status` prints it, read from a peer's admin.
    fn status(&self, admin: SocketAddr) -> impl Future<Output = anyhow::Result<String>>;
}

async fn start_sink(stop: &CancellationToken) -> anyhow::Result<(Arc<Sink>, SocketAddr)> {
    let sink = Sink::new(Faults::default());
    let grpc = TcpListener::bind("127.0.0.1:0").await?;
    let addr = grpc.local_addr()?;
    tokio::spawn(crate::sink::serve_grpc(sink.clone(), grpc, stop.clone()));
    Ok((sink, addr))
}

pub async fn run(spec: DemoSpec, tier: impl Tier, stop: CancellationToken) -> anyhow::Result<()> {
    let sinks_stop = CancellationToken::new();
    let mut sinks = Vec::new();
    for _ in 0..2 {
        sinks.push(start_sink(&sinks_stop).await?);
    }
    let oaps: Vec<SocketAddr> = sinks.iter().map(|(_, a)| *a).collect();

    // Gossip ports are picked first so every peer can list all of them as seeds.
    let mut gossip = Vec::new();
    for _ in 0..spec.peers {
        gossip.push(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?);
    }
    let mut peers = Vec::new();
    for (i, g) in gossip.iter().enumerate() {
        peers.push(
            tier.start_peer(PeerSpec {
                node_id: format!("peer-{i}"),
                oaps: oaps.clone(),
                gossip: *g,
                seeds: gossip.clone(),
            })
            .await?,
        );
    }
    let grpc_addrs: Vec<SocketAddr> = peers.iter().map(|p| p.grpc).collect();
    let admin_addrs: Vec<SocketAddr> = peers.iter().map(|p| p.admin).collect();
    let oaps: Vec<String> = oaps.iter().map(|a| a.to_string()).collect();
    println!("fake OAPs     {}", oaps.join(", "));
    for (i, (g, a)) in grpc_addrs.iter().zip(&admin_addrs).enumerate() {
        println!("peer-{i}        grpc={g} status page: http://{a}/status");
    }
    println!(
        "agents        {} synthetic agents dialling {} first-address-first",
        spec.agents,
        grpc_addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );

    let progress = Arc::new(Progress::default());
    let load_stop = CancellationToken::new();
    let fleet = tokio::spawn(load::run(
        LoadSpec {
            targets: grpc_addrs.clone(),
            connections: spec.agents,
            streams_per_connection: 1,
            messages_per_call: 10,
            message_bytes: 600,
            duration: spec
                .duration
                .unwrap_or(Duration::from_secs(365 * 24 * 3600)),
            max_messages: None,
            call_interval: Duration::from_millis(100),
            ..LoadSpec::default()
        },
        progress.clone(),
        load_stop.clone(),
    ));
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let until = spec.duration.map(|d| tokio::time::Instant::now() + d);
    let admin0 = admin_addrs[0];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let sent = progress.messages.load(Ordering::Relaxed);
        let arrived: u64 = sinks
            .iter()
            .map(|(s, _)| s.counts().methods.values().map(|m| m.messages).sum::<u64>())
            .sum();
        println!();
        match tier.status(admin0).await {
            Ok(table) => println!("{}", table.trim_end()),
            Err(e) => println!("status: {e}"),
        }
        println!(
            "agents: {sent} messages acknowledged, {arrived} arrived at the OAPs, {} errors",
            progress.errors.load(Ordering::Relaxed)
        );
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            break;
        }
    }
    if stop.is_cancelled() {
        // Ctrl-C: calls in flight are abandoned by the fleet; what satmesh already
        // queued from them is still delivered, so the OAPs may count a few more.
        load_stop.cancel();
    }
    let _ = fleet.await;
    for peer in &peers {
        peer.stop.cancel();
    }
    for peer in peers {
        peer.task.await??;
    }
    let sent = progress.messages.load(Ordering::Relaxed);
    let arrived: u64 = sinks
        .iter()
        .map(|(s, _)| s.counts().methods.values().map(|m| m.messages).sum::<u64>())
        .sum();
    println!("stopped: {sent} messages acknowledged to agents, {arrived} arrived at the OAPs");
    sinks_stop.cancel();
    Ok(())
}
