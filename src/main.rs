//! The `satmesh` command line: `run`, `check-config`, `sink`, `bench`, `demo`, `status`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use satmesh::config::{Config, LogFormat};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc malloc: with the patched h2 (third_party/h2) an idle agent
/// connection then costs about 8 KiB instead of 30 (README, "Idle connections").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: a background thread gives freed pages back to
/// the system a second after they were last used (`dirty_decay_ms`; jemalloc's default
/// keeps them 10 s, so a burst of connections that closed would stay resident), without
/// purging on the hot path. `_RJEM_MALLOC_CONF` in the environment overrides them.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "satmesh",
    version,
    about = "A proxy tier for Apache SkyWalking agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a satmesh peer.
    Run {
        /// YAML config file; SATMESH__SECTION__KEY environment variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the effective config (file + environment + defaults), or the error naming the bad key.
    CheckConfig { file: Option<PathBuf> },
    /// Run a tier on loopback: two fake OAPs, satmesh peers gossiping with each other and
    /// synthetic agents that all start on the first peer; prints the tier as it spreads them.
    Demo {
        /// Synthetic agents (one HTTP/2 connection each).
        #[arg(long, default_value_t = 60)]
        agents: usize,
        /// satmesh peers in the tier.
        #[arg(long, default_value_t = 3)]
        peers: usize,
        /// Stop after this long (e.g. 30s); runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Load a satmesh peer (or any OAP address) with synthetic agents and report figures.
    Bench {
        /// gRPC address to load; several (comma-separated) are dialled first-address-first.
        #[arg(long, value_delimiter = ',', required = true)]
        target: Vec<SocketAddr>,
        /// HTTP/2 connections, one per synthetic agent.
        #[arg(long, default_value_t = 8, value_parser = at_least_one)]
        connections: usize,
        /// Concurrent segment client-streams per connection (0: no segments).
        #[arg(long, default_value_t = 2)]
        streams: usize,
        /// Messages per client-stream call (segments, or MeterData of a meter stream).
        #[arg(long, default_value_t = 50, value_parser = at_least_one)]
        messages_per_call: usize,
        /// Encoded size of one segment in bytes (real-shaped spans, padded with tags).
        #[arg(long, default_value_t = 300)]
        size: usize,
        /// Stop after this long (calls in flight are finished).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        duration: Duration,
        /// Stop after N segments acknowledged (or --duration, whichever comes first).
        #[arg(long = "messages", alias = "max-messages", value_name = "N")]
        max_messages: Option<u64>,
        /// Pause between two calls of one stream, e.g. 10ms (default: none, full speed).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        call_interval: Duration,
        /// Service instances the data is reported as, spread over the connections
        /// (default: one per connection).
        #[arg(long, value_name = "K")]
        instances: Option<usize>,
        /// Concurrent MeterData client-streams per connection (MeterReportService/collect).
        #[arg(long, default_value_t = 0, value_name = "S")]
        meter_streams: usize,
        /// keepAlive calls per second over all connections; their latency is reported.
        #[arg(long, default_value_t = 0.0, value_name = "R", value_parser = parse_rate)]
        keepalive_rate: f64,
        /// Admin address of the `satmesh sink` the data ends at: its /latency is reset at
        /// the start and the delivery latency (send -> sink) is added to the report.
        #[arg(long, value_name = "ADDR")]
        sink_admin: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Instead of load: open N idle agent connections (one keepAlive call each) to
        /// the first target, hold them for --duration, report how many were established.
        #[arg(long, value_name = "N")]
        idle: Option<usize>,
    },
    /// Run satmesh's fake OAP: accepts every path, counts what it acknowledged.
    Sink {
        #[arg(long, default_value = "127.0.0.1:11800")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:12800")]
        admin: String,
        /// Sleep this many milliseconds per message received.
        #[arg(long, default_value_t = 0)]
        delay_per_message_ms: u64,
        /// Fail this fraction of calls (0.0..=1.0).
        #[arg(long, default_value_t = 0.0)]
        fail_fraction: f64,
        /// gRPC status code of failed calls (14 = UNAVAILABLE).
        #[arg(long, default_value_t = 14)]
        fail_code: i32,
        /// Close every new connection at once.
        #[arg(long)]
        refuse: bool,
        /// Answer sync and relayed calls with the request bytes.
        #[arg(long)]
        echo: bool,
        /// GOAWAY each connection after this many calls (0 = never).
        #[arg(long, default_value_t = 0)]
        goaway_after_calls: u64,
    },
    /// Print the tier as one peer sees it (its admin `/status`): peers, totals, ring.
    Status {
        /// Admin address of any peer: host:port or http://host:port.
        #[arg(long, default_value = "127.0.0.1:1234")]
        admin: String,
        /// Print the raw JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn init_logs(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT and cancels `token`.
async fn signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received");
    token.cancel();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Checks a command line without running it (tests/integration/readme_commands.rs):
    // exit 0 here, or clap's error and exit 2 above.
    if std::env::var_os("SATMESH_PARSE_ONLY").is_some() {
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Command::CheckConfig { file } => match Config::load(file.as_deref(), None) {
            Ok(config) => {
                use std::io::Write;
                let text = serde_json::to_string_pretty(&config).expect("config serializes");
                // A closed pipe (`| head`) is not worth a panic.
                let _ = writeln!(std::io::stdout(), "{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(config.as_deref(), None).and_then(|c| {
                c.require_upstream()?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(config.log.format, &config.log.filter);
            raise_nofile_limit(config.server.max_connections);
            report(runtime().block_on(run(config)))
        }
        Command::Demo {
            agents,
            peers,
            duration,
        } => {
            init_logs(LogFormat::Text, "warn");
            let stop = CancellationToken::new();
            report(runtime().block_on(async move {
                tokio::spawn(signals(stop.clone()));
                satmesh::demo::run(
                    satmesh::demo::DemoSpec {
                        agents,
                        peers,
                        duration,
                    },
                    stop,
                )
                .await
            }))
        }
        Command::Bench {
            target,
            connections,
            streams,
            messages_per_call,
            size,
            duration,
            max_messages,
            call_interval,
            instances,
            meter_streams,
            keepalive_rate,
            sink_admin,
            json,
            idle,
        } => {
            init_logs(LogFormat::Text, "warn");
            if let Some(n) = idle {
                let stop = CancellationToken::new();
                return report(runtime().block_on(async move {
                    tokio::spawn(signals(stop.clone()));
                    satmesh::load::idle::bench(target[0], n, duration, json, stop).await
                }));
            }
            let spec = satmesh::load::LoadSpec {
                targets: target,
                connections,
                streams_per_connection: streams,
                messages_per_call,
                message_bytes: size,
                duration,
                max_messages,
                call_interval,
                instances: instances.unwrap_or(0),
                meter_streams_per_connection: meter_streams,
                keepalive_per_second: keepalive_rate,
            };
            report(runtime().block_on(bench(spec, sink_admin, json)))
        }
        Command::Sink {
            listen,
            admin,
            delay_per_message_ms,
            fail_fraction,
            fail_code,
            refuse,
            echo,
            goaway_after_calls,
        } => {
            init_logs(LogFormat::Text, "info,h2=warn,hyper=warn");
            let faults = satmesh::sink::Faults {
                delay_per_message_ms,
                fail_fraction,
                fail_code,
                refuse,
                echo,
                goaway_after_calls,
            };
            report(runtime().block_on(sink(listen, admin, faults)))
        }
        Command::Status { admin, json } => report(
            runtime()
                .block_on(satmesh::status::cli::run(&admin, json))
                .map(|text| {
                    use std::io::Write;
                    // A closed pipe (`| head`) is not worth a panic.
                    let _ = writeln!(std::io::stdout(), "{text}");
                })
                .map_err(anyhow::Error::from),
        ),
    }
}

/// Raises the soft open-file limit to the hard one: one descriptor per agent connection,
/// and a soft limit of 1024 is common, far below `server.max_connections`.
fn raise_nofile_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if max_connections > 0 && limit < max_connections as u64 + 64 => {
            tracing::warn!(
                limit,
                max_connections,
                "open file limit too low for server.max_connections"
            );
        }
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("satmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = satmesh::peer::Listeners::bind(&config)
        .await
        .context("binding listeners")?;
    let (grpc, admin) = listeners.addrs()?;
    println!("satmesh listening grpc={grpc} admin={admin}");
    tracing::info!(%grpc, %admin, "satmesh listening");
    let stop = CancellationToken::new();
    tokio::spawn(signals(stop.clone()));
    satmesh::peer::run(config, listeners, async move { stop.cancelled().await }).await?;
    Ok(())
}

/// A count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number >= 1")),
    }
}

/// A rate in calls per second: finite and not negative.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate in calls per second (a number >= 0)"
        )),
    }
}

