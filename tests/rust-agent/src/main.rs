//! `sw-rust-agent`: the real SkyWalking Rust agent (crates.io `skywalking` 0.10) reporting a
//! fixed amount of every signal to `SW_AGENT_COLLECTOR_BACKEND_SERVICES`, for satmesh's
//! integration tests.
//!
//! It reports management (properties, then keep-alives until at least one ping was handed
//! over), N segments (entry span containing a local span), N log records and at least N
//! meter values (one `Counter` booted on the crate's `Metricer`, each report one
//! `MeterData`), then shuts the reporter down gracefully so every queued item is flushed
//! and every client-stream is closed by the agent, and prints one JSON line on stdout:
//!
//! `{"service":..,"instance":..,"segments":N,"logs":N,"meters":M,"properties":1,"pings":P,
//!   "dropped":{..},"stream_errors":0,"management_errors":0}`
//!
//! Each count is what was handed to the reporter and queued for the wire; `dropped`,
//! `stream_errors` and `management_errors` say what the crate itself lost.

mod counting;

use anyhow::{Context, bail};
use clap::Parser;
use counting::{CountingReport, Counts};
use skywalking::{
    logging::{logger::Logger, record::LogRecord},
    management::{instance::Properties, manager::Manager},
    metrics::{meter::Counter, metricer::Metricer},
    reporter::grpc::GrpcReporter,
    trace::tracer::Tracer,
};
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tonic::transport::Endpoint;

#[derive(Parser, Debug)]
#[command(about = "Report a fixed number of SkyWalking items with the real Rust agent")]
struct Args {
    /// Service name on every item.
    #[arg(long)]
    service: String,
    /// Service instance name on every item.
    #[arg(long)]
    instance: String,
    /// Trace segments to report (each one entry span containing one local span).
    #[arg(long, default_value_t = 10)]
    segments: u64,
    /// Log records to report.
    #[arg(long, default_value_t = 10)]
    logs: u64,
    /// Meter values to report at least (the count printed is exact).
    #[arg(long, default_value_t = 10)]
    meters: u64,
    /// Value of the `authentication` metadata on every call.
    #[arg(long)]
    token: Option<String>,
    /// Pace segments and logs to this many items per second (default: as fast as possible;
    /// the crate drops items beyond 255 queued per signal, which shows in `dropped`).
    #[arg(long)]
    rate_per_sec: Option<f64>,
    /// Metricer report interval.
    #[arg(long, default_value_t = 50)]
    meter_interval_ms: u64,
    /// Bound on every wait (management, meters, final flush).
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = std::env::var("SW_AGENT_COLLECTOR_BACKEND_SERVICES")
        .context("SW_AGENT_COLLECTOR_BACKEND_SERVICES (host:port) is not set")?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let counts = Arc::new(Counts::default());

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad collector address {addr:?}"))?
        .connect_lazy();
    let on_err = Arc::clone(&counts);
    let mut reporter = GrpcReporter::new(channel).with_err_handle(move |msg, err| {
        on_err.on_err(msg);
        eprintln!("sw-rust-agent: {msg}: {err}");
    });
    if let Some(token) = &args.token {
        reporter = reporter.with_authentication(token.clone());
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let on_status = Arc::clone(&counts);
    let reporting = reporter
        .reporting()
        .await
        .with_status_handle(move |msg, status| {
            on_status.on_status(msg);
            eprintln!("sw-rust-agent: {msg}: {status}");
        })
        .with_graceful_shutdown(async move {
            let _ = stop_rx.await;
        })
        .spawn();

    let report = CountingReport {
        inner: reporter.clone(),
        counts: Arc::clone(&counts),
    };

    // Management: properties at once, a keep-alive every 100 ms; stop after the first ping.
    let manager = Manager::new(&args.service, &args.instance, report.clone());
    let keep_alive = manager.report_and_keep_alive(
        || {
            let mut props = Properties::default();
            props.insert_os_info();
            props
        },
        Duration::from_millis(100),
        1_000_000,
    );

    let pace = args.rate_per_sec.map(|r| Duration::from_secs_f64(1.0 / r));

    let tracer = Tracer::new(&args.service, &args.instance, report.clone());
    for i in 0..args.segments {
        let mut ctx = tracer.create_trace_context();
        {
            let _entry = ctx.create_entry_span(&format!("/satmesh-test/{i}"));
            let _local = ctx.create_local_span("satmesh-test-local");
        }
        // Dropping the context finalizes the segment and hands it to the reporter.
        drop(ctx);
        pause(pace).await;
    }

    let logger = Logger::new(&args.service, &args.instance, report.clone());
    for i in 0..args.logs {
        logger.log(
            LogRecord::new()
                .endpoint("/satmesh-test")
                .add_tag("level", "WARN")
                .content(format!("satmesh test log {i}")),
        );
        pause(pace).await;
    }

    if args.meters > 0 {
        let mut metricer = Metricer::new(&args.service, &args.instance, report.clone());
        metricer.set_report_interval(Duration::from_millis(args.meter_interval_ms));
        let counter = metricer.register(Counter::new("satmesh_test_counter"));
        counter.increment(1.0);
        let booting = metricer.boot();
        wait_until(timeout, "meter reports", || {
            counts.meters.load(Ordering::SeqCst) >= args.meters
        })
        .await?;
        // Shutdown is seen between two report rounds, so the count is final afterwards.
        booting
            .shutdown()
            .await
            .map_err(|e| anyhow::anyhow!("metricer shutdown: {e}"))?;
    }

    wait_until(timeout, "the first keep-alive", || {
        counts.pings.load(Ordering::SeqCst) >= 1
    })
    .await?;
    keep_alive.handle().abort();
    let _ = keep_alive.await;

    // Graceful shutdown: the reporter forwards what it still holds, drops its senders, and
    // each client-stream ends from the agent side; the handle resolves once all returned.
    let _ = stop_tx.send(());
    match tokio::time::timeout(timeout, reporting).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("reporter failed: {e}"),
        Err(_) => bail!("reporter did not flush within {timeout:?}"),
    }

    println!("{}", counts.summary(&args.service, &args.instance));
    Ok(())
}

async fn pause(pace: Option<Duration>) {
    match pace {
        Some(d) => tokio::time::sleep(d).await,
        // Let the reporter's forwarding task move the item into its bounded queue.
        None => tokio::task::yield_now().await,
    }
}

async fn wait_until(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
