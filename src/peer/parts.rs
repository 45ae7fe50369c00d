//! How each part of a peer is built and started, for [`Peer::start`](super::Peer::start):
//! the pool and discovery, shedding, the senders, the admin listener, the accept loop.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tonic::metadata::{Ascii, MetadataValue};
use tracing::warn;

use super::{Senders, Stops};
use crate::admin::{self, AdminState};
use crate::config::{self, Config, ConfigError};
use crate::frontdoor::{self, Connections, H2Settings, Handler, LifecycleSettings, State};
use crate::metrics::Metrics;
use crate::pipeline::batcher::Batcher;
use crate::pipeline::delivery::Delivery;
use crate::pipeline::disk::OpenError;
use crate::pipeline::leftover::Leftover;
use crate::pipeline::{DiskQueue, DiskSettings, EventQueue, Fsync, MemoryQueue, Placement};
use crate::shed::{self, ShedHistory};
use crate::tier::{Tier, TierStatus};
use crate::upstream::conn::ConnectSettings;
use crate::upstream::{Health, Pool, discovery, kubernetes};

/// What the wiring hands from one part to the next.
pub(super) struct Parts {
    pub(super) metrics: Arc<Metrics>,
    pub(super) queue: Arc<dyn EventQueue>,
    pub(super) pool: Arc<Pool>,
    pub(super) connections: Connections,
    pub(super) tasks: TaskTracker,
}

impl Parts {
    pub(super) fn new(config: &Config) -> Result<Parts, OpenError> {
        let metrics = Arc::new(Metrics::new());
        let tasks = TaskTracker::new();
        Ok(Parts {
            queue: queue(&config.pipeline)?,
            pool: pool(&config.upstream, metrics.clone(), tasks.clone()),
            // Every agent connection's lifecycle; the tier reads it and (shedding)
            // drains from it.
            connections: Connections::new(
                LifecycleSettings::from(config),
                Some(metrics.front_door.clone()),
            ),
            metrics,
            tasks,
        })
    }
}

/// The disk queue's settings from `pipeline`.
pub fn disk_settings(p: &config::Pipeline) -> DiskSettings {
    DiskSettings {
        dir: p.disk.path.clone(),
        max_bytes: p.disk.max_bytes,
        segment_bytes: p.disk.segment_bytes.min(p.disk.max_bytes / 4),
        fsync: match p.disk.fsync {
            config::FsyncMode::Always => Fsync::Always,
            config::FsyncMode::Interval => Fsync::Interval(p.disk.fsync_interval),
        },
        window_events: p.queue_events,
        window_bytes: p.queue_bytes,
    }
}

/// `pipeline.queue`: memory, or disk. A memory-queue peer that finds a disk queue's
/// segments at `pipeline.disk.path` delivers them first (see `pipeline::leftover`).
fn queue(p: &config::Pipeline) -> Result<Arc<dyn EventQueue>, OpenError> {
    let memory = || MemoryQueue::new(p.queue_events, p.queue_bytes);
    match p.queue {
        config::QueueKind::Disk => Ok(Arc::new(DiskQueue::open(disk_settings(p))?)),
        config::QueueKind::Memory if holds_segments(&p.disk.path) => {
            warn!(dir = %p.disk.path.display(), "pipeline.queue is memory, but a disk queue left records here: delivering them first");
            let disk = DiskQueue::open(disk_settings(p))?;
            Ok(Arc::new(Leftover::new(disk, memory())))
        }
        config::QueueKind::Memory => Ok(Arc::new(memory())),
    }
}

/// Whether `dir` holds queue segments.
fn holds_segments(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .and_then(crate::pipeline::disk::segment::parse_name)
                .is_some_and(|(_, segment)| segment)
        })
    })
}

/// The shedder's latest decision and its recent rounds: the tier gossips the decision,
/// `/status` shows both.
pub(super) struct ShedState {
    pub(super) latest: watch::Sender<satmesh_cluster::ShedDecision>,
    pub(super) history: ShedHistory,
    /// None when shedding is off (`balance.enabled`).
    pub(super) decision: Option<watch::Receiver<satmesh_cluster::ShedDecision>>,
}

impl ShedState {
    pub(super) fn new(enabled: bool) -> ShedState {
        let (latest, _) = watch::channel(satmesh_cluster::ShedDecision::default());
        ShedState {
            decision: enabled.then(|| latest.subscribe()),
            latest,
            history: ShedHistory::default(),
        }
    }
}

/// The OAP pool, empty until discovery gives it members.
fn pool(upstream: &config::Upstream, metrics: Arc<Metrics>, tasks: TaskTracker) -> Arc<Pool> {
    Pool::new(
        ConnectSettings {
            connect_timeout: upstream.connect_timeout,
            backoff_min: upstream.backoff_min,
            backoff_max: upstream.backoff_max,
        },
        Health {
            eject_after: upstream.eject_after,
            backoff_min: upstream.backoff_min,
            backoff_max: upstream.backoff_max,
        },
        metrics,
        tasks,
    )
}

