//! Admin HTTP: `/metrics` (Prometheus text), `/healthz` (the process is up) and `/readyz`
//! (at least one OAP node is connected and the peer is not draining).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::pipeline::EventQueue;
use crate::upstream::Pool;

pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub queue: Arc<dyn EventQueue>,
    pub pool: Arc<Pool>,
    pub front_door: crate::frontdoor::Connections,
    /// Set at shutdown: the peer stops being ready before it stops serving.
    pub draining: AtomicBool,
    /// The tier as this peer sees it, for the tier-wide gauges.
    pub tier: tokio::sync::watch::Receiver<std::sync::Arc<satmesh_cluster::ClusterView>>,
    /// `balance.target_connections_per_pod`.
    pub target_per_pod: u64,
}

impl AdminState {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Replicas the tier needs for `connections` at `per_pod` each (at least 1).
/// `connections`: the tier's serving connections (a draining one's agent is connected
/// again elsewhere, so it is not counted twice).
pub fn desired_replicas(connections: u64, per_pod: u64) -> u64 {
    connections.div_ceil(per_pod.max(1)).max(1)
}

async fn metrics(
    AxumState(s): AxumState<Arc<AdminState>>,
) -> ([(&'static str, &'static str); 1], String) {
    let depth = s.queue.depth();
    let m = &s.metrics;
    m.queue_events.set(depth.events as i64);
    m.queue_bytes.set(depth.bytes as i64);
    m.queue_capacity_events.set(depth.capacity_events as i64);
    m.queue_capacity_bytes.set(depth.capacity_bytes as i64);
    if let Some(disk) = s.queue.disk() {
        m.disk.update(&disk);
    }
    let open = s.front_door.len();
    m.connections_open.set(open as i64);
    let limit = s.front_door.limit();
    m.connection_utilisation.set(if limit > 0 {
        open as f64 / limit as f64
    } else {
        0.0
    });
    let totals = s.tier.borrow().totals();
    m.tier_connections.set(totals.connections as i64);
    m.tier_connection_limit.set(totals.connection_limit as i64);
    m.tier_peers.set(totals.live as i64);
    m.tier_desired_replicas
        .set(desired_replicas(totals.connections - totals.draining, s.target_per_pod) as i64);
    ([("content-type", "text/plain; version=0.0.4")], m.render())
}

async fn readyz(AxumState(s): AxumState<Arc<AdminState>>) -> (StatusCode, &'static str) {
    if s.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !s.pool.any_connected() {
        (StatusCode::SERVICE_UNAVAILABLE, "no OAP node reachable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `router` until `stop` fires.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn desired_replicas_round_up_and_never_reach_zero() {
        use super::desired_replicas;
        assert_eq!(desired_replicas(0, 3000), 1);
        assert_eq!(desired_replicas(3000, 3000), 1);
        assert_eq!(desired_replicas(3001, 3000), 2);
        assert_eq!(desired_replicas(9000, 3000), 3);
    }
}
