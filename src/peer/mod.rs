//! One satmesh peer. [`Peer::start`] wires the front door, pipeline, upstream pool, tier
//! and admin together; [`Peer::shutdown`] takes it apart again (`shutdown.rs`: one small
//! function per phase, each logged with its duration).
//!
//! Every task the peer spawns runs on one [`TaskTracker`] under one root cancellation
//! token; each component stops on a child token of its own, in the order the shutdown
//! needs, and the shutdown ends by waiting for the tracker and reporting any task left
//! ([`ShutdownReport::tasks_left`]). Agent connections run on the front door registry's
//! own tracker, which the shutdown waits for when it sends the agents away.
//!
//! - `mod.rs`: the listeners, the peer and its start.
//! - `parts.rs`: how each part is built and started.
//! - `shutdown.rs`: the shutdown phases and what they report.

mod parts;
mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::admin::AdminState;
use crate::config::{self, Config};
use crate::frontdoor::{Connections, State};
use crate::metrics::Metrics;
use crate::pipeline::delivery::Delivery;
use crate::pipeline::{EventQueue, Placement};
use crate::protocol;
use crate::tier::{self, Tier, TierInputs};
use crate::upstream::Pool;
use parts::{
    Parts, ShedState, accept, discover, self_report, senders, serve_admin, shedding, upstream_token,
};

pub use shutdown::ShutdownReport;

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

/// Runs a peer until `shutdown` resolves, then shuts it down.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<ShutdownReport> {
    let peer = Peer::start(config, listeners).await?;
    shutdown.await;
    Ok(peer.shutdown().await)
}

/// A running peer. Dropped without [`Peer::shutdown`], it cancels every task it spawned
/// (without draining anything).
pub struct Peer {
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// `shutdown.*`: the deadline and how agents are sent away.
    settings: config::Shutdown,
    /// Counts what the shutdown dropped.
    metrics: Arc<Metrics>,
    /// Closed at shutdown once the agents are gone; the senders then empty it.
    queue: Arc<dyn EventQueue>,
    /// Closed last: deliveries run until the queue is empty.
    pool: Arc<Pool>,
    /// Every agent connection; the shutdown drains them all.
    connections: Connections,
    /// Told first (`draining`), left last.
    tier: Tier,
    /// Its `draining` flag turns `/readyz` to 503 as the shutdown begins.
    admin: Arc<AdminState>,
    /// Told to give up (count what it holds as dropped) when the deadline passes.
    delivery: Arc<Delivery>,
    senders: Senders,
    /// Joined as soon as `stops.accepting` is cancelled: no connection arrives after.
    accept_task: JoinHandle<()>,
    /// Joined in the last phase, once `/metrics` has shown the shutdown's counts.
    admin_task: JoinHandle<()>,
    stops: Stops,
    /// Every task the peer spawned (but agent connections: `connections` has those).
    tasks: TaskTracker,
    /// The parent of every stop token: cancelled at the end, for any task still running.
    root: CancellationToken,
    /// Cancels `root` if the peer is dropped without a shutdown (or `start` fails).
    _cancel_on_drop: DropGuard,
}

/// Child tokens of the peer's root, one per component, cancelled in the shutdown's order.
struct Stops {
    /// First: new connections are refused.
    accepting: CancellationToken,
    /// First: the shutdown drains every connection anyway.
    shedding: CancellationToken,
    /// First: nothing of the peer's own is queued once the shutdown began.
    self_report: CancellationToken,
    /// Last: the pool follows the OAP nodes while the queue is delivered.
    discovery: CancellationToken,
    /// Last: `/metrics` and `/status` answer to the end.
    admin: CancellationToken,
}

impl Stops {
    fn new(root: &CancellationToken) -> Stops {
        Stops {
            accepting: root.child_token(),
            shedding: root.child_token(),
            self_report: root.child_token(),
            discovery: root.child_token(),
            admin: root.child_token(),
        }
    }
}

/// The batching senders and the room for batches in flight; the shutdown waits for both.
struct Senders {
    handles: Vec<JoinHandle<()>>,
    inflight: Arc<Semaphore>,
    max_inflight: usize,
}

impl Peer {
    /// Starts serving on `listeners`. What can fail (the routing table, the tier's
    /// gossip socket, the Kubernetes client) comes before most tasks are spawned; the
    /// few already running are cancelled when it does.
    pub async fn start(config: Config, listeners: Listeners) -> anyhow::Result<Peer> {
        let (grpc_addr, admin_addr) = listeners.addrs()?;
        let policies = protocol::route_policies(&config.routing)?;
        let token = upstream_token(&config.upstream)?;
        let root = CancellationToken::new();
        let cancel_on_drop = root.clone().drop_guard();
        let stops = Stops::new(&root);
        let parts = Parts::new(&config)?;
        let shed = ShedState::new(config.balance.enabled);
        let tier = Tier::start(
            tier::node_id(&config.cluster),
            tier::cluster_settings(&config.cluster),
            TierInputs {
                pool: parts.pool.clone(),
                connections: parts.connections.clone(),
                metrics: parts.metrics.clone(),
                grpc_addr,
                admin_addr,
                connection_limit: config.server.max_connections as u64,
                balance: shed.decision.clone(),
            },
            &parts.tasks,
            root.child_token(),
        )
        .await?;
        discover(&config.upstream, &parts, &stops).await?;

        // Nothing fails from here on.
        if config.balance.enabled {
            shedding(&config.balance, &parts, &tier, &stops, &shed);
        }
        let placement: Arc<dyn Placement> = tier.ring.clone();
        let delivery = Arc::new(Delivery {
            pool: parts.pool.clone(),
            queue: parts.queue.clone(),
            metrics: parts.metrics.clone(),
            token: token.clone(),
            policies: policies.clone(),
            call_timeout: config.upstream.call_timeout,
            max_rejections: config.pipeline.max_rejections,
            backoff_min: config.upstream.backoff_min,
            backoff_max: config.upstream.backoff_max,
            abandon: root.child_token(),
            placement: Some(placement.clone()),
        });
        let senders = senders(&config.pipeline, &parts, &delivery, &placement);
        if config.self_report.enabled {
            self_report(&config, &parts, &stops);
        }
        let (admin, admin_task) = serve_admin(
            &config.balance,
            listeners.admin,
            &parts,
            &tier,
            shed,
            &stops,
        );
        let state = Arc::new(State {
            queue: parts.queue.clone(),
            pool: parts.pool.clone(),
            metrics: parts.metrics.clone(),
            max_message_bytes: config.server.max_message_bytes,
            token,
            sync_timeout: config.upstream.sync_timeout,
            policies,
        });
        let accept_task = accept(&config.server, listeners.grpc, &parts, state, &stops);

        let Parts {
            metrics,
            queue,
            pool,
            connections,
            tasks,
        } = parts;
        Ok(Peer {
            grpc_addr,
            admin_addr,
            settings: config.shutdown,
            metrics,
            queue,
            pool,
            connections,
            tier,
            admin,
            delivery,
            senders,
            accept_task,
            admin_task,
            stops,
            tasks,
            root,
            _cancel_on_drop: cancel_on_drop,
        })
    }

    /// The agent-facing address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The admin address (`/metrics`, `/readyz`, `/status`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Tasks of the peer running now (agent connections not counted).
    pub fn tasks_running(&self) -> usize {
        self.tasks.len()
    }
}
