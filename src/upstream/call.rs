//! gRPC calls over one node's connection, payloads as opaque bytes, and what their
//! failures mean for retrying.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status, Streaming};

use super::Node;
use super::body::Batch;
use crate::codec::PassThrough;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The node has no live connection; nothing was sent.
    #[error("no live connection to the node")]
    NotConnected,
    #[error("upstream call timed out")]
    Timeout,
    #[error("upstream status {}: {}", .0.code(), .0.message())]
    Status(Status),
}

impl CallError {
    /// The node or the way to it is in trouble: the call may succeed elsewhere and counts
    /// against the node's health. A status the OAP chose to send (INVALID_ARGUMENT,
    /// UNAUTHENTICATED, ...) is not transient: the same data would fail anywhere.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::NotConnected | CallError::Timeout => true,
            CallError::Status(s) => matches!(
                s.code(),
                Code::Unavailable
                    | Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::Unknown
                    | Code::Internal
            ),
        }
    }

    /// The call certainly did not reach the OAP's handler: nothing sent, the request was
    /// cancelled before it left (hyper), the stream was refused, or it raced the OAP's
    /// GOAWAY (h2 GOAWAY NO_ERROR from the remote). Safe to retry even when not idempotent.
    pub fn never_reached_oap(&self) -> bool {
        match self {
            CallError::NotConnected => true,
            CallError::Timeout => false,
            CallError::Status(s) => causes(s).any(|e| {
                if let Some(h) = e.downcast_ref::<hyper::Error>() {
                    return h.is_canceled();
                }
                if let Some(h) = e.downcast_ref::<h2::Error>() {
                    return h.reason() == Some(h2::Reason::REFUSED_STREAM)
                        || h.is_go_away()
                            && h.is_remote()
                            && h.reason() == Some(h2::Reason::NO_ERROR);
                }
                false
            }),
        }
    }

    /// The connection under the call is closed, broke, or is going away: it should be
    /// replaced rather than counted against the node.
    pub fn connection_broken(&self) -> bool {
        match self {
            CallError::NotConnected => true,
            CallError::Timeout => false,
            CallError::Status(s) => {
                self.never_reached_oap()
                    || causes(s).any(|e| {
                        e.downcast_ref::<hyper::Error>()
                            .is_some_and(|h| h.is_closed() || h.is_incomplete_message())
                            || e.downcast_ref::<h2::Error>()
                                .is_some_and(|h| h.is_go_away() || h.is_io())
                            || e.is::<std::io::Error>()
                    })
            }
        }
    }

    /// The status to give an agent whose call failed here.
    pub fn into_status(self) -> Status {
        match self {
            CallError::NotConnected => Status::unavailable("satmesh: no OAP node reachable"),
            CallError::Timeout => {
                Status::deadline_exceeded("satmesh: the OAP did not answer in time")
            }
            CallError::Status(s) => s,
        }
    }
}

/// A status and every error behind it.
fn causes(status: &Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    let first: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    std::iter::successors(first, |e| e.source())
}

fn request<T>(message: T, metadata: MetadataMap, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = metadata;
    request.set_timeout(timeout);
    request
}

async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Err(_) => Err(CallError::Timeout),
    }
}

/// Sends one message and returns the OAP's answer, bytes untouched.
pub async fn unary(
    node: &Node,
    path: &'static str,
    metadata: MetadataMap,
    payload: Bytes,
    timeout: Duration,
) -> Result<Bytes, CallError> {
    let _slot = node
        .unary_slots
        .acquire()
        .await
        .map_err(|_| CallError::NotConnected)?;
    let mut client = node.client()?;
    client.ready().await.map_err(|_| CallError::NotConnected)?;
    let call = client.unary(
        request(payload, metadata, timeout),
        PathAndQuery::from_static(path),
        PassThrough,
    );
    within(timeout, call).await.map(|r| r.into_inner())
}

