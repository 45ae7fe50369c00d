//! One sink connection's gRPC service: every call on every path is read to its end,
//! counted once acknowledged, and answered with an empty message (or its echo).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use satmesh_proto::codec::PassThrough;
use satmesh_proto::paths::{self, Answer, Payload, Shape};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{Sink, measures_delivery};
use crate::load::latency;

/// The service of one connection.
#[derive(Clone)]
pub(super) struct SinkService {
    pub sink: Arc<Sink>,
    /// Cancelled to send this connection its graceful GOAWAY (`goaway_after_calls`).
    pub goaway: CancellationToken,
    /// Calls started on this connection.
    pub calls: Arc<AtomicU64>,
}

type AnswerStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

impl tower::Service<http::Request<Incoming>> for SinkService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Incoming>) -> Self::Future {
        let sink = self.sink.clone();
        let goaway_after = sink.faults().goaway_after_calls;
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if goaway_after > 0 && calls >= goaway_after {
            self.goaway.cancel();
        }
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let known = paths::find(&path).map(|i| &paths::PATHS[i]);
            let payload = known.map_or(Payload::Opaque, |p| p.payload);
            // Calls whose answer the agent reads may echo; reports always get an empty one.
            let echoes = known.is_some_and(|p| p.answer == Answer::Reply);
            let mut grpc = tonic::server::Grpc::new(PassThrough)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX);
            let response = if known.is_some_and(|p| p.shape == Shape::Bidi) {
                let svc = tower::service_fn(move |r: Request<Streaming<Bytes>>| {
                    let sink = sink.clone();
                    let path = path.clone();
                    async move {
                        let faults = sink.faults();
                        let auth = auth_of(&r);
                        let answers = r.into_inner().map(move |m| {
                            let m = m?;
                            sink.record(&path, payload, &auth, std::slice::from_ref(&m), &[]);
                            Ok(if faults.echo { m } else { Bytes::new() })
                        });
                        Ok::<_, Status>(Response::new(Box::pin(answers) as AnswerStream))
                    }
                });
                grpc.streaming(svc, req).await
            } else {
                let svc = tower::service_fn(move |r: Request<Streaming<Bytes>>| {
                    let sink = sink.clone();
                    let path = path.clone();
                    async move {
                        let faults = sink.faults();
                        let auth = auth_of(&r);
                        let mut stream = r.into_inner();
                        let mut messages = Vec::new();
                        let mut arrived = Vec::new();
                        let stamps = measures_delivery(payload);
                        while let Some(m) = stream.message().await? {
                            if stamps {
                                arrived.push(latency::unix_nanos());
                            }
                            if faults.delay_per_message_ms > 0 {
                                tokio::time::sleep(Duration::from_millis(
                                    faults.delay_per_message_ms,
                                ))
                                .await;
                            }
                            messages.push(m);
                        }
                        if let Some(status) = sink.fail(&path, &faults) {
                            return Err(status);
                        }
                        sink.record(&path, payload, &auth, &messages, &arrived);
                        let answer = match messages.first() {
                            Some(first) if faults.echo && echoes => first.clone(),
                            _ => Bytes::new(),
                        };
                        Ok(Response::new(answer))
                    }
                });
                grpc.client_streaming(svc, req).await
            };
            Ok(response)
        })
    }
}

fn auth_of<T>(r: &Request<T>) -> String {
    r.metadata()
        .get("authentication")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
