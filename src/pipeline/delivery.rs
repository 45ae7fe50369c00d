//! The delivery driver: the one place where batches are sent, retried and acknowledged.
//!
//! A batch is retried on another node (round-robin) with backoff until an OAP takes it.
//! Nothing an agent was told is queued is dropped, with two counted, logged exceptions:
//! the shutdown deadline passed, or every try met an OAP that refused the data itself
//! (a non-transient status such as INVALID_ARGUMENT), `pipeline.max_rejections` times.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::{error, warn};

use super::{Event, EventQueue, Lane, Placement};
use crate::metrics::{DROP_REJECTED, DROP_SHUTDOWN, Metrics};
use crate::protocol::{self, RoutePolicy, Shape};
use crate::upstream::body::Batch;
use crate::upstream::{CallError, Pool, backoff, call};

pub struct Delivery {
    pub pool: Arc<Pool>,
    pub queue: Arc<dyn EventQueue>,
    pub metrics: Arc<Metrics>,
    /// `upstream.token`: replaces agents' tokens on every upstream call when set.
    pub token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// Routing policy per method id.
    pub policies: Vec<RoutePolicy>,
    pub call_timeout: Duration,
    pub max_rejections: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Fires at the shutdown deadline: what is still undelivered is counted as dropped.
    pub abandon: CancellationToken,
    /// The shared ring, for events with a routing key (fixed routing).
    pub placement: Option<Arc<dyn Placement>>,
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// Some events failed (all of them for a client-stream); they are kept for the next try.
    Failed(CallError),
}