/// Sends a batch as one client-stream; Ok once the OAP acknowledged it.
pub async fn client_stream(
    node: &Node,
    path: &'static str,
    metadata: MetadataMap,
    batch: Batch,
    timeout: Duration,
) -> Result<(), CallError> {
    let mut client = node.client()?;
    client.ready().await.map_err(|_| CallError::NotConnected)?;
    // tonic builds the call around no messages; the batch replaces its empty body on the
    // way into hyper (`body::UpBody::from_tonic`), framed without copying large messages.
    let mut req = request(futures_util::stream::empty(), metadata, timeout);
    req.extensions_mut().insert(batch);
    let call = client.client_streaming(req, PathAndQuery::from_static(path), PassThrough);
    within(timeout, call)
        .await
        .map(|_: tonic::Response<Bytes>| ())
}

/// Opens a two-way stream; the OAP's messages come back as a stream.
pub async fn bidi(
    node: &Node,
    path: &'static str,
    metadata: MetadataMap,
    outbound: impl Stream<Item = Bytes> + Send + 'static,
) -> Result<Streaming<Bytes>, CallError> {
    let mut client = node.client()?;
    client.ready().await.map_err(|_| CallError::NotConnected)?;
    let mut req = Request::new(outbound);
    *req.metadata_mut() = metadata;
    // No deadline of satmesh's own: the stream lives as long as the agent keeps it.
    let response = client
        .streaming(req, PathAndQuery::from_static(path), PassThrough)
        .await;
    response.map(|r| r.into_inner()).map_err(CallError::Status)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tonic::metadata::MetadataValue;

    use super::super::tests::{h2_pipe, h2_pipe_with_server};
    use super::super::{ConnectSettings, Health, Pool};
    use super::*;
    use crate::metrics::Metrics;

    const PATH: &str = "/skywalking.v3.Test/call";

    fn status(code: Code) -> CallError {
        CallError::Status(Status::new(code, "from the oap"))
    }

    fn with_source(e: impl std::error::Error + Send + Sync + 'static) -> CallError {
        CallError::Status(Status::from_error(Box::new(e)))
    }

    /// An error that wraps another, as a transport error wraps the io error under it.
    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wrapper(#[source] std::io::Error);

    #[test]
    fn transient_codes_are_the_node_in_trouble() {
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Unknown,
            Code::Internal,
        ] {
            assert!(status(code).is_transient(), "{code:?}");
        }
        assert!(CallError::NotConnected.is_transient());
        assert!(CallError::Timeout.is_transient());
    }

    #[test]
    fn statuses_the_oap_chose_are_not_transient() {
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::AlreadyExists,
            Code::OutOfRange,
            Code::DataLoss,
        ] {
            assert!(!status(code).is_transient(), "{code:?}");
        }
    }

    #[test]
    fn only_unsent_calls_never_reached_the_oap() {
        assert!(CallError::NotConnected.never_reached_oap());
        assert!(!CallError::Timeout.never_reached_oap());
        assert!(!status(Code::Unavailable).never_reached_oap());
        assert!(!with_source(std::io::Error::other("x")).never_reached_oap());
    }

    #[test]
    fn a_refused_stream_never_reached_the_oap() {
        // tonic maps an h2 error to a status and keeps the h2 error as its source.
        let refused = with_source(h2::Error::from(h2::Reason::REFUSED_STREAM));
        let CallError::Status(s) = &refused else {
            unreachable!()
        };
        assert_eq!(s.code(), Code::Unavailable);
        assert!(refused.never_reached_oap());
        assert!(refused.connection_broken());

        let cancelled = with_source(h2::Error::from(h2::Reason::CANCEL));
        assert!(!cancelled.never_reached_oap());
        assert!(!cancelled.connection_broken());
    }

    #[test]
    fn an_io_error_under_a_status_means_the_connection_broke() {
        let broken = with_source(std::io::Error::other("x"));
        let CallError::Status(s) = &broken else {
            unreachable!()
        };
        // tonic keeps the io error as the status' source (code UNKNOWN).
        assert_eq!(s.code(), Code::Unknown);
        let source = std::error::Error::source(s).expect("tonic keeps the source");
        assert!(source.is::<std::io::Error>());
        assert!(broken.connection_broken());

        // Deeper in the chain counts too.
        let nested = with_source(Wrapper(std::io::Error::other("reset")));
        assert!(nested.connection_broken());
    }

    #[test]
    fn other_errors_do_not_break_the_connection() {
        assert!(CallError::NotConnected.connection_broken());
        assert!(!CallError::Timeout.connection_broken());
        assert!(!status(Code::Unavailable).connection_broken());
        assert!(!status(Code::InvalidArgument).connection_broken());
        let protocol = with_source(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
        assert!(!protocol.connection_broken());
    }

    #[test]
    fn into_status_tells_the_agent_what_happened() {
        assert_eq!(
            CallError::NotConnected.into_status().code(),
            Code::Unavailable
        );
        assert_eq!(
            CallError::Timeout.into_status().code(),
            Code::DeadlineExceeded
        );
        let s = CallError::Status(Status::invalid_argument("bad segment")).into_status();
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "bad segment")
        );
    }

    #[test]
    fn request_carries_metadata_and_deadline() {
        let mut metadata = MetadataMap::new();
        metadata.insert("authentication", MetadataValue::from_static("token"));
        let r = request((), metadata, Duration::from_secs(2));
        assert_eq!(r.metadata().get("authentication").unwrap(), "token");
        assert!(r.metadata().get("grpc-timeout").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn within_times_out_a_call_that_does_not_answer() {
        let never = std::future::pending::<Result<(), Status>>();
        let started = tokio::time::Instant::now();
        let r = within(Duration::from_secs(5), never).await;
        assert!(matches!(r, Err(CallError::Timeout)));
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let r = within(Duration::from_secs(5), async {
            Err::<(), _>(Status::not_found("x"))
        })
        .await;
        assert!(matches!(r, Err(CallError::Status(s)) if s.code() == Code::NotFound));
        assert_eq!(
            within(Duration::from_secs(5), async { Ok::<_, Status>(7) })
                .await
                .unwrap(),
            7
        );
    }

    fn pool() -> Arc<Pool> {
        let settings = ConnectSettings {
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        };
        let health = Health {
            eject_after: 3,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        };
        Pool::new(
            settings,
            health,
            Arc::new(Metrics::new()),
            tokio_util::task::TaskTracker::new(),
        )
    }

    /// What the fake OAP does with a call.
    #[derive(Clone, Copy)]
    enum Oap {
        /// Answers the concatenation of the messages it got.
        Concat,
        /// Answers INVALID_ARGUMENT.
        Reject,
        /// Never answers.
        Hang,
    }

    async fn oap(
        behaviour: Oap,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let svc = tower::service_fn(move |r: Request<Streaming<Bytes>>| async move {
            let mut stream = r.into_inner();
            let mut all = Vec::new();
            while let Some(m) = stream.message().await? {
                all.extend_from_slice(&m);
            }
            match behaviour {
                Oap::Concat => Ok(tonic::Response::new(Bytes::from(all))),
                Oap::Reject => Err(Status::invalid_argument("bad data")),
                Oap::Hang => std::future::pending().await,
            }
        });
        tonic::server::Grpc::new(PassThrough)
            .client_streaming(svc, req)
            .await
    }

    async fn node_with(behaviour: Oap) -> Arc<Node> {
        let pool = pool();
        let node = super::super::tests::node(&pool, 11800, 1);
        node.set_connection(Some(h2_pipe(move |req| oap(behaviour, req)).await));
        node
    }

    #[tokio::test]
    async fn calls_on_an_unconnected_node_are_not_sent() {
        let pool = pool();
        let node = super::super::tests::node(&pool, 11800, 1);
        let r = unary(
            &node,
            PATH,
            MetadataMap::new(),
            Bytes::new(),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(CallError::NotConnected)));
        let r = client_stream(
            &node,
            PATH,
            MetadataMap::new(),
            Batch::default(),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(r, Err(CallError::NotConnected)));
        let r = bidi(
            &node,
            PATH,
            MetadataMap::new(),
            futures_util::stream::empty(),
        )
        .await;
        assert!(matches!(r, Err(CallError::NotConnected)));
    }

    #[tokio::test]
    async fn unary_returns_the_oaps_answer_untouched() {
        let node = node_with(Oap::Concat).await;
        let payload = Bytes::from_static(b"\x0a\x03abc\xff\x00");
        let answer = unary(
            &node,
            PATH,
            MetadataMap::new(),
            payload.clone(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(answer, payload);
    }

    #[tokio::test]
    async fn client_stream_is_acknowledged_after_every_message() {
        let node = node_with(Oap::Concat).await;
        let r = client_stream(
            &node,
            PATH,
            MetadataMap::new(),
            Batch::new(&[Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
            Duration::from_secs(5),
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
    }

    /// Small and large messages, and a batch over many frames and several flow-control
    /// windows: the OAP reads exactly the messages of the batch, in order.
    #[tokio::test]
    async fn a_batch_arrives_message_for_message() {
        let got = Arc::new(std::sync::Mutex::new(Vec::<Bytes>::new()));
        let seen = got.clone();
        let sender = h2_pipe(move |req| {
            let seen = seen.clone();
            async move {
                let svc = tower::service_fn(move |r: Request<Streaming<Bytes>>| {
                    let seen = seen.clone();
                    async move {
                        let mut stream = r.into_inner();
                        while let Some(m) = stream.message().await? {
                            seen.lock().unwrap().push(m);
                        }
                        Ok::<_, Status>(tonic::Response::new(Bytes::new()))
                    }
                });
                tonic::server::Grpc::new(PassThrough)
                    .client_streaming(svc, req)
                    .await
            }
        })
        .await;
        let pool = pool();
        let node = super::super::tests::node(&pool, 11800, 1);
        node.set_connection(Some(sender));
        let sizes = [0, 1, 300, 2047, 2048, 4096, 16_384, 70_000, 5, 4096];
        let sent: Vec<Bytes> = (0..60)
            .map(|i| {
                let len = sizes[i % sizes.len()];
                Bytes::from((0..len).map(|b| (b * 31 + i) as u8).collect::<Vec<u8>>())
            })
            .collect();
        client_stream(
            &node,
            PATH,
            MetadataMap::new(),
            Batch::new(&sent),
            Duration::from_secs(10),
        )
        .await
        .expect("acknowledged");
        assert_eq!(*got.lock().unwrap(), sent);
    }

    #[tokio::test]
    async fn bidi_streams_the_oaps_answers_back() {
        let node = node_with(Oap::Concat).await;
        let outbound =
            futures_util::stream::iter([Bytes::from_static(b"x"), Bytes::from_static(b"y")]);
        let mut answers = bidi(&node, PATH, MetadataMap::new(), outbound)
            .await
            .unwrap();
        assert_eq!(
            answers.message().await.unwrap(),
            Some(Bytes::from_static(b"xy"))
        );
        assert_eq!(answers.message().await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_oap_rejection_is_a_status_that_is_not_transient() {
        let node = node_with(Oap::Reject).await;
        let e = unary(
            &node,
            PATH,
            MetadataMap::new(),
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, CallError::Status(s) if s.code() == Code::InvalidArgument),
            "{e:?}"
        );
        assert!(!e.is_transient() && !e.never_reached_oap() && !e.connection_broken());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_the_oap_does_not_answer_times_out() {
        let node = node_with(Oap::Hang).await;
        let started = tokio::time::Instant::now();
        let e = client_stream(
            &node,
            PATH,
            MetadataMap::new(),
            Batch::new(&[Bytes::from_static(b"a")]),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CallError::Timeout), "{e:?}");
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(e.is_transient() && !e.never_reached_oap());
    }

    #[tokio::test]
    async fn a_connection_cut_under_a_call_is_broken_but_may_have_reached_the_oap() {
        let pool = pool();
        let node = super::super::tests::node(&pool, 11800, 1);
        let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
        let (sender, server) = h2_pipe_with_server(move |req| {
            let _ = reached_tx.send(());
            oap(Oap::Hang, req)
        })
        .await;
        node.set_connection(Some(sender));
        let call = tokio::spawn({
            let node = node.clone();
            async move {
                let payload = Bytes::from_static(b"a");
                let timeout = Duration::from_secs(30);
                unary(&node, PATH, MetadataMap::new(), payload, timeout).await
            }
        });
        reached.recv().await.expect("the request reaches the oap");
        server.abort();
        let e = call.await.unwrap().unwrap_err();
        // hyper reports the cut as an io error under the status: replace the connection,
        // and do not retry a call the OAP may have handled.
        assert!(e.connection_broken(), "{e:?}");
        assert!(!e.never_reached_oap(), "{e:?}");
    }
}
