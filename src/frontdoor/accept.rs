//! The accept loop: satmesh owns it (rather than tonic's `Server`) so that it can turn a
//! connection away before the HTTP/2 handshake, drain one chosen connection with a
//! graceful GOAWAY, and know every live connection (`registry`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::{Admit, TurnAway};
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
    let mut listening = Listening::new(listener, connections.clone());
    loop {
        let Some(open) = listening.open(&stop).await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = open.accept() => match accepted {
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
        let verdict = connections.admit(peer);
        if verdict != Admit::Serve || !admit(&info) {
            // A reset, not a FIN: nothing lingers in TIME_WAIT when a client retries in a
            // hot loop, and gRPC clients take it as a failed attempt (next address).
            let _ = stream.set_zero_linger();
            drop(stream);
            if verdict == Admit::TurnAway(TurnAway::OverShare) {
                listening.close();
            }
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
                    // An error satmesh's HTTP/2 layer raised itself (a GOAWAY it sent for a
                    // protocol violation or abuse) is worth a warning; an agent that went
                    // away is not.
                    let ours = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<h2::Error>())
                        .is_some_and(|h| h.is_library());
                    if ours {
                        warn!(peer = %info.peer, error = %e, "agent connection closed by satmesh on an HTTP/2 error");
                    } else {
                        debug!(peer = %info.peer, error = %e, "agent connection ended with an error");
                    }
                }
                on_close(info);
            },
        );
    }
}

/// How often a closed listener asks whether it may open again.
const REOPEN_CHECK: Duration = Duration::from_millis(100);

/// The agent listener, closed while this peer is above its share of the tier.
///
/// Turning a connection away after `accept` (a reset before the HTTP/2 handshake) sends
/// a gRPC client with several addresses to the next one only if the client treats a
/// failed handshake as a failed address: grpc-core (Python) does; tonic/hyper (the Rust
/// agent) does not, it tries the next address of a DNS name only when `connect()` itself
/// fails. So the first over-share turn-away also closes the listening socket: every
/// client's `connect()` is then refused by the kernel and moves on at once, whatever its
/// library. The socket is bound again as soon as an arrival would be served (checked
/// every 100 ms). While it is closed, refused connections are not counted one by one:
/// `satmesh_listener_open` is 0 and `satmesh_listener_closed_total` counts the closings.
struct Listening {
    listener: Option<TcpListener>,
    addr: std::net::SocketAddr,
    connections: Connections,
}

impl Listening {
    fn new(listener: TcpListener, connections: Connections) -> Listening {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        connections.listener_opened();
        Listening {
            listener: Some(listener),
            addr,
            connections,
        }
    }

    /// The open listener, reopening it first when it was closed and this peer may take
    /// connections again. None once `stop` fires.
    async fn open(&mut self, stop: &CancellationToken) -> Option<&TcpListener> {
        while self.listener.is_none() {
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(REOPEN_CHECK) => {}
            }
            if !self.connections.would_admit() {
                continue;
            }
            match bind(self.addr) {
                Ok(listener) => {
                    info!(addr = %self.addr, "back within the tier's share, listening again");
                    self.connections.listener_opened();
                    self.listener = Some(listener);
                }
                Err(e) => warn!(addr = %self.addr, error = %e, "cannot listen again, retrying"),
            }
        }
        self.listener.as_ref()
    }

    /// Closes the listener: the kernel refuses new connections (and resets those it had
    /// queued but not yet handed to `accept`).
    fn close(&mut self) {
        if self.listener.take().is_some() {
            info!(addr = %self.addr, "above the tier's share, listener closed: new connections go to other peers");
            self.connections.listener_closed();
        }
    }
}

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
