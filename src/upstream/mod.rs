//! Upstream: the OAP pool. Discovery feeds node addresses in, each node keeps one HTTP/2
//! connection, health comes from that connection and from call outcomes, and a selector
//! picks a node per call without taking a lock.
//!
//! - `discovery`: static list and DNS, re-resolved periodically.
//! - `conn`: one managed HTTP/2 connection per node.
//! - `select`: round-robin and weighted schedules, rebuilt off the hot path.
//! - `call`: unary, client-stream and bidi calls over a node, with error classes.

pub mod call;
pub mod conn;
pub mod discovery;
pub mod select;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::client::conn::http2::SendRequest;
use rand::RngExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RoutePolicy;
use crate::metrics::Metrics;
pub use call::CallError;
use conn::ConnectSettings;
use select::Schedule;

/// Exponential backoff with +-20 % jitter: `min * 2^(attempt-1)`, capped at `max`.
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let exp = min.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = exp.min(max);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// One OAP node.
pub struct Node {
    pub addr: SocketAddr,
    pub label: String,
    pub weight: u32,
    /// The live connection; None while connecting or down.
    connection: ArcSwapOption<SendRequest<tonic::body::Body>>,
    /// Failed calls since the last success; past `eject_after` the node is set aside.
    failures: AtomicU32,
    /// Until when (ms since the pool's epoch) the node is set aside after failing calls.
    set_aside_until: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// Tells the pool a connection came or went, so waiting senders retry at once.
    changed: watch::Sender<u64>,
    /// Asks the connection manager for a fresh connection (the current one is going away).
    reconnect: tokio::sync::Notify,
    origin: http::Uri,
}

