//! Upstream: the OAP pool. Discovery feeds node addresses in, each node keeps one HTTP/2
//! connection, health comes from that connection and from call outcomes, and a selector
//! picks a node per call without taking a lock.
//!
//! - `discovery`: static list and DNS, re-resolved periodically.
//! - `kubernetes`: OAP pods from the Kubernetes API (EndpointSlices).
//! - `conn`: one managed HTTP/2 connection per node.
//! - `handshake`: tells when a connection's HTTP/2 handshake has completed.
//! - `select`: round-robin and weighted schedules, rebuilt off the hot path.
//! - `call`: unary, client-stream and bidi calls over a node, with error classes.
//! - `body`: request bodies; a batch goes as its messages' bytes, not re-encoded.

pub mod body;
pub mod call;
pub mod conn;
pub mod discovery;
mod handshake;
pub mod kubernetes;
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
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::protocol::RoutePolicy;
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
    connection: ArcSwapOption<SendRequest<body::UpBody>>,
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
    /// Unary calls in flight on this node at once (`UNARY_SLOTS`).
    pub(crate) unary_slots: tokio::sync::Semaphore,
}

/// Unary calls one node's connection carries at once. A batch of a unary path (keepAlive,
/// JVM metrics, ...) goes as one call per event; without a cap, many batches in flight
/// put thousands of small calls on one connection at once, and their answers pile up
/// unread (see `conn::connect` for what HTTP/2 then does).
pub const UNARY_SLOTS: usize = 256;

impl Node {
    fn new(
        addr: SocketAddr,
        weight: u32,
        epoch: Instant,
        metrics: Arc<Metrics>,
        changed: watch::Sender<u64>,
    ) -> Node {
        Node {
            addr,
            label: addr.to_string(),
            weight,
            connection: ArcSwapOption::empty(),
            failures: AtomicU32::new(0),
            set_aside_until: AtomicU64::new(0),
            epoch,
            metrics,
            changed,
            reconnect: tokio::sync::Notify::new(),
            origin: format!("http://{addr}")
                .parse()
                .expect("a socket address is a valid authority"),
            unary_slots: tokio::sync::Semaphore::new(UNARY_SLOTS),
        }
    }

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

    fn set_connection(&self, sender: Option<SendRequest<body::UpBody>>) {
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
        // Only a connection in use is replaced: a stored notification would otherwise
        // drop the next fresh connection as soon as it is made.
        if self.connection.swap(None).is_some() {
            self.changed.send_modify(|v| *v += 1);
            self.reconnect.notify_one();
        }
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

impl View {
    fn new(nodes: Vec<Arc<Node>>) -> View {
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        View {
            round_robin: Schedule::round_robin(nodes.len()),
            weighted: Schedule::smooth_weighted(&weights),
            nodes,
        }
    }
}

/// What the selector reads of a node; a trait so the selection runs on plain values in tests.
trait Candidate {
    fn address(&self) -> SocketAddr;
    fn connected(&self) -> bool;
    fn set_aside(&self) -> bool;
}

impl Candidate for Arc<Node> {
    fn address(&self) -> SocketAddr {
        self.addr
    }

    fn connected(&self) -> bool {
        self.is_connected()
    }

    fn set_aside(&self) -> bool {
        self.is_set_aside()
    }
}

/// The `start`-th eligible node of `schedule` (connected, not `avoid`, not set aside),
/// counting only eligible entries so a skipped node's share is spread evenly over the
/// others rather than landing on its successor; else the first connected node from
/// `start` that is `avoid` or set aside; None when none is connected.
fn choose<'a, N: Candidate>(
    nodes: &'a [N],
    schedule: &Schedule,
    start: usize,
    avoid: Option<SocketAddr>,
) -> Option<&'a N> {
    let eligible =
        |node: &N| node.connected() && Some(node.address()) != avoid && !node.set_aside();
    let count = schedule
        .iter_from(0)
        .filter(|&i| eligible(&nodes[i]))
        .count();
    if count > 0 {
        return schedule
            .iter_from(0)
            .map(|i| &nodes[i])
            .filter(|n| eligible(n))
            .nth(start % count);
    }
    schedule
        .iter_from(start)
        .map(|i| &nodes[i])
        .find(|n| n.connected())
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
    /// Where connection managers (and their connections' drivers) run: the peer's
    /// tracker, so its shutdown can tell that every one has ended.
    tasks: TaskTracker,
    epoch: Instant,
    changed: watch::Sender<u64>,
}