impl Delivery {
    /// The metadata of an upstream batch call: the configured token, else the lane's.
    pub fn metadata(&self, auth: Option<&Bytes>) -> MetadataMap {
        let mut md = MetadataMap::new();
        let value = match (&self.token, auth) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(auth)) => MetadataValue::try_from(auth.as_ref()).ok(),
            (None, None) => None,
        };
        if let Some(value) = value {
            md.insert("authentication", value);
        }
        md
    }

    /// Delivers `events` (one lane) or accounts for every one it could not.
    pub async fn deliver(&self, lane: Lane, events: Vec<Event>) {
        self.metrics.batch_size.observe(events.len() as f64);
        let fixed = self.placement.is_some() && events.first().is_some_and(|e| e.key.is_some());
        // A fixed batch whose keys the ring has since moved splits; each part goes alone.
        let mut work = vec![events];
        while let Some(events) = work.pop() {
            self.deliver_part(&lane, events, fixed, &mut work).await;
        }
    }

    async fn deliver_part(
        &self,
        lane: &Lane,
        mut events: Vec<Event>,
        fixed: bool,
        work: &mut Vec<Vec<Event>>,
    ) {
        let method = protocol::method(lane.method);
        let m = self.metrics.method(lane.method);
        let metadata = self.metadata(lane.auth.as_ref());
        let policy = self.policies[usize::from(lane.method)];
        let mut avoid = None;
        let mut failures = 0u32;
        let mut rejections = 0u32;
        let mut changes = self.pool.subscribe();
        loop {
            if self.abandon.is_cancelled() {
                return self.drop_all(&events, lane.method, DROP_SHUTDOWN);
            }
            let node = if fixed {
                match self.split_by_placement(&mut events, work) {
                    // The owner on the ring; while it is unreachable the batch waits for the
                    // tier to move its keys (identically on every peer), not for a local guess.
                    Some(addr) => self.pool.node(addr).filter(|n| n.is_connected()),
                    // An empty ring (no node has a majority yet): round-robin.
                    None => self.pool.pick(policy, avoid),
                }
            } else {
                self.pool.pick(policy, avoid)
            };
            let Some(node) = node else {
                // No node to send to (none connected, or the fixed target is down and the
                // ring has not moved its keys yet): wait for a change, or for the backoff.
                failures += 1;
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(backoff(failures, self.backoff_min, self.backoff_max)) => {}
                    _ = self.abandon.cancelled() => {}
                }
                continue;
            };
            let started = Instant::now();
            let sent = events.len() as u64;
            let attempt = tokio::select! {
                attempt = self.attempt(&node, method.path, method.shape, &metadata, &mut events) => attempt,
                _ = self.abandon.cancelled() => continue,
            };
            self.metrics
                .upstream_latency
                .with_label_values(&["batch"])
                .observe(started.elapsed().as_secs_f64());
            let error = match attempt {
                Attempt::Delivered => {
                    m.calls_out_ok.inc();
                    self.metrics
                        .upstream_messages
                        .with_label_values(&[&node.label])
                        .inc_by(sent);
                    node.record_success();
                    return;
                }
                Attempt::Failed(error) => error,
            };
            m.calls_out_failed.inc();
            m.messages_retried.inc_by(events.len() as u64);
            avoid = Some(node.addr);
            node.record_error(&error, &self.pool.health);
            if error.is_transient() {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    warn!(node = %node.addr, path = method.path, events = events.len(), failures, error = %error, "batch failed, retrying");
                }
                // Each node gets a try at once; after a full round (or for a fixed
                // target, after every failure), back off.
                if fixed || failures as usize >= self.pool.nodes().len().max(1) {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures, self.backoff_min, self.backoff_max)) => {}
                        _ = self.abandon.cancelled() => {}
                    }
                }
            } else {
                node.record_success();
                rejections += 1;
                if rejections >= self.max_rejections {
                    error!(node = %node.addr, path = method.path, events = events.len(), error = %error, "oap rejected the batch on every try, dropping it");
                    return self.drop_all(&events, lane.method, DROP_REJECTED);
                }
                warn!(node = %node.addr, path = method.path, error = %error, "oap rejected the batch, trying again");
            }
        }
    }

    /// Places every event's key on the ring now: keeps in `events` those placed where the
    /// first one is, moves the others to `work` (grouped by node), and returns the node.
    fn split_by_placement(
        &self,
        events: &mut Vec<Event>,
        work: &mut Vec<Vec<Event>>,
    ) -> Option<SocketAddr> {
        let placement = self.placement.as_ref()?;
        let place = |e: &Event| e.key.as_ref().and_then(|k| placement.place(k));
        let target = place(events.first()?);
        if events.iter().all(|e| place(e) == target) {
            return target;
        }
        let mut groups: std::collections::BTreeMap<Option<SocketAddr>, Vec<Event>> =
            Default::default();
        for e in events.drain(..) {
            groups.entry(place(&e)).or_default().push(e);
        }
        *events = groups.remove(&target).unwrap_or_default();
        work.extend(groups.into_values());
        target
    }

    /// One try on one node. Delivered events leave `events` (and the queue).
    async fn attempt(
        &self,
        node: &crate::upstream::Node,
        path: &'static str,
        shape: Shape,
        metadata: &MetadataMap,
        events: &mut Vec<Event>,
    ) -> Attempt {
        match shape {
            Shape::ClientStream => {
                let batch = Batch::new(events.iter().map(|e| &e.payload));
                match call::client_stream(node, path, metadata.clone(), batch, self.call_timeout)
                    .await
                {
                    Ok(()) => {
                        self.acknowledge(events);
                        events.clear();
                        Attempt::Delivered
                    }
                    Err(e) => Attempt::Failed(e),
                }
            }
            // A unary path's events go as concurrent calls on the one connection.
            Shape::Unary | Shape::Bidi => {
                let calls = events.iter().map(|e| {
                    call::unary(
                        node,
                        path,
                        metadata.clone(),
                        e.payload.clone(),
                        self.call_timeout,
                    )
                });
                let results = join_all(calls).await;
                let mut first_error = None;
                let mut failed = Vec::new();
                let mut delivered = Vec::new();
                for (event, result) in events.drain(..).zip(results) {
                    match result {
                        Ok(_) => delivered.push(event),
                        Err(e) => {
                            first_error.get_or_insert(e);
                            failed.push(event);
                        }
                    }
                }
                self.acknowledge(&delivered);
                *events = failed;
                match first_error {
                    None => Attempt::Delivered,
                    Some(e) => Attempt::Failed(e),
                }
            }
        }
    }

    fn acknowledge(&self, events: &[Event]) {
        let Some(first) = events.first() else { return };
        let m = self.metrics.method(first.method);
        m.messages_out.inc_by(events.len() as u64);
        let now = Instant::now();
        // Observed locally, added to the shared histogram once per batch: no atomic
        // operations per event.
        let latency = self.metrics.delivery_latency.local();
        for e in events {
            latency.observe(now.duration_since(e.enqueued).as_secs_f64());
        }
        latency.flush();
        self.queue.release(events);
    }

    fn drop_all(&self, events: &[Event], method: protocol::MethodId, reason: &str) {
        if events.is_empty() {
            return;
        }
        if reason == DROP_SHUTDOWN && self.queue.abandon(events) {
            // The disk queue keeps them: sent again at the next start, not lost (the
            // queue logs what it keeps when it stops).
            tracing::debug!(
                path = protocol::method(method).path,
                events = events.len(),
                "undelivered at the shutdown deadline, kept on disk"
            );
            return;
        }
        let m = self.metrics.method(method);
        let counter = if reason == DROP_SHUTDOWN {
            &m.dropped_shutdown
        } else {
            &m.dropped_rejected
        };
        counter.inc_by(events.len() as u64);
        error!(
            path = protocol::method(method).path,
            events = events.len(),
            reason,
            "messages dropped"
        );
        self.queue.release(events);
    }

    /// Counts what is still queued as dropped (used after the shutdown deadline), unless
    /// the queue keeps it for the next start (the disk queue).
    pub fn drop_queued(&self) -> usize {
        let mut rest = Vec::new();
        self.queue.try_pop(usize::MAX, &mut rest);
        if self.queue.abandon(&rest) {
            return 0;
        }
        let n = rest.len();
        for e in &rest {
            self.metrics.method(e.method).dropped_shutdown.inc();
        }
        if n > 0 {
            error!(
                events = n,
                reason = DROP_SHUTDOWN,
                "queued messages dropped at the shutdown deadline"
            );
        }
        n
    }
}
