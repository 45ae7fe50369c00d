//! The flags of `satmesh sink`, `satmesh bench` and `satmesh demo` (clap `Args`; the
//! binary flattens them into its subcommands) and what each command runs. The caller
//! owns the process: logging, the runtime, and `stop` (cancelled on SIGTERM or Ctrl-C).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::demo::{DemoSpec, Tier};
use crate::load::{self, LoadSpec, Progress, sink_admin};
use crate::sink::{self, Faults, Sink};

/// `satmesh sink`.
#[derive(Clone, Debug, clap::Args)]
pub struct SinkArgs {
    /// gRPC address the sink listens on (the OAP's port).
    #[arg(long, default_value = "127.0.0.1:11800")]
    pub listen: String,
    /// Admin address: `/counts`, `/faults`, `/latency`, `/healthz`.
    #[arg(long, default_value = "127.0.0.1:12800")]
    pub admin: String,
    #[command(flatten)]
    pub faults: Faults,
}

/// `satmesh bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub spec: LoadSpec,
    /// Admin address of the `satmesh sink` the data ends at: its /latency is reset at the
    /// start and the delivery latency (send -> sink) is added to the report.
    #[arg(long, value_name = "ADDR")]
    pub sink_admin: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of load: open N idle agent connections (one keepAlive call each) to the
    /// first target, hold them for --duration, report how many were established.
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
}

/// `satmesh demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Synthetic agents (one HTTP/2 connection each).
    #[arg(long, default_value_t = 60)]
    pub agents: usize,
    /// satmesh peers in the tier.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub peers: usize,
    /// Stop after this long (e.g. 30s); runs until Ctrl-C otherwise.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// A count of at least 1.
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number >= 1")),
    }
}

/// A rate in calls per second: finite and not negative.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate in calls per second (a number >= 0)"
        )),
    }
}

/// Runs the sink until `stop`.
pub async fn sink(args: SinkArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let admin = TcpListener::bind(&args.admin)
        .await
        .with_context(|| format!("binding {}", args.admin))?;
    println!(
        "sink listening grpc={} admin={}",
        grpc.local_addr()?,
        admin.local_addr()?
    );
    let sink = Sink::new(args.faults);
    let admin_task = tokio::spawn(sink::serve_admin(sink.clone(), admin, stop.clone()));
    sink::serve_grpc(sink, grpc, stop).await;
    let _ = admin_task.await;
    Ok(())
}

/// Runs the bench (or `--idle`) and prints its report; a line a second on stderr while
/// it runs.
pub async fn bench(args: BenchArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let BenchArgs {
        spec,
        sink_admin,
        json,
        idle,
    } = args;
    if let Some(n) = idle {
        return load::idle::bench(spec.targets[0], n, spec.duration, json, stop).await;
    }
    if let Some(admin) = &sink_admin {
        sink_admin::reset(admin)
            .await
            .context("resetting the sink's /latency")?;
    }
    let progress = Arc::new(Progress::default());
    let meters_on = spec.meter_streams_per_connection > 0;
    let pings_on = spec.keepalive_per_second > 0.0;
    let mut run = tokio::spawn(load::run(spec, progress.clone(), stop));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last, mut last_meters, mut seconds) = (0, 0, 0);
    let mut report = loop {
        tokio::select! {
            report = &mut run => break report?,
            _ = tick.tick() => {}
        }
        seconds += 1;
        let now = progress.messages.load(Ordering::Relaxed);
        let meters = progress.meters.load(Ordering::Relaxed);
        let mut line = format!("bench: {seconds}s {}/s segments ({now} in all)", now - last);
        if meters_on {
            line += &format!(", {}/s meters", meters - last_meters);
        }
        if pings_on {
            let unary = progress.unary();
            line += &format!(
                ", keepAlive {} calls p99 {:.2} ms",
                unary.count,
                unary.percentiles.p99_us as f64 / 1000.0
            );
        }
        let errors = progress.errors.load(Ordering::Relaxed);
        eprintln!("{line}, {errors} errors");
        (last, last_meters) = (now, meters);
    };
    if let Some(admin) = &sink_admin {
        // A peer may still be delivering what it told the bench it took.
        report.delivery = Some(
            sink_admin::settle(admin, report.messages, Duration::from_secs(10))
                .await
                .context("reading the sink's /latency")?,
        );
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.render());
    }
    Ok(())
}

/// Runs the demo with the binary's peers until the duration or `stop`.
pub async fn demo(args: DemoArgs, tier: impl Tier, stop: CancellationToken) -> anyhow::Result<()> {
    let spec = DemoSpec {
        agents: args.agents,
        peers: args.peers,
        duration: args.duration,
    };
    crate::demo::run(spec, tier, stop).await
}
