//! One satmesh peer: wires the front door, pipeline, upstream pool and admin together,
//! and runs the shutdown sequence.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::frontdoor::{self, Connections, H2Settings, Handler, LifecycleSettings, State};
use crate::metrics::Metrics;
use crate::pipeline::batcher::Batcher;
use crate::pipeline::delivery::Delivery;
use crate::pipeline::{EventQueue, MemoryQueue, Placement};
use crate::tier::{Tier, TierInputs};
use crate::upstream::conn::ConnectSettings;
use crate::upstream::{Health, Pool, discovery, kubernetes};

/// The listeners a peer serves on, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(config.server.listen).await?,
            admin: TcpListener::bind(config.admin.listen).await?,
        })
    }

    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.grpc.local_addr()?, self.admin.local_addr()?))
    }
}

/// What a shutdown left behind.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    pub connections_closed_hard: usize,
    pub events_dropped: usize,
}

/// Runs a peer until `shutdown` resolves, then drains: stop being ready and accepting,
/// tell the tier (two gossip rounds), GOAWAY every agent (spread over
/// `shutdown.drain_window`), let open streams finish, deliver the queue, leave the tier,
/// all within `shutdown.deadline`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ShutdownReport> {
    let metrics = Arc::new(Metrics::new());
    let queue: Arc<dyn EventQueue> = Arc::new(MemoryQueue::new(
        config.pipeline.queue_events,
        config.pipeline.queue_bytes,
    ));
    let up = &config.upstream;
    let pool = Pool::new(
        ConnectSettings {
            connect_timeout: up.connect_timeout,
            backoff_min: up.backoff_min,
            backoff_max: up.backoff_max,
        },
        Health {
            eject_after: up.eject_after,
            backoff_min: up.backoff_min,
            backoff_max: up.backoff_max,
        },
        metrics.clone(),
    );
    let weights = up.weight_map();
    let names: Vec<String> = up.static_nodes.iter().map(ToString::to_string).collect();
    let dns = up.dns.as_ref().map(ToString::to_string);
    let sources = discovery::sources(&names, dns.as_deref(), &weights);
    let stop_discovery = CancellationToken::new();
    let pods = match &up.kubernetes {
        Some(k8s) => Some(kubernetes::spawn(k8s, stop_discovery.clone()).await?),
        None => None,
    };
    tokio::spawn(discovery::run(
        pool.clone(),
        sources,
        weights,
        up.dns_refresh,
        pods,
        stop_discovery.clone(),
    ));

    let token = match &up.token {
        Some(t) => Some(MetadataValue::try_from(t.as_str()).map_err(|_| {
            crate::config::ConfigError::invalid("upstream.token", "not a valid header value")
        })?),
        None => None,
    };
    let policies = crate::protocol::route_policies(&config.routing)?;

    // Every agent connection's lifecycle; the tier reads it and (shedding) drains from it.
    let connections = Connections::new(
        LifecycleSettings::from(&config),
        Some(metrics.front_door.clone()),
    );
    let (grpc_addr, admin_addr) = listeners.addrs()?;
    // The shedder's latest decision and its recent rounds: the tier gossips the decision,
    // `/status` shows both.
    let (shed_state, _) = tokio::sync::watch::channel(satmesh_cluster::balance::Balance::default());
    let shed_history = crate::shed::ShedHistory::default();
    let shed_decision = config.balance.enabled.then(|| shed_state.subscribe());
    let tier = Tier::start(
        crate::tier::node_id(&config.cluster),
        crate::tier::cluster_settings(&config.cluster),
        TierInputs {
            pool: pool.clone(),
            connections: connections.clone(),
            metrics: metrics.clone(),
            grpc_addr,
            admin_addr,
            connection_limit: config.server.max_connections as u64,
            balance: shed_decision.clone(),
        },
    )
    .await?;
    let placement: Arc<dyn Placement> = tier.ring.clone();
    let stop_shedding = CancellationToken::new();
    if config.balance.enabled {
        if config.balance.turn_away {
            connections.set_admission(Some(Arc::new(crate::shed::OverShare {
                view: tier.watch(),
                settings: crate::shed::settings(&config.balance),
            })));
        }
        tokio::spawn(crate::shed::run(
            connections.clone(),
            tier.watch(),
            crate::shed::settings(&config.balance),
            config.balance.interval,
            shed_state.clone(),
            shed_history.clone(),
            stop_shedding.clone(),
        ));
    }

    let abandon = CancellationToken::new();
    let delivery = Arc::new(Delivery {
        pool: pool.clone(),
        queue: queue.clone(),
        metrics: metrics.clone(),
        token: token.clone(),
        policies: policies.clone(),
        call_timeout: up.call_timeout,
        max_rejections: config.pipeline.max_rejections,
        backoff_min: up.backoff_min,
        backoff_max: up.backoff_max,
        abandon: abandon.clone(),
        placement: Some(placement.clone()),
    });
    let max_inflight = config.pipeline.max_inflight_batches;
    let inflight = Arc::new(Semaphore::new(max_inflight));
    let mut senders = JoinSet::new();
    for _ in 0..config.pipeline.senders {
        let batcher = Arc::new(Batcher {
            queue: queue.clone(),
            delivery: delivery.clone(),
            batch_size: config.pipeline.batch_size,
            flush_interval: config.pipeline.flush_interval,
            inflight: inflight.clone(),
            placement: Some(placement.clone()),
        });
        senders.spawn(batcher.run());
    }
    // Reports under Satellite's meter names, queued like an agent's meter data.
    let stop_self_report = CancellationToken::new();
    if config.self_report.enabled {
        let reporter = crate::selfreport::Reporter::new(
            &config,
            metrics.clone(),
            queue.clone(),
            connections.clone(),
        );
        tokio::spawn(reporter.run(stop_self_report.clone()));
    }

    let state = Arc::new(State {
        queue: queue.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        max_message_bytes: config.server.max_message_bytes,
        token,
        sync_timeout: up.sync_timeout,
        policies,
    });
    let admin_state = Arc::new(AdminState {
        metrics: metrics.clone(),
        queue: queue.clone(),
        pool: pool.clone(),
        front_door: connections.clone(),
        draining: AtomicBool::new(false),
        tier: tier.watch(),
        target_per_pod: config.balance.target_connections_per_pod,
    });
    let stop_admin = CancellationToken::new();
    let status = Arc::new(crate::tier::TierStatus {
        view: tier.watch(),
        ring: tier.ring.clone(),
        metrics: metrics.clone(),
        pool: pool.clone(),
        balance: shed_decision,
        sheds: shed_history,
    });
    let router = admin::router(admin_state.clone())
        .merge(crate::status::routes(status))
        .merge(frontdoor::routes::routes(connections.clone()));
    let admin_task = tokio::spawn(admin::serve(listeners.admin, router, stop_admin.clone()));

    let stop_accepting = CancellationToken::new();
    let settings = H2Settings {
        max_concurrent_streams: config.server.max_concurrent_streams,
        stream_window_bytes: config.server.stream_window_bytes,
        connection_window_bytes: config.server.connection_window_bytes,
    };
    let accepted = metrics.connections_total.clone();
    let accept_task = tokio::spawn(frontdoor::accept::accept_loop(
        listeners.grpc,
        settings,
        connections.clone(),
        stop_accepting.clone(),
        move |_| {
            accepted.inc();
            true
        },
        move |conn| Handler {
            state: state.clone(),
            conn,
        },
        |_| {},
    ));

    shutdown.await;
    let started = Instant::now();
    // 1. Out of rotation: /readyz answers 503, `draining` goes out to the tier, shedding
    // stops, and the listener is closed so new connections are refused (a multi-address
    // client dials its next address).
    info!(
        connections = connections.len(),
        "shutting down: not ready, draining published, no new connections"
    );
    admin_state.set_draining();
    tier.set_draining();
    stop_shedding.cancel();
    stop_self_report.cancel();
    stop_accepting.cancel();
    let _ = accept_task.await;

    let mut report = ShutdownReport::default();
    let budget = Budget {
        started,
        deadline: config.shutdown.deadline,
    };
    // 2. Peers hear `draining` (two gossip rounds) before any agent is sent away, so none
    // counts this peer as ready while its agents arrive. Leaves room for the connections'
    // grace within the deadline.
    let phase = Instant::now();
    let grace = config.shutdown.connection_grace;
    match tokio::time::timeout(budget.left().saturating_sub(grace), tier.drain()).await {
        Ok(told) => info!(took = ?phase.elapsed(), tier = ?told, "tier told: draining"),
        Err(_) => warn!(took = ?phase.elapsed(), "tier not told in time, sending agents away"),
    }

    // 3. GOAWAYs spread over the drain window, each connection closed at the latest
    // `connection_grace` after its own; returns at once when no agent is connected. The
    // window is cut so the last grace ends by the deadline.
    let phase = Instant::now();
    let spread = config
        .shutdown
        .drain_window
        .min(budget.left().saturating_sub(grace));
    let hard_before = closed_hard(&connections);
    report.connections_closed_hard =
        match tokio::time::timeout(budget.left(), connections.shutdown(spread, grace)).await {
            Ok(n) => n,
            Err(_) => {
                warn!(
                    connections = connections.len(),
                    "shutdown deadline passed with agents connected"
                );
                (closed_hard(&connections) - hard_before) as usize + connections.len()
            }
        };
    info!(
        took = ?phase.elapsed(),
        spread = ?spread,
        closed_hard = report.connections_closed_hard,
        queued = queue.depth().events,
        "agents gone, delivering the queue"
    );

    // 4. Deliver what is queued by the deadline; what is left then is counted as dropped.
    let phase = Instant::now();
    queue.close();
    let flushed = tokio::time::timeout(budget.left(), async {
        while senders.join_next().await.is_some() {}
        let _ = inflight.acquire_many(max_inflight as u32).await;
    })
    .await;
    if flushed.is_err() {
        warn!(deadline = ?budget.deadline, "shutdown deadline passed with messages undelivered");
        // Deliveries now count their batches as dropped and free their slots; senders
        // hand them what they still hold, then what is left in the queue is counted.
        abandon.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while senders.join_next().await.is_some() {}
            let _ = inflight.acquire_many(max_inflight as u32).await;
        })
        .await;
        senders.abort_all();
        delivery.drop_queued();
    }
    report.events_dropped = metrics.dropped_total(crate::metrics::DROP_SHUTDOWN) as usize;
    info!(took = ?phase.elapsed(), dropped = report.events_dropped, "queue delivered");

    // 5. Stop gossip (peers heard `draining` in step 2 and now declare this peer dead).
    let phase = Instant::now();
    tier.leave().await;
    stop_discovery.cancel();
    pool.close();
    stop_admin.cancel();
    let _ = admin_task.await;
    info!(took = ?phase.elapsed(), "left the tier");
    info!(took = ?started.elapsed(), dropped = report.events_dropped, "shutdown complete");
    Ok(report)
}

/// The shutdown's time budget: `shutdown.deadline` from the signal.
struct Budget {
    started: Instant,
    deadline: Duration,
}

impl Budget {
    fn left(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }
}

/// Connections closed hard so far, all reasons.
fn closed_hard(connections: &Connections) -> u64 {
    connections.counts().closed_hard.values().sum()
}
