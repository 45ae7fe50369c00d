//! `satmesh demo`: one process, a whole local setup on loopback: a fake OAP (the sink),
//! a satmesh peer in front of it, and a synthetic agent fleet reporting through the peer.
//! Prints what flows every second; stops on Ctrl-C or after the duration.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::load::{self, LoadSpec, Progress};
use crate::sink::{Faults, Sink};

pub struct DemoSpec {
    pub agents: usize,
    pub duration: Option<Duration>,
}

pub async fn run(spec: DemoSpec, stop: CancellationToken) -> anyhow::Result<()> {
    let sink = Sink::new(Faults::default());
    let sink_grpc = TcpListener::bind("127.0.0.1:0").await?;
    let sink_admin = TcpListener::bind("127.0.0.1:0").await?;
    let (oap, oap_admin) = (sink_grpc.local_addr()?, sink_admin.local_addr()?);
    let sink_stop = CancellationToken::new();
    tokio::spawn(crate::sink::serve_grpc(
        sink.clone(),
        sink_grpc,
        sink_stop.clone(),
    ));
    tokio::spawn(crate::admin::serve(
        sink_admin,
        crate::sink::router(sink.clone()),
        sink_stop.clone(),
    ));

    let env = [
        ("SATMESH__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ("SATMESH__UPSTREAM__STATIC", oap.to_string()),
    ];
    let config = Config::load(
        None,
        Some(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ),
    )?;
    let listeners = crate::peer::Listeners::bind(&config).await?;
    let (grpc, admin) = listeners.addrs()?;
    println!("fake OAP      grpc={oap} counts=http://{oap_admin}/counts");
    println!("satmesh peer  grpc={grpc} metrics=http://{admin}/metrics");
    println!(
        "agents        {} synthetic agents reporting segments to the peer",
        spec.agents
    );
    let peer_stop = CancellationToken::new();
    let peer = tokio::spawn(crate::peer::run(config, listeners, {
        let s = peer_stop.clone();
        async move { s.cancelled().await }
    }));

    let progress = Arc::new(Progress::default());
    let load_stop = CancellationToken::new();
    let fleet = tokio::spawn(load::run(
        LoadSpec {
            targets: vec![grpc],
            connections: spec.agents,
            streams_per_connection: 1,
            messages_per_call: 20,
            message_bytes: 600,
            duration: spec
                .duration
                .unwrap_or(Duration::from_secs(365 * 24 * 3600)),
            max_messages: None,
            call_interval: Duration::ZERO,
        },
        progress.clone(),
        load_stop.clone(),
    ));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0;
    let until = spec.duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let sent = progress.messages.load(Ordering::Relaxed);
        let arrived: u64 = sink.counts().methods.values().map(|m| m.messages).sum();
        println!(
            "acknowledged to agents {sent:>9}  ({:>6}/s)   arrived at the OAP {arrived:>9}   errors {}",
            sent - last,
            progress.errors.load(Ordering::Relaxed)
        );
        last = sent;
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            break;
        }
    }
    if stop.is_cancelled() {
        // Ctrl-C: calls in flight are abandoned by the fleet; what satmesh already
        // queued from them is still delivered, so the OAP may count a few more.
        load_stop.cancel();
    }
    let _ = fleet.await;
    peer_stop.cancel();
    peer.await??;
    let sent = progress.messages.load(Ordering::Relaxed);
    let arrived: u64 = sink.counts().methods.values().map(|m| m.messages).sum();
    println!("stopped: {sent} messages acknowledged to agents, {arrived} arrived at the OAP");
    sink_stop.cancel();
    Ok(())
}
