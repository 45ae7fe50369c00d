//! The `satmesh` command line: `run`, `check-config` and `status` are the product's;
//! `sink`, `bench` and `demo` run `satmesh-tools` (the demo with this binary's peers).

use anyhow::Context;
use clap::{Parser, Subcommand};
use satmesh::config::{Config, ConfigError, LogFormat};
use satmesh::peer::{Listeners, Peer};
use satmesh_tools::demo::{PeerHandle, PeerSpec};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// Run a local demo tier: 2 fake OAPs, 3 satmesh peers gossiping with each other and
    /// 60 synthetic agents, all in this process; prints the tier's status as it rebalances.
    Demo(satmesh_tools::cli::DemoArgs),
    /// Load a satmesh peer (or any OAP address) with synthetic agents and report figures.
    Bench(satmesh_tools::cli::BenchArgs),
    /// Run satmesh's fake OAP: accepts every path, counts what it acknowledged.
    Sink(satmesh_tools::cli::SinkArgs),
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
        Command::CheckConfig { file } => match load(file.as_deref()) {
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
            let config = match load(config.as_deref()).and_then(|c| {
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
        Command::Demo(args) => {
            init_logs(LogFormat::Text, "warn");
            tools(|stop| satmesh_tools::cli::demo(args, DemoTier, stop))
        }
        Command::Bench(args) => {
            init_logs(LogFormat::Text, "warn");
            tools(|stop| satmesh_tools::cli::bench(args, stop))
        }
        Command::Sink(args) => {
            init_logs(LogFormat::Text, "info,h2=warn,hyper=warn");
            tools(|stop| satmesh_tools::cli::sink(args, stop))
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

/// Exit 0, or the error and 1; 2 when the disk queue's directory cannot be used (another
/// satmesh holds it, or it cannot be created or read), as for a config error.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("satmesh: {e:#}");
            if e.downcast_ref::<satmesh::pipeline::disk::OpenError>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The config file (if any) and the environment, checked as `run` would: the protocol
/// table must accept `routing`.
fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let config = Config::load(file, None)?;
    satmesh::protocol::route_policies(&config.routing)?;
    Ok(config)
}

/// Runs a peer until SIGTERM or SIGINT, then shuts it down.
async fn run(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config)
        .await
        .context("binding listeners")?;
    let stop = CancellationToken::new();
    tokio::spawn(signals(stop.clone()));
    let peer = Peer::start(config, listeners).await?;
    let (grpc, admin) = (peer.grpc_addr(), peer.admin_addr());
    println!("satmesh listening grpc={grpc} admin={admin}");
    tracing::info!(%grpc, %admin, "satmesh listening");
    stop.cancelled().await;
    peer.shutdown().await;
    Ok(())
}

/// Runs one of the tools' commands until it ends or a signal stops it.
fn tools<F>(command: impl FnOnce(CancellationToken) -> F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let stop = CancellationToken::new();
    report(runtime().block_on(async move {
        tokio::spawn(signals(stop.clone()));
        command(stop).await
    }))
}

/// The demo's peers: real satmesh peers in this process, each on loopback port 0.
struct DemoTier;

impl satmesh_tools::demo::Tier for DemoTier {
    async fn start_peer(&self, peer: PeerSpec) -> anyhow::Result<PeerHandle> {
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let env = [
            ("SATMESH__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("SATMESH__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
            ("SATMESH__UPSTREAM__STATIC", list(&peer.oaps)),
            ("SATMESH__CLUSTER__NODE_ID", peer.node_id),
            ("SATMESH__CLUSTER__GOSSIP_LISTEN", peer.gossip.to_string()),
            ("SATMESH__CLUSTER__SEEDS", list(&peer.seeds)),
        ];
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let config = Config::load(None, Some(env))?;
        let listeners = satmesh::peer::Listeners::bind(&config).await?;
        let (grpc, admin) = listeners.addrs()?;
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            satmesh::peer::run(config, listeners, shutdown).await?;
            Ok(())
        });
        Ok(PeerHandle {
            grpc,
            admin,
            stop,
            task,
        })
    }

    async fn status(&self, admin: SocketAddr) -> anyhow::Result<String> {
        Ok(satmesh::status::cli::run(&admin.to_string(), false).await?)
    }
}