async fn bench(
    spec: satmesh::load::LoadSpec,
    sink_admin: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use satmesh::load::sink_admin as sink;
    use std::sync::atomic::Ordering;
    if let Some(admin) = &sink_admin {
        sink::reset(admin)
            .await
            .context("resetting the sink's /latency")?;
    }
    let progress = std::sync::Arc::new(satmesh::load::Progress::default());
    let stop = CancellationToken::new();
    tokio::spawn(signals(stop.clone()));
    let meters_on = spec.meter_streams_per_connection > 0;
    let pings_on = spec.keepalive_per_second > 0.0;
    let mut run = tokio::spawn(satmesh::load::run(spec, progress.clone(), stop));
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
            sink::settle(admin, report.messages, Duration::from_secs(10))
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

async fn sink(listen: String, admin: String, faults: satmesh::sink::Faults) -> anyhow::Result<()> {
    let grpc = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let admin = TcpListener::bind(&admin)
        .await
        .with_context(|| format!("binding {admin}"))?;
    println!(
        "sink listening grpc={} admin={}",
        grpc.local_addr()?,
        admin.local_addr()?
    );
    let sink = satmesh::sink::Sink::new(faults);
    let stop = CancellationToken::new();
    tokio::spawn(signals(stop.clone()));
    let admin_task = tokio::spawn(satmesh::admin::serve(
        admin,
        satmesh::sink::router(sink.clone()),
        stop.clone(),
    ));
    satmesh::sink::serve_grpc(sink, grpc, stop).await;
    let _ = admin_task.await;
    Ok(())
}
