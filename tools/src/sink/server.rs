//! The sink's two servers. gRPC: its own accept loop on hyper's HTTP/2 server (as an OAP
//! behind satmesh would be: h2c, prior knowledge), so it can refuse a connection before
//! the handshake and send one chosen connection a graceful GOAWAY; every connection task
//! is joined before [`serve_grpc`] returns. Admin: HTTP/1 on axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State as AxumState;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::linger::Lingering;
use super::service::SinkService;
use super::{CountsView, Faults, Sink};
use crate::load::latency::LatencySummary;

/// A connection told to go away (`goaway_after_calls`) is closed this long after its
/// GOAWAY if its streams have not finished, as satmesh's own drains are.
const GOAWAY_GRACE: Duration = Duration::from_secs(60);
/// At stop, open connections get their GOAWAY and are closed this long after it.
const STOP_GRACE: Duration = Duration::from_secs(1);

type Connection = hyper::server::conn::http2::Connection<
    TokioIo<Lingering>,
    TowerToHyperService<SinkService>,
    TokioExecutor,
>;

/// Serves the sink's gRPC side until `stop`, then drains every connection (see
/// [`STOP_GRACE`]) and returns once all have ended.
pub async fn serve_grpc(sink: Arc<Sink>, listener: TcpListener, stop: CancellationToken) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "sink accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if sink.faults().refuse {
            // A reset before the HTTP/2 handshake, as an OAP that is not up yet.
            let _ = stream.set_zero_linger();
            continue;
        }
        let _ = stream.set_nodelay(true);
        let goaway = CancellationToken::new();
        let service = SinkService {
            sink: sink.clone(),
            goaway: goaway.clone(),
            calls: Default::default(),
        };
        let stream = Lingering::new(stream, connections.clone());
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        connections.spawn(drive(conn, peer, goaway, stop.clone()));
    }
    connections.close();
    connections.wait().await;
}

/// Polls one connection to its end: after a GOAWAY (asked for, or at stop) it is still
/// polled so its open streams finish, until its grace runs out.
async fn drive(
    conn: Connection,
    peer: SocketAddr,
    goaway: CancellationToken,
    stop: CancellationToken,
) {
    let mut conn = std::pin::pin!(conn);
    let grace = tokio::select! {
        ended = conn.as_mut() => {
            if let Err(e) = ended {
                debug!(%peer, error = %e, "sink connection ended with an error");
            }
            return;
        }
        _ = goaway.cancelled() => GOAWAY_GRACE,
        _ = stop.cancelled() => STOP_GRACE,
    };
    conn.as_mut().graceful_shutdown();
    let mut hard_close = Instant::now() + grace;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = sleep_until(hard_close) => {
                debug!(%peer, "sink connection closed at the end of its grace");
                return;
            }
            _ = stop.cancelled(), if hard_close > Instant::now() + STOP_GRACE => {
                hard_close = Instant::now() + STOP_GRACE;
            }
        }
    }
}

async fn get_counts(AxumState(sink): AxumState<Arc<Sink>>) -> Json<CountsView> {
    Json(sink.counts())
}

async fn get_faults(AxumState(sink): AxumState<Arc<Sink>>) -> Json<Faults> {
    Json(sink.faults())
}

async fn set_faults(AxumState(sink): AxumState<Arc<Sink>>, Json(f): Json<Faults>) -> Json<Faults> {
    sink.set_faults(f);
    Json(sink.faults())
}

async fn get_latency(AxumState(sink): AxumState<Arc<Sink>>) -> Json<LatencySummary> {
    Json(sink.latency())
}

async fn reset_latency(AxumState(sink): AxumState<Arc<Sink>>) -> Json<LatencySummary> {
    sink.reset_latency();
    Json(sink.latency())
}

/// The sink's admin side: `GET /counts`, `GET|POST /faults`, `GET /latency`,
/// `POST /latency/reset`.
pub fn router(sink: Arc<Sink>) -> Router {
    Router::new()
        .route("/counts", get(get_counts))
        .route("/faults", get(get_faults).post(set_faults))
        .route("/latency", get(get_latency))
        .route("/latency/reset", post(reset_latency))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(sink)
}

/// Serves [`router`] until `stop`.
pub async fn serve_admin(sink: Arc<Sink>, listener: TcpListener, stop: CancellationToken) {
    let result = axum::serve(listener, router(sink))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "sink admin server failed");
    }
}