/// Starts following `upstream.static`, `upstream.dns` and `upstream.kubernetes` into the
/// pool. Fails when the Kubernetes client cannot be built.
pub(super) async fn discover(
    upstream: &config::Upstream,
    parts: &Parts,
    stops: &Stops,
) -> Result<(), kubernetes::Error> {
    let pods = match &upstream.kubernetes {
        Some(k8s) => Some(kubernetes::spawn(k8s, &parts.tasks, stops.discovery.clone()).await?),
        None => None,
    };
    let names: Vec<String> = upstream
        .static_nodes
        .iter()
        .map(ToString::to_string)
        .collect();
    let dns = upstream.dns.as_ref().map(ToString::to_string);
    let weights = upstream.weight_map();
    let sources = discovery::sources(&names, dns.as_deref(), &weights);
    parts.tasks.spawn(discovery::run(
        parts.pool.clone(),
        sources,
        weights,
        upstream.dns_refresh,
        pods,
        stops.discovery.clone(),
    ));
    Ok(())
}

/// Cluster-aware shedding: the decision loop, and (`balance.turn_away`) turning new
/// connections away while above the share.
pub(super) fn shedding(
    balance: &config::Balance,
    parts: &Parts,
    tier: &Tier,
    stops: &Stops,
    shed: &ShedState,
) {
    if balance.turn_away {
        parts
            .connections
            .set_admission(Some(Arc::new(shed::OverShare {
                view: tier.watch(),
                settings: shed::settings(balance),
            })));
    }
    parts.tasks.spawn(shed::run(
        parts.connections.clone(),
        tier.watch(),
        shed::settings(balance),
        balance.interval,
        shed.latest.clone(),
        shed.history.clone(),
        stops.shedding.clone(),
    ));
}

/// `pipeline.senders` batching senders; they end once the queue is closed and empty.
pub(super) fn senders(
    pipeline: &config::Pipeline,
    parts: &Parts,
    delivery: &Arc<Delivery>,
    placement: &Arc<dyn Placement>,
) -> Senders {
    let inflight = Arc::new(Semaphore::new(pipeline.max_inflight_batches));
    let handles = (0..pipeline.senders)
        .map(|_| {
            let batcher = Arc::new(Batcher {
                queue: parts.queue.clone(),
                delivery: delivery.clone(),
                batch_size: pipeline.batch_size,
                flush_interval: pipeline.flush_interval,
                inflight: inflight.clone(),
                placement: Some(placement.clone()),
            });
            parts.tasks.spawn(batcher.run())
        })
        .collect();
    Senders {
        handles,
        inflight,
        max_inflight: pipeline.max_inflight_batches,
    }
}

/// Reports under Satellite's meter names, queued like an agent's meter data.
pub(super) fn self_report(config: &Config, parts: &Parts, stops: &Stops) {
    let reporter = crate::selfreport::Reporter::new(
        config,
        parts.metrics.clone(),
        parts.queue.clone(),
        parts.connections.clone(),
    );
    parts.tasks.spawn(reporter.run(stops.self_report.clone()));
}

/// `upstream.token` as gRPC metadata.
pub(super) fn upstream_token(
    upstream: &config::Upstream,
) -> Result<Option<MetadataValue<Ascii>>, ConfigError> {
    upstream
        .token
        .as_deref()
        .map(|token| {
            MetadataValue::try_from(token)
                .map_err(|_| ConfigError::invalid("upstream.token", "not a valid header value"))
        })
        .transpose()
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`, `/status` and the front door's
/// connection routes.
pub(super) fn serve_admin(
    balance: &config::Balance,
    listener: TcpListener,
    parts: &Parts,
    tier: &Tier,
    shed: ShedState,
    stops: &Stops,
) -> (Arc<AdminState>, JoinHandle<()>) {
    let status = Arc::new(TierStatus {
        view: tier.watch(),
        ring: tier.ring.clone(),
        metrics: parts.metrics.clone(),
        pool: parts.pool.clone(),
        balance: shed.decision,
        sheds: shed.history,
    });
    let admin = Arc::new(AdminState {
        metrics: parts.metrics.clone(),
        queue: parts.queue.clone(),
        pool: parts.pool.clone(),
        front_door: parts.connections.clone(),
        draining: AtomicBool::new(false),
        tier: tier.watch(),
        target_per_pod: balance.target_connections_per_pod,
    });
    let router = admin::router(admin.clone())
        .merge(crate::status::routes(status))
        .merge(frontdoor::routes::routes(parts.connections.clone()));
    let task = parts
        .tasks
        .spawn(admin::serve(listener, router, stops.admin.clone()));
    (admin, task)
}

/// The accept loop of the agent-facing listener.
pub(super) fn accept(
    server: &config::Server,
    listener: TcpListener,
    parts: &Parts,
    state: Arc<State>,
    stops: &Stops,
) -> JoinHandle<()> {
    let settings = H2Settings {
        max_concurrent_streams: server.max_concurrent_streams,
        stream_window_bytes: server.stream_window_bytes,
        connection_window_bytes: server.connection_window_bytes,
    };
    let accepted = parts.metrics.connections_total.clone();
    parts.tasks.spawn(frontdoor::accept::accept_loop(
        listener,
        settings,
        parts.connections.clone(),
        stops.accepting.clone(),
        move |_| {
            accepted.inc();
            true
        },
        move |conn| Handler {
            state: state.clone(),
            conn,
        },
        |_| {},
    ))
}
