//! The accept loop: satmesh owns it (rather than tonic's `Server`) so that it can turn a
//! connection away before the HTTP/2 handshake, drain one chosen connection with a
//! graceful GOAWAY, and know every live connection (`registry`). Used by the proxy and by
//! the sink.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::admission::Admit;
use super::lifecycle::{ConnInfo, Ending};
use super::registry::Connections;

/// HTTP/2 settings of the agent-facing side.
#[derive(Clone, Debug)]
pub struct H2Settings {
    pub max_concurrent_streams: u32,
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
}

/// Accepts connections until `stop` fires. Each is first checked against the registry's
/// limit and admission policy, then `admit`; one turned away is reset before the HTTP/2
/// handshake (see `admission` for why). `make` builds the service of a served one;
/// `on_close` runs when it ends.
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
        let info = connections.prepare(peer);
        if connections.admit(peer) != Admit::Serve || !admit(&info) {
            // A reset, not a FIN: nothing lingers in TIME_WAIT when a client retries in a
            // hot loop, and gRPC clients take it as a failed attempt (next address).
            let _ = stream.set_zero_linger();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(make(info.clone()));
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let on_close = on_close.clone();
        connections.spawn(
            info,
            conn,
            |conn| conn.graceful_shutdown(),
            move |info, ending| {
                if let Ending::Finished(Err(e)) = ending {
                    debug!(peer = %info.peer, error = %e, "agent connection ended with an error");
                }
                on_close(info);
            },
        );
    }
}