impl Node {
    pub fn is_connected(&self) -> bool {
        self.connection
            .load()
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn is_set_aside(&self) -> bool {
        self.set_aside_until.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Connected and not set aside.
    pub fn is_healthy(&self) -> bool {
        self.is_connected() && !self.is_set_aside()
    }

    fn set_connection(&self, sender: Option<SendRequest<tonic::body::Body>>) {
        let up = sender.is_some();
        self.connection.store(sender.map(Arc::new));
        self.metrics
            .upstream_up
            .with_label_values(&[&self.label])
            .set(i64::from(up));
        if up {
            self.failures.store(0, Ordering::Relaxed);
            self.set_aside_until.store(0, Ordering::Relaxed);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    fn record_connect_failure(&self) {
        self.metrics
            .upstream_failures
            .with_label_values(&[&self.label])
            .inc();
    }

    /// A call found the connection closed or going away (GOAWAY): stop using it and
    /// reconnect at once; calls already on it finish there.
    pub fn connection_going_away(&self) {
        if self.connection.swap(None).is_some() {
            self.changed.send_modify(|v| *v += 1);
        }
        self.reconnect.notify_one();
    }

    /// Records a failed call: counts against the node when the node is in trouble, and
    /// replaces the connection when the call raced its GOAWAY.
    pub fn record_error(&self, error: &CallError, policy: &Health) {
        if error.connection_broken() {
            self.connection_going_away();
        } else if error.is_transient() {
            self.record_failure(policy);
        }
    }

    /// A call on this node succeeded.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.set_aside_until.store(0, Ordering::Relaxed);
            self.metrics
                .upstream_up
                .with_label_values(&[&self.label])
                .set(1);
        }
    }

    /// A call on this node failed in a way that says the node is in trouble.
    pub fn record_failure(&self, policy: &Health) {
        self.metrics
            .upstream_failures
            .with_label_values(&[&self.label])
            .inc();
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= policy.eject_after {
            let wait = backoff(
                failures + 1 - policy.eject_after,
                policy.backoff_min,
                policy.backoff_max,
            );
            let until = self.now_ms() + wait.as_millis() as u64;
            self.set_aside_until.store(until, Ordering::Relaxed);
            self.metrics
                .upstream_up
                .with_label_values(&[&self.label])
                .set(0);
            if failures == policy.eject_after {
                warn!(node = %self.addr, failures, set_aside_for = ?wait, "upstream node set aside after failed calls");
            }
        }
    }

    /// A tonic client over the live connection.
    pub fn client(&self) -> Result<tonic::client::Grpc<conn::H2Service>, CallError> {
        let sender = self.connection.load_full().ok_or(CallError::NotConnected)?;
        if sender.is_closed() {
            return Err(CallError::NotConnected);
        }
        // The OAP's answers are trusted: no size limit of satmesh's own (tonic's is 4 MiB).
        Ok(tonic::client::Grpc::with_origin(
            conn::H2Service((*sender).clone()),
            self.origin.clone(),
        )
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
    }
}

/// When a node is set aside after failed calls.
#[derive(Clone, Debug)]
pub struct Health {
    pub eject_after: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// The node set as the selector sees it: replaced whole on every change.
struct View {
    nodes: Vec<Arc<Node>>,
    round_robin: Schedule,
    weighted: Schedule,
}

/// The OAP pool.
pub struct Pool {
    view: ArcSwap<View>,
    /// Position in each schedule (round-robin, weighted), shared by every caller.
    cursors: [AtomicUsize; 2],
    /// Connection managers by address, so a node that stays is not reconnected.
    managers: std::sync::Mutex<BTreeMap<SocketAddr, (Arc<Node>, CancellationToken)>>,
    settings: ConnectSettings,
    pub health: Health,
    metrics: Arc<Metrics>,
    epoch: Instant,
    changed: watch::Sender<u64>,
}

impl Pool {
    pub fn new(settings: ConnectSettings, health: Health, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool {
            view: ArcSwap::from_pointee(View {
                nodes: Vec::new(),
                round_robin: Schedule::default(),
                weighted: Schedule::default(),
            }),
            cursors: [AtomicUsize::new(0), AtomicUsize::new(0)],
            managers: std::sync::Mutex::new(BTreeMap::new()),
            settings,
            health,
            metrics,
            epoch: Instant::now(),
            changed: watch::channel(0).0,
        })
    }

    /// Replaces the member set: new nodes get a connection manager, gone ones are stopped
    /// (their in-flight calls finish on the old connection).
    pub fn set_members(&self, members: &BTreeMap<SocketAddr, u32>) {
        let mut managers = self.managers.lock().expect("pool lock poisoned");
        let current: Vec<SocketAddr> = managers.keys().copied().collect();
        let mut changed = false;
        for addr in current {
            let weight_changed = members
                .get(&addr)
                .is_some_and(|w| *w != managers[&addr].0.weight);
            if !members.contains_key(&addr) || weight_changed {
                if let Some((node, stop)) = managers.remove(&addr) {
                    stop.cancel();
                    let _ = self.metrics.upstream_up.remove_label_values(&[&node.label]);
                    if !weight_changed {
                        info!(node = %addr, "upstream node removed");
                    }
                }
                changed = true;
            }
        }
        for (&addr, &weight) in members {
            if managers.contains_key(&addr) {
                continue;
            }
            let node = Arc::new(Node {
                addr,
                label: addr.to_string(),
                weight,
                connection: ArcSwapOption::empty(),
                failures: AtomicU32::new(0),
                set_aside_until: AtomicU64::new(0),
                epoch: self.epoch,
                metrics: self.metrics.clone(),
                changed: self.changed.clone(),
                reconnect: tokio::sync::Notify::new(),
                origin: format!("http://{addr}")
                    .parse()
                    .expect("a socket address is a valid authority"),
            });
            self.metrics
                .upstream_up
                .with_label_values(&[&node.label])
                .set(0);
            let stop = CancellationToken::new();
            tokio::spawn(conn::manage(
                node.clone(),
                self.settings.clone(),
                stop.clone(),
            ));
            info!(node = %addr, weight, "upstream node added");
            managers.insert(addr, (node, stop));
            changed = true;
        }
        if changed {
            let nodes: Vec<Arc<Node>> = managers.values().map(|(n, _)| n.clone()).collect();
            let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
            self.view.store(Arc::new(View {
                round_robin: Schedule::round_robin(nodes.len()),
                weighted: Schedule::smooth_weighted(&weights),
                nodes,
            }));
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Stops every connection manager.
    pub fn close(&self) {
        for (_, (_, stop)) in self.managers.lock().expect("pool lock poisoned").iter() {
            stop.cancel();
        }
    }

    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.view.load().nodes.clone()
    }

    /// Ready = at least one OAP node connected.
    pub fn any_connected(&self) -> bool {
        self.view.load().nodes.iter().any(|n| n.is_connected())
    }

    /// Picks the next node by `policy`. Healthy nodes other than `avoid` come first; then
    /// a connected node that is set aside or is `avoid` (a probe beats waiting); None when
    /// no node is connected.
    pub fn pick(&self, policy: RoutePolicy, avoid: Option<SocketAddr>) -> Option<Arc<Node>> {
        let view = self.view.load();
        let (schedule, cursor) = match policy {
            RoutePolicy::RoundRobin => (&view.round_robin, &self.cursors[0]),
            RoutePolicy::Weighted => (&view.weighted, &self.cursors[1]),
        };
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        let mut fallback: Option<&Arc<Node>> = None;
        for index in schedule.iter_from(start) {
            let node = &view.nodes[index];
            if !node.is_connected() {
                continue;
            }
            if Some(node.addr) == avoid || node.is_set_aside() {
                fallback.get_or_insert(node);
                continue;
            }
            return Some(node.clone());
        }
        fallback.cloned()
    }

    /// Resolves when a node connects, disconnects, joins or leaves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}
