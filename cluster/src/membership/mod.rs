//! The `Cluster` type: chitchat 0.13 wrapped entirely. The rest of satmesh publishes
//! [`PeerFacts`] and reads [`ClusterView`]s; it never sees a chitchat key.
//!
//! - `driver`: one task that writes this peer's facts (rate-limited by
//!   [`crate::publish`]) and rebuilds the view after every gossip change and every round.
//! - `seeds`: the advertised address, free-port picking, DNS seed re-resolution.
//!
//! Lifecycle: [`Cluster::join`] starts gossip; [`Cluster::publish`] with
//! `PeerState::Draining` at the start of a drain; [`Cluster::leave`] at its end (it waits
//! two gossip rounds so the last facts get out, then stops). Dropping a `Cluster` stops
//! gossip at once, like a crash: peers declare it dead after the failure-detector delay.

mod driver;
mod seeds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::facts::{PeerFacts, PeerId, PeerState};
use crate::settings::ClusterSettings;
use crate::view::ClusterView;

/// Heartbeat intervals kept per peer by the failure detector.
const SAMPLING_WINDOW: usize = 1000;

/// Why the cluster could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The settings are wrong: retrying with the same settings will not help.
    #[error("cluster settings: {0}")]
    Settings(String),
    /// The gossip socket could not be opened (address in use, no permission): a retry
    /// can succeed once the address is free.
    #[error("cannot open the gossip socket on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    /// Gossip ended with an error while stopping; nothing is left to retry.
    #[error("gossip stopped with an error: {0}")]
    Stopped(String),
}

impl ClusterError {
    /// Whether calling again can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClusterError::Listen { .. })
    }
}

/// This peer's membership in the tier.
pub struct Cluster {
    self_id: PeerId,
    gossip_addr: SocketAddr,
    gossip_interval: Duration,
    /// Facts the owner wants published; the driver publishes them, rate-limited.
    wanted: watch::Sender<PeerFacts>,
    /// Latest view; the driver refreshes it every round and after every change.
    view: watch::Receiver<Arc<ClusterView>>,
    /// Shared with the seed task, which asks chitchat to gossip with new seed addresses.
    chitchat: Arc<ChitchatHandle>,
    /// Driver and seed tasks, stopped when the cluster is left or dropped.
    tasks: Tasks,
}

impl Cluster {
    /// Starts gossip with `facts` as this peer's first published facts, on `transport`
    /// (`chitchat::transport::UdpTransport` in production, `ChannelTransport` in tests).
    pub async fn join(
        settings: ClusterSettings,
        facts: PeerFacts,
        transport: &dyn Transport,
    ) -> Result<Cluster, ClusterError> {
        settings.validate().map_err(ClusterError::Settings)?;
        let listen = seeds::pick_port(settings.gossip_listen, transport).await?;
        let advertise = match settings.advertise {
            Some(addr) => addr,
            None => seeds::derive_advertise(listen, &settings.seeds).await,
        };
        let generation = next_generation();
        let chitchat_id = ChitchatId::new(settings.node_id.clone(), generation, advertise);
        let config = ChitchatConfig {
            chitchat_id: chitchat_id.clone(),
            cluster_id: settings.cluster_id.clone(),
            gossip_interval: settings.gossip_interval,
            listen_addr: listen,
            seed_nodes: settings.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: settings.phi_threshold,
                sampling_window_size: SAMPLING_WINDOW,
                max_interval: settings.max_interval,
                initial_interval: settings.initial_interval(),
                dead_node_grace_period: settings.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: settings.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let handle = spawn_chitchat(config, facts.encode(), transport)
            .await
            .map_err(|error| ClusterError::Listen {
                addr: listen,
                reason: format!("{error:#}"),
            })?;
        let chitchat = Arc::new(handle);

        let (wanted_tx, wanted_rx) = watch::channel(facts.clone());
        let driver = driver::Driver::new(
            chitchat.chitchat(),
            chitchat_id,
            facts,
            wanted_rx,
            &settings,
        )
        .await;
        let view = driver.subscribe();
        let mut tasks = Tasks(vec![tokio::spawn(driver.run())]);
        if let Some(task) = seeds::spawn_refresh(&settings, advertise, chitchat.clone()) {
            tasks.0.push(task);
        }
        let self_id = PeerId {
            node_id: settings.node_id,
            generation,
        };
        info!(node_id = %self_id.node_id, generation, listen = %listen, advertise = %advertise,
            seeds = ?settings.seeds, "joined the cluster");
        Ok(Cluster {
            self_id,
            gossip_addr: advertise,
            gossip_interval: settings.gossip_interval,
            wanted: wanted_tx,
            view,
            chitchat,
            tasks,
        })
    }

    pub fn self_id(&self) -> &PeerId {
        &self.self_id
    }

    /// The address other peers gossip to.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Publishes this peer's facts. Routing facts go out at once, small load changes at
    /// most once per publish interval (see [`crate::publish`]); never blocks.
    pub fn publish(&self, facts: PeerFacts) {
        self.wanted.send_replace(facts);
    }

    /// The facts last passed to `publish` (or `join`).
    pub fn facts(&self) -> PeerFacts {
        self.wanted.borrow().clone()
    }

    /// The latest view of the tier (refreshed every gossip round).
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// The change stream: notified when a peer joins or goes, turns live or dead, or
    /// changes any fact; heartbeats alone do not notify. Ends when the cluster stops.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Leaves the tier: publishes `draining` (if not already), waits two gossip rounds so
    /// peers hear it, then stops gossip. Peers then declare this peer dead.
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.wanted
            .send_modify(|facts| facts.state = PeerState::Draining);
        let facts = self.facts();
        driver::write_facts(&self.chitchat.chitchat(), &facts).await;
        tokio::time::sleep(2 * self.gossip_interval).await;
        info!(node_id = %self.self_id.node_id, "left the cluster");
        self.shutdown().await
    }

    /// Stops gossip without draining (peers will declare this peer dead) and waits until
    /// the gossip socket is released.
    pub async fn shutdown(self) -> Result<(), ClusterError> {
        self.tasks.stop().await;
        match Arc::try_unwrap(self.chitchat) {
            Ok(handle) => handle
                .shutdown()
                .await
                .map_err(|error| ClusterError::Stopped(format!("{error:#}"))),
            // Unreachable once the tasks holding clones are stopped; dropping the last
            // clone stops gossip anyway.
            Err(_) => Ok(()),
        }
    }
}

/// Background tasks, aborted on drop.
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    async fn stop(mut self) {
        for task in std::mem::take(&mut self.0) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Start time in ns since the Unix epoch, strictly growing within a process (two joins in
/// the same nanosecond, or a clock step back, still get distinct, growing generations).
fn next_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(current) => last = current,
        }
    }
}
