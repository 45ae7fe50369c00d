//! The gRPC client: opaque payloads on one HTTP/2 connection, as an agent sends them.

use std::net::SocketAddr;

use bytes::Bytes;
use http::uri::PathAndQuery;
use satmesh::codec::PassThrough;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A gRPC client with opaque payloads, like an agent with one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
}

/// The async trace path: client-streams of segments.
const SEGMENTS: &str = "/skywalking.v3.TraceSegmentReportService/collect";

/// Sends `calls` client-streams of `per_call` segments (200 bytes of padding) from
/// service `svc`, instance `{instance}-{call}`; every call must be answered OK. Returns
/// every segment sent.
pub async fn send_segments(
    client: &Client,
    instance: &str,
    calls: usize,
    per_call: usize,
) -> Vec<Bytes> {
    let mut all = Vec::new();
    for c in 0..calls {
        let batch: Vec<Bytes> = (0..per_call)
            .map(|i| super::messages::segment("svc", &format!("{instance}-{c}"), i, 200))
            .collect();
        client
            .stream(SEGMENTS, batch.clone(), md(&[]))
            .await
            .expect("agent call answered OK");
        all.extend(batch);
    }
    all
}

/// gRPC metadata (request headers) from `(key, value)` pairs.
pub fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
    let mut md = MetadataMap::new();
    for (k, v) in pairs {
        md.insert(*k, v.parse().expect("metadata value"));
    }
    md
}

fn request<T>(message: T, metadata: MetadataMap) -> Request<T> {
    let mut r = Request::new(message);
    *r.metadata_mut() = metadata;
    r
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to satmesh");
        Client {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// The same connection, sending its messages gzip-compressed (`grpc-encoding: gzip`).
    pub fn gzip(&self) -> Client {
        Client {
            grpc: self
                .grpc
                .clone()
                .send_compressed(tonic::codec::CompressionEncoding::Gzip),
        }
    }

    pub async fn unary(
        &self,
        path: &str,
        payload: Bytes,
        metadata: MetadataMap,
    ) -> Result<Bytes, Status> {
        let mut g = self.grpc.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        g.unary(request(payload, metadata), path, PassThrough)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn stream(
        &self,
        path: &str,
        payloads: Vec<Bytes>,
        metadata: MetadataMap,
    ) -> Result<Bytes, Status> {
        let mut g = self.grpc.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        let s = futures_util::stream::iter(payloads);
        g.client_streaming(request(s, metadata), path, PassThrough)
            .await
            .map(|r| r.into_inner())
    }

    /// A client-stream fed from a channel, for streams that stay open.
    pub async fn open_stream(
        &self,
        path: &str,
    ) -> (
        tokio::sync::mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<Result<Bytes, Status>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut g = self.grpc.clone();
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        let task = tokio::spawn(async move {
            g.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let s = tokio_stream_from(rx);
            g.client_streaming(Request::new(s), path, PassThrough)
                .await
                .map(|r| r.into_inner())
        });
        (tx, task)
    }

    pub async fn bidi(&self, path: &str, payloads: Vec<Bytes>) -> Result<Vec<Bytes>, Status> {
        use futures_util::StreamExt;
        let mut g = self.grpc.clone();
        g.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::try_from(path.to_owned()).expect("path");
        let s = futures_util::stream::iter(payloads);
        let answers = g
            .streaming(Request::new(s), path, PassThrough)
            .await?
            .into_inner();
        answers.collect::<Vec<_>>().await.into_iter().collect()
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
