//! Front door: the agent-facing gRPC server. The accept loop (`accept`) admits or turns
//! away connections (`admission`); each lives through `lifecycle` (serving -> draining ->
//! closed) and is listed in the `registry`, which the shedder reads and drains from.
//! `Handler` looks each call's path up in the protocol table and hands it to the async
//! path (`receive`: queue, then answer, reading messages with `deframe`) or the sync path
//! (`forward`: call an OAP now and relay its answer, or relay a two-way stream live);
//! `stream` follows each call's progress so a draining connection's streams end between
//! two messages; `returns` marks shed clients that came back to the same peer; `routes`
//! shows and drains connections on the admin listener.

pub mod accept;
pub mod admission;
mod deframe;
mod forward;
pub mod lifecycle;
mod receive;
pub mod registry;
pub mod returns;
pub mod routes;
pub mod stream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Code, Status};

use crate::codec::PassThrough;
use crate::metrics::Metrics;
use crate::pipeline::EventQueue;
use crate::protocol::{self, Policy, RoutePolicy};
use crate::upstream::Pool;
pub use accept::H2Settings;
pub use admission::{Admission, Admit, Arrival, TurnAway};
pub use lifecycle::{ConnId, ConnInfo, ConnState, DrainReason, StreamEnd};
pub use registry::{ConnSnapshot, Connections, LifecycleCounts, LifecycleSettings};
use stream::{Guarded, StreamProgress, Tracked};

/// What every call handler shares.
pub struct State {
    pub queue: Arc<dyn EventQueue>,
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub max_message_bytes: usize,
    /// `upstream.token`; when set, agents' tokens are not carried with batches.
    pub token: Option<MetadataValue<Ascii>>,
    pub sync_timeout: Duration,
    /// Routing policy per method id.
    pub policies: Vec<RoutePolicy>,
}

/// The tower service of one agent connection.
#[derive(Clone)]
pub struct Handler {
    pub state: Arc<State>,
    pub conn: Arc<ConnInfo>,
}

type Response = http::Response<tonic::body::Body>;

impl tower::Service<http::Request<Incoming>> for Handler {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        let state = self.state.clone();
        let conn = self.conn.clone();
        let guard = conn.stream_opened();
        let progress = StreamProgress::new();
        let req = req.map(|body| Tracked::new(body, progress.clone(), conn.clone()));
        Box::pin(async move {
            let Some(id) = protocol::lookup(req.uri().path()) else {
                state
                    .metrics
                    .refused
                    .with_label_values(&["unknown_path"])
                    .inc();
                let status = Status::unimplemented(format!(
                    "satmesh does not carry the path {}",
                    req.uri().path()
                ));
                return Ok(status.into_http());
            };
            let mut grpc = tonic::server::Grpc::new(PassThrough)
                .max_decoding_message_size(state.max_message_bytes)
                .max_encoding_message_size(usize::MAX)
                .accept_compressed(CompressionEncoding::Gzip);
            let method = protocol::method(id);
            state.metrics.method(id).calls_in.inc();
            let response = match method.policy {
                // What agents send: no compression. Messages are sliced out of the DATA
                // frames (`deframe`) and the answer is built here, without tonic.
                Policy::Async if !compressed(&req) => {
                    let auth = req
                        .headers()
                        .get("authentication")
                        .map(|v| bytes::Bytes::copy_from_slice(v.as_bytes()));
                    let messages = deframe::Deframed::new(req.into_body(), state.max_message_bytes);
                    match receive::receive(state.clone(), conn, progress, id, auth, messages).await
                    {
                        Ok(()) => ok_response(),
                        Err(status) => status.into_http(),
                    }
                }
                Policy::Async => {
                    let svc = tower::service_fn(move |r| {
                        receive::receive_tonic(state.clone(), conn.clone(), progress.clone(), id, r)
                    });
                    grpc.client_streaming(svc, req).await
                }
                Policy::Sync | Policy::Query => {
                    let svc = tower::service_fn(move |r| forward::forward(state.clone(), id, r));
                    grpc.client_streaming(svc, req).await
                }
                Policy::Relay => {
                    let svc = tower::service_fn(move |r| forward::relay(state.clone(), id, r));
                    grpc.streaming(svc, req).await
                }
            };
            Ok(response.map(|body| tonic::body::Body::new(Guarded::new(body, guard))))
        })
    }
}

/// Whether a call's messages may be compressed (`grpc-encoding` other than identity).
fn compressed<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get("grpc-encoding")
        .is_some_and(|e| e.as_bytes() != b"identity")
}

/// OK with one empty message: a valid answer for every async method ("no commands").
fn ok_response() -> Response {
    let mut response = http::Response::new(tonic::body::Body::new(OkBody::Message));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The body of [`ok_response`]: one empty gRPC message, then `grpc-status: 0`.
enum OkBody {
    Message,
    Trailers,
    Done,
}

impl http_body::Body for OkBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
        let frame = match *self {
            OkBody::Message => {
                *self = OkBody::Trailers;
                http_body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))
            }
            OkBody::Trailers => {
                *self = OkBody::Done;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                http_body::Frame::trailers(trailers)
            }
            OkBody::Done => return Poll::Ready(None),
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, OkBody::Done)
    }
}

/// The status for a message tonic could not take from the agent. An oversize message
/// becomes INVALID_ARGUMENT naming the limit: tonic's OUT_OF_RANGE is silently lost by
/// the Java agent, and RESOURCE_EXHAUSTED / UNAVAILABLE would mark its channel broken.
pub(crate) fn refuse(state: &State, status: Status) -> Status {
    if status.code() == Code::OutOfRange {
        state.metrics.refused.with_label_values(&["oversize"]).inc();
        return Status::invalid_argument(format!(
            "satmesh: message larger than server.max_message_bytes = {} bytes ({})",
            state.max_message_bytes,
            status.message()
        ));
    }
    status
}
