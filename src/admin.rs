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
}

impl AdminState {
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
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
    m.connections_open.set(s.front_door.len() as i64);
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
