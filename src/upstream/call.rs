//! gRPC calls over one node's connection, payloads as opaque bytes, and what their
//! failures mean for retrying.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::uri::PathAndQuery;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status, Streaming};

use super::Node;
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
    payloads: Vec<Bytes>,
    timeout: Duration,
) -> Result<(), CallError> {
    let mut client = node.client()?;
    client.ready().await.map_err(|_| CallError::NotConnected)?;
    let stream = futures_util::stream::iter(payloads);
    let call = client.client_streaming(
        request(stream, metadata, timeout),
        PathAndQuery::from_static(path),
        PassThrough,
    );
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