impl Pool {
    pub fn new(
        settings: ConnectSettings,
        health: Health,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) -> Arc<Pool> {
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
            tasks,
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
            let node = Arc::new(Node::new(
                addr,
                weight,
                self.epoch,
                self.metrics.clone(),
                self.changed.clone(),
            ));
            self.metrics
                .upstream_up
                .with_label_values(&[&node.label])
                .set(0);
            let stop = CancellationToken::new();
            self.tasks.spawn(conn::manage(
                node.clone(),
                self.settings.clone(),
                stop.clone(),
                self.tasks.clone(),
            ));
            info!(node = %addr, weight, "upstream node added");
            managers.insert(addr, (node, stop));
            changed = true;
        }
        if changed {
            let nodes: Vec<Arc<Node>> = managers.values().map(|(n, _)| n.clone()).collect();
            self.view.store(Arc::new(View::new(nodes)));
            self.changed.send_modify(|v| *v += 1);
        }
    }

    /// Stops every connection manager.
    pub fn close(&self) {
        for (_, (_, stop)) in self.managers.lock().expect("pool lock poisoned").iter() {
            stop.cancel();
        }
    }

    /// The node at `addr`, if it is a member.
    pub fn node(&self, addr: SocketAddr) -> Option<Arc<Node>> {
        self.view
            .load()
            .nodes
            .iter()
            .find(|n| n.addr == addr)
            .cloned()
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
            // A fixed protocol's call without a routing key goes round-robin.
            RoutePolicy::RoundRobin | RoutePolicy::Fixed => (&view.round_robin, &self.cursors[0]),
            RoutePolicy::Weighted => (&view.weighted, &self.cursors[1]),
        };
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        choose(&view.nodes, schedule, start, avoid).cloned()
    }

    /// Resolves when a node connects, disconnects, joins or leaves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    /// A live HTTP/2 connection to `serve` over an in-memory pipe: a node can be
    /// connected without a socket.
    pub(super) async fn h2_pipe<F, Fut>(serve: F) -> SendRequest<body::UpBody>
    where
        F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<tonic::body::Body>> + Send + 'static,
    {
        h2_pipe_with_server(serve).await.0
    }

    /// `h2_pipe`, also handing out the server side so a test can cut the connection.
    pub(super) async fn h2_pipe_with_server<F, Fut>(
        serve: F,
    ) -> (SendRequest<body::UpBody>, tokio::task::AbortHandle)
    where
        F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<tonic::body::Body>> + Send + 'static,
    {
        let (client, server) = tokio::io::duplex(1 << 20);
        let service = hyper::service::service_fn(move |req| {
            let answer = serve(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let server = tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .expect("in-memory http/2 handshake");
        tokio::spawn(conn);
        (sender, server.abort_handle())
    }

    /// A node from the pool's own constructor, not connected and with no manager task.
    pub(super) fn node(pool: &Pool, port: u16, weight: u32) -> Arc<Node> {
        Arc::new(Node::new(
            SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            pool.epoch,
            pool.metrics.clone(),
            pool.changed.clone(),
        ))
    }

    async fn connect(node: &Node) {
        let sender = h2_pipe(|_| async { http::Response::new(tonic::body::Body::empty()) }).await;
        node.set_connection(Some(sender));
        assert!(node.is_connected());
    }

    fn health(eject_after: u32) -> Health {
        Health {
            eject_after,
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(60),
        }
    }

    fn pool() -> Arc<Pool> {
        let settings = ConnectSettings {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        };
        Pool::new(
            settings,
            health(3),
            Arc::new(Metrics::new()),
            TaskTracker::new(),
        )
    }

    /// Installs `nodes` as the pool's view, as `set_members` would, minus the managers.
    fn install(pool: &Pool, nodes: &[Arc<Node>]) {
        pool.view.store(Arc::new(View::new(nodes.to_vec())));
    }

    /// A node as `choose` sees it.
    #[derive(Clone, Copy, Debug)]
    struct Fake {
        port: u16,
        connected: bool,
        set_aside: bool,
    }

    impl Candidate for Fake {
        fn address(&self) -> SocketAddr {
            SocketAddr::from(([10, 0, 0, 1], self.port))
        }

        fn connected(&self) -> bool {
            self.connected
        }

        fn set_aside(&self) -> bool {
            self.set_aside
        }
    }

    const UP: (bool, bool) = (true, false);
    const DOWN: (bool, bool) = (false, false);
    const ASIDE: (bool, bool) = (true, true);
    const DOWN_ASIDE: (bool, bool) = (false, true);

    fn fakes(states: &[(bool, bool)]) -> Vec<Fake> {
        states
            .iter()
            .enumerate()
            .map(|(i, &(connected, set_aside))| Fake {
                port: i as u16,
                connected,
                set_aside,
            })
            .collect()
    }

    /// The port (= index) `choose` returns over a round-robin schedule.
    fn chosen(states: &[(bool, bool)], start: usize, avoid: Option<u16>) -> Option<u16> {
        let nodes = fakes(states);
        let avoid = avoid.map(|p| SocketAddr::from(([10, 0, 0, 1], p)));
        choose(&nodes, &Schedule::round_robin(nodes.len()), start, avoid).map(|n| n.port)
    }

    #[test]
    fn choose_follows_the_schedule_from_the_cursor() {
        assert_eq!(chosen(&[UP, UP, UP], 0, None), Some(0));
        assert_eq!(chosen(&[UP, UP, UP], 1, None), Some(1));
        assert_eq!(chosen(&[UP, UP, UP], 5, None), Some(2));
    }

    #[test]
    fn a_skipped_node_share_is_spread_over_the_others() {
        let picks: Vec<_> = (0..6)
            .map(|start| chosen(&[UP, DOWN, UP], start, None))
            .collect();
        assert_eq!(
            picks,
            [Some(0), Some(2), Some(0), Some(2), Some(0), Some(2)]
        );
    }

    #[test]
    fn choose_skips_nodes_that_are_not_connected() {
        assert_eq!(chosen(&[DOWN, DOWN, UP], 0, None), Some(2));
        assert_eq!(chosen(&[UP, DOWN, DOWN], 1, None), Some(0));
    }

    #[test]
    fn choose_prefers_a_healthy_node_over_avoid_and_set_aside() {
        assert_eq!(chosen(&[UP, UP], 0, Some(0)), Some(1));
        assert_eq!(chosen(&[ASIDE, UP], 0, None), Some(1));
        assert_eq!(chosen(&[ASIDE, UP, UP], 0, Some(1)), Some(2));
    }

    #[test]
    fn choose_falls_back_to_a_connected_avoided_or_set_aside_node() {
        assert_eq!(chosen(&[UP, DOWN], 0, Some(0)), Some(0));
        assert_eq!(chosen(&[DOWN, ASIDE], 0, None), Some(1));
        // The first fallback in schedule order from the cursor.
        assert_eq!(chosen(&[ASIDE, ASIDE, DOWN], 1, None), Some(1));
        assert_eq!(chosen(&[ASIDE, UP, DOWN], 0, Some(1)), Some(0));
        // A set-aside node that is not connected is no fallback.
        assert_eq!(chosen(&[DOWN_ASIDE, UP], 0, Some(1)), Some(1));
    }

    #[test]
    fn choose_gives_none_when_nothing_is_connected() {
        assert_eq!(chosen(&[DOWN, DOWN_ASIDE], 0, Some(0)), None);
        assert_eq!(chosen(&[], 3, None), None);
    }

    #[test]
    fn choose_follows_weights_over_a_cycle() {
        let nodes = fakes(&[UP, UP]);
        let schedule = Schedule::smooth_weighted(&[3, 1]);
        let mut picks = [0; 2];
        for start in 0..400 {
            let n = choose(&nodes, &schedule, start, None).unwrap();
            picks[usize::from(n.port)] += 1;
        }
        assert_eq!(picks, [300, 100]);
    }

    #[tokio::test]
    async fn pick_returns_none_until_a_node_connects() {
        let pool = pool();
        assert!(pool.pick(RoutePolicy::RoundRobin, None).is_none());
        let a = node(&pool, 1, 1);
        let b = node(&pool, 2, 1);
        install(&pool, &[a.clone(), b.clone()]);
        assert!(pool.pick(RoutePolicy::RoundRobin, None).is_none());
        assert!(pool.pick(RoutePolicy::Weighted, None).is_none());
        assert!(!pool.any_connected());

        connect(&b).await;
        assert!(pool.any_connected());
        for _ in 0..4 {
            let picked = pool.pick(RoutePolicy::RoundRobin, None).unwrap();
            assert_eq!(picked.addr, b.addr);
        }
    }

    #[tokio::test]
    async fn pick_round_robins_and_weights_connected_nodes() {
        let pool = pool();
        let a = node(&pool, 1, 3);
        let b = node(&pool, 2, 1);
        install(&pool, &[a.clone(), b.clone()]);
        connect(&a).await;
        connect(&b).await;

        let count = |policy: RoutePolicy, picks: usize| {
            let mut on_a = 0;
            for _ in 0..picks {
                if pool.pick(policy, None).unwrap().addr == a.addr {
                    on_a += 1;
                }
            }
            on_a
        };
        assert_eq!(count(RoutePolicy::Weighted, 400), 300);
        assert_eq!(count(RoutePolicy::RoundRobin, 400), 200);
    }

    #[tokio::test]
    async fn pick_avoids_a_node_unless_it_is_the_only_one_connected() {
        let pool = pool();
        let a = node(&pool, 1, 1);
        let b = node(&pool, 2, 1);
        install(&pool, &[a.clone(), b.clone()]);
        connect(&a).await;
        for _ in 0..4 {
            assert_eq!(
                pool.pick(RoutePolicy::RoundRobin, Some(a.addr))
                    .unwrap()
                    .addr,
                a.addr
            );
        }
        connect(&b).await;
        for _ in 0..4 {
            assert_eq!(
                pool.pick(RoutePolicy::RoundRobin, Some(a.addr))
                    .unwrap()
                    .addr,
                b.addr
            );
        }
    }

    #[tokio::test]
    async fn pick_passes_over_a_set_aside_node() {
        let pool = pool();
        let a = node(&pool, 1, 1);
        let b = node(&pool, 2, 1);
        install(&pool, &[a.clone(), b.clone()]);
        connect(&a).await;
        connect(&b).await;
        for _ in 0..3 {
            a.record_failure(&pool.health);
        }
        assert!(a.is_connected() && !a.is_healthy());
        for _ in 0..4 {
            assert_eq!(
                pool.pick(RoutePolicy::RoundRobin, None).unwrap().addr,
                b.addr
            );
        }
        a.record_success();
        let picked: Vec<_> = (0..4)
            .map(|_| pool.pick(RoutePolicy::RoundRobin, None).unwrap().addr)
            .collect();
        assert!(picked.contains(&a.addr), "{picked:?}");
    }

    #[tokio::test]
    async fn failures_set_a_node_aside_and_a_success_clears_it() {
        let pool = pool();
        let n = node(&pool, 1, 1);
        connect(&n).await;
        let policy = health(3);
        let failures = || {
            n.metrics
                .upstream_failures
                .with_label_values(&[&n.label])
                .get()
        };
        let up = || n.metrics.upstream_up.with_label_values(&[&n.label]).get();

        n.record_failure(&policy);
        n.record_failure(&policy);
        assert!(n.is_healthy(), "two failures are below eject_after");
        assert_eq!(up(), 1);

        let before = n.now_ms();
        n.record_failure(&policy);
        assert!(!n.is_healthy() && n.is_connected());
        assert_eq!(failures(), 3);
        assert_eq!(up(), 0);
        // The first set-aside lasts backoff_min, give or take the jitter.
        let until = n.set_aside_until.load(Ordering::Relaxed);
        assert!(until >= before + 8_000, "{until} vs {before}");
        assert!(until <= n.now_ms() + 12_000, "{until}");

        n.record_success();
        assert!(n.is_healthy());
        assert_eq!(up(), 1);
        // The count starts over: it takes eject_after failures again.
        n.record_failure(&policy);
        n.record_failure(&policy);
        assert!(n.is_healthy());
        n.record_failure(&policy);
        assert!(!n.is_healthy());
    }

    #[tokio::test]
    async fn record_error_sorts_errors_by_what_they_say() {
        let pool = pool();
        let n = node(&pool, 1, 1);
        connect(&n).await;
        let policy = health(1);

        // The OAP's own verdict says nothing about the node.
        n.record_error(
            &CallError::Status(tonic::Status::invalid_argument("bad")),
            &policy,
        );
        assert!(n.is_healthy());

        // A transient failure counts against it.
        n.record_error(&CallError::Timeout, &policy);
        assert!(n.is_connected() && !n.is_healthy());
        n.record_success();

        // A broken connection is dropped rather than counted.
        let mut changes = pool.subscribe();
        changes.borrow_and_update();
        n.record_error(&CallError::NotConnected, &policy);
        assert!(!n.is_connected());
        assert_eq!(n.failures.load(Ordering::Relaxed), 0);
        assert!(changes.has_changed().unwrap());
    }

    #[tokio::test]
    async fn a_new_connection_clears_failures() {
        let pool = pool();
        let n = node(&pool, 1, 1);
        connect(&n).await;
        let policy = health(1);
        n.record_failure(&policy);
        assert!(!n.is_healthy());
        connect(&n).await;
        assert!(n.is_healthy());
        assert_eq!(n.failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn backoff_grows_from_min_and_stays_within_jitter_of_max() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..40u32 {
            // 100ms, 200ms, 400ms, ... capped at 5s; attempt 0 counts as the first.
            let doubling = 1u64 << attempt.saturating_sub(1).min(16);
            let base = (min.as_millis() as u64 * doubling).min(max.as_millis() as u64);
            for _ in 0..50 {
                let wait = backoff(attempt, min, max).as_secs_f64() * 1000.0;
                let base = base as f64;
                assert!(
                    wait >= base * 0.8 - 1e-6 && wait <= base * 1.2 + 1e-6,
                    "attempt {attempt}: {wait}ms vs base {base}ms"
                );
                assert!(wait >= 80.0 - 1e-6, "never below min*0.8");
                assert!(wait <= 6000.0 + 1e-6, "never above max*1.2");
            }
        }
    }

    #[test]
    fn backoff_is_jittered() {
        let waits: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| backoff(3, Duration::from_millis(100), Duration::from_secs(5)))
            .collect();
        assert!(waits.len() > 1, "50 draws gave one value: {waits:?}");
    }

    #[test]
    fn backoff_does_not_overflow_on_huge_inputs() {
        let wait = backoff(u32::MAX, Duration::from_secs(1), Duration::MAX / 2);
        assert!(wait >= Duration::from_secs(1));
    }
}
