//! One HTTP/2 connection per OAP node, kept open by a manager task that reconnects with
//! backoff. The connection state is what node health starts from: a node is connected
//! once its HTTP/2 handshake has completed, not when TCP connects.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::body::UpBody;
use super::{Node, backoff, handshake};

/// A tower service over one HTTP/2 connection, for tonic's client.
#[derive(Clone)]
pub struct H2Service(pub SendRequest<UpBody>);

impl tower::Service<http::Request<tonic::body::Body>> for H2Service {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(UpBody::from_tonic(req)))
    }
}

/// HTTP/2 receive windows of an upstream connection (see `connect`).
const UPSTREAM_CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
const UPSTREAM_STREAM_WINDOW: u32 = 1024 * 1024;

/// Connection settings shared by every node.
#[derive(Clone, Debug)]
pub struct ConnectSettings {
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("tcp connect: {0}")]
    Tcp(#[from] std::io::Error),
    #[error("http/2 handshake: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("closed before the http/2 handshake completed")]
    ClosedInHandshake,
}

/// Opens a connection to `addr` and returns once its HTTP/2 handshake has completed (see
/// `handshake`), within `timeout`.
async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tasks: &TaskTracker,
) -> Result<(SendRequest<UpBody>, tokio::task::JoinHandle<()>), ConnectError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let open = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (stream, completed) = handshake::watch(stream);
        // What comes back from an OAP is answers: many small DATA frames when unary calls
        // run concurrently. h2 (0.4.20) allows unread small frames up to half the
        // connection window and then sends GOAWAY ENHANCE_YOUR_CALM ("too_many_data_frames")
        // to the OAP; with the default 64 KiB window (where an adaptive window starts) that
        // was ~130 answers, and every call that raced the GOAWAY after reaching the OAP was
        // sent again (duplicates). A fixed 2 MiB window allows ~4,000.
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
            .initial_stream_window_size(UPSTREAM_STREAM_WINDOW)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await?;
        Ok::<_, ConnectError>((sender, conn, completed))
    };
    let (sender, conn, completed) = tokio::time::timeout_at(deadline, open)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    // The connection has to be driven for the server's frames to be read.
    let driver = tasks.spawn(async move {
        if let Err(e) = conn.await {
            debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    match tokio::time::timeout_at(deadline, completed).await {
        Ok(Ok(())) => Ok((sender, driver)),
        Ok(Err(_)) => {
            driver.abort();
            Err(ConnectError::ClosedInHandshake)
        }
        Err(_) => {
            driver.abort();
            Err(ConnectError::Timeout)
        }
    }
}

/// Keeps `node` connected until `stop` fires; each connection's driver runs on `tasks`
/// (it ends once the connection's last stream has).
pub async fn manage(
    node: Arc<Node>,
    settings: ConnectSettings,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            attempt = connect(node.addr, settings.connect_timeout, &tasks) => attempt,
        };
        match attempt {
            Ok((sender, driver)) => {
                if failures > 0 {
                    info!(node = %node.addr, "upstream connected");
                }
                failures = 0;
                let since = Instant::now();
                node.set_connection(Some(sender));
                tokio::select! {
                    _ = stop.cancelled() => {
                        node.set_connection(None);
                        return;
                    }
                    _ = driver => {
                        node.set_connection(None);
                        warn!(node = %node.addr, up_for = ?since.elapsed(), "upstream connection closed, reconnecting");
                        if since.elapsed() < settings.backoff_max {
                            // A connection that dies at once must not become a reconnect loop.
                            failures = 1;
                        }
                    }
                    _ = node.reconnect.notified() => {
                        // A call met the OAP's GOAWAY: open a new connection now and let
                        // the old one finish its streams on its own.
                        node.set_connection(None);
                        info!(node = %node.addr, "upstream connection draining (GOAWAY), reconnecting");
                        continue;
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                node.record_connect_failure();
                let wait = backoff(failures, settings.backoff_min, settings.backoff_max);
                if failures == 1 || failures.is_multiple_of(20) {
                    warn!(node = %node.addr, error = %e, attempts = failures, retry_in = ?wait, "upstream connect failed");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        }
        if failures > 0 {
            let wait = backoff(failures, settings.backoff_min, settings.backoff_max);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::*;
    use crate::metrics::Metrics;

    /// A node at `addr` with its manager running, and the count of its connection changes.
    fn managed(
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> (Arc<Node>, watch::Receiver<u64>, CancellationToken) {
        let (changed, changes) = watch::channel(0);
        let node = Arc::new(Node::new(
            addr,
            1,
            Instant::now(),
            Arc::new(Metrics::new()),
            changed,
        ));
        let settings = ConnectSettings {
            connect_timeout,
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(10),
        };
        let stop = CancellationToken::new();
        tokio::spawn(manage(
            node.clone(),
            settings,
            stop.clone(),
            TaskTracker::new(),
        ));
        (node, changes, stop)
    }

    fn connect_failures(node: &Node) -> u64 {
        node.metrics
            .upstream_failures
            .with_label_values(&[&node.label])
            .get()
    }

    async fn accept(listener: &TcpListener) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the manager connects again within 10 s")
            .expect("accept")
            .0
    }

    #[tokio::test]
    async fn a_server_that_closes_after_accept_never_counts_as_connected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (node, changes, stop) = managed(listener.local_addr().unwrap(), Duration::from_secs(5));
        const ATTEMPTS: u64 = 6;
        for i in 0..ATTEMPTS {
            let stream = accept(&listener).await;
            // Half closed with a FIN (our preface is written before it lands), half reset.
            if i % 2 == 1 {
                stream.set_zero_linger().unwrap();
            }
            drop(stream);
        }
        // The last attempt may still be under way.
        let deadline = Instant::now() + Duration::from_secs(10);
        while connect_failures(&node) < ATTEMPTS - 1 {
            assert_eq!(*changes.borrow(), 0, "the node was set connected");
            assert!(
                Instant::now() < deadline,
                "failures: {}",
                connect_failures(&node)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        assert_eq!(*changes.borrow(), 0, "the node was set connected");
        assert!(!node.is_connected());
    }

    #[tokio::test]
    async fn a_server_that_never_acknowledges_our_settings_is_given_up_on() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (node, changes, stop) =
            managed(listener.local_addr().unwrap(), Duration::from_millis(200));
        let mut first = accept(&listener).await;
        // An empty SETTINGS frame (the server's preface), then nothing: our SETTINGS stay
        // unacknowledged while the connection stays open.
        first.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = first.read_to_end(&mut sink).await;
        });
        // The manager gives up on the connection and tries again.
        let _second = accept(&listener).await;
        stop.cancel();
        reader.abort();
        assert_eq!(*changes.borrow(), 0, "the node was set connected");
        assert!(connect_failures(&node) >= 1);
    }

    #[tokio::test]
    async fn an_http2_server_counts_as_connected() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|_| async {
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let (node, mut changes, stop) = managed(addr, Duration::from_secs(5));
        tokio::time::timeout(
            Duration::from_secs(10),
            changes.wait_for(|_| node.is_connected()),
        )
        .await
        .expect("connected within 10 s")
        .unwrap();
        assert_eq!(connect_failures(&node), 0);
        stop.cancel();
        server.abort();
    }
}
