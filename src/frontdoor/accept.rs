//! The accept loop: satmesh owns it (rather than tonic's `Server`) so that it can turn a
//! connection away, drain one chosen connection with a graceful GOAWAY, and know every
//! live connection. Used by the proxy and by the sink.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// What a connection's handlers know about it.
#[derive(Debug)]
pub struct ConnInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// Cancelled when this connection is being drained (GOAWAY sent).
    pub drain: CancellationToken,
}

/// HTTP/2 settings of the agent-facing side.
#[derive(Clone, Debug)]
pub struct H2Settings {
    pub max_concurrent_streams: u32,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
}

/// The live connections of one listener, and the signals that end them.
#[derive(Clone)]
pub struct Connections {
    tracker: TaskTracker,
    /// Parent of every connection's drain token: cancelling it drains them all.
    drain_all: CancellationToken,
    /// Ends draining connections that have not finished by their deadline.
    hard_close: CancellationToken,
    next_id: Arc<AtomicU64>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            tracker: TaskTracker::new(),
            drain_all: CancellationToken::new(),
            hard_close: CancellationToken::new(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl Connections {
    /// Sends every connection a graceful GOAWAY; waits up to `grace` for them to finish,
    /// then closes what is left. Returns how many had to be closed hard.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.tracker.close();
        self.drain_all.cancel();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            let left = self.tracker.len();
            warn!(
                connections = left,
                "connections still open after the grace, closing them"
            );
            self.hard_close.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
            return left;
        }
        0
    }

    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

/// Accepts connections until `stop` fires. `admit` may turn a connection away before
/// the HTTP/2 handshake; `make` builds the service for an admitted one; `on_close` runs
/// when it ends.
pub async fn accept_loop<S, M, A, C>(
    listener: TcpListener,
    settings: H2Settings,
    connections: Connections,
    stop: CancellationToken,
    admit: A,
    make: M,
    on_close: C,
) where
    S: tower::Service<
            http::Request<Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    M: Fn(Arc<ConnInfo>) -> S,
    A: Fn(&ConnInfo) -> bool,
    C: Fn(&ConnInfo) + Clone + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_stream_window_size(settings.stream_window_bytes)
        .initial_connection_window_size(settings.connection_window_bytes)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let info = Arc::new(ConnInfo {
            id: connections.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            drain: connections.drain_all.child_token(),
        });
        if !admit(&info) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(make(info.clone()));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let hard_close = connections.hard_close.clone();
        let on_close = on_close.clone();
        connections.tracker.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = info.drain.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = conn.as_mut() => result,
                        _ = hard_close.cancelled() => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                debug!(peer = %info.peer, error = %e, "agent connection ended with an error");
            }
            on_close(&info);
        });
    }
}
