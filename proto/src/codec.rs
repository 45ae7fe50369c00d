//! The pass-through codec: gRPC messages in and out as the bytes on the wire. satmesh's
//! front door and upstream use it, and so do the sink and the load generator of
//! `satmesh-tools`. Behind the `codec` feature (it needs tonic).
//!
//! Decoding hands out a slice of tonic's receive buffer (`BytesMut::split_to`, no copy);
//! encoding copies the bytes once into the send buffer. Fields satmesh does not know reach
//! the OAP untouched because nothing is ever decoded.

use bytes::{BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// One message in gRPC's length-prefixed framing, uncompressed: flag 0, its length
/// (4 bytes, big-endian), its bytes.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    frame.freeze()
}

#[derive(Clone, Copy, Debug, Default)]
pub struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    /// A send buffer with room for a whole chunk (`yield_threshold`) plus one more
    /// message of up to 32 KiB: a batch is copied into it once, never moved by a
    /// reallocation as it grows (tonic's 8 KiB default grew and copied twice per 32 KiB
    /// chunk; seen in the forwarding profile).
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(64 * 1024, 32 * 1024)
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        use bytes::Buf;
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http::uri::PathAndQuery;
    use http_body_util::{BodyExt, Full};
    use tonic::{Request, Response, Streaming};

    use super::*;

    const PATH: &str = "/skywalking.v3.Test/call";

    /// Payloads a pass-through must not touch: empty, every byte value, a protobuf message
    /// (with fields satmesh does not know), and one larger than tonic's buffer chunks.
    fn payloads() -> Vec<Bytes> {
        vec![
            Bytes::new(),
            (0..=255u8).collect(),
            Bytes::from_static(&[
                0x0a, 0x01, b't', 0x22, 0x03, b'a', b'p', b'p', 0x49, 1, 2, 3, 4, 5, 6, 7, 8,
            ]),
            (0..300_000u32).map(|i| (i % 251) as u8).collect(),
        ]
    }

    #[test]
    fn grpc_frame_is_length_prefixed() {
        assert_eq!(&grpc_frame(b"ab")[..], b"\0\0\0\0\x02ab");
    }

    /// A tonic client whose transport is a tonic server in the same task: every message
    /// goes through the pass-through encoder and decoder on both sides, without a socket.
    /// The server echoes the first message it got and records all of them.
    fn in_memory(
        seen: Arc<Mutex<Vec<Bytes>>>,
    ) -> tonic::client::Grpc<
        impl tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = tonic::body::Body,
            Error = Infallible,
        > + Clone,
    > {
        let transport = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let seen = seen.clone();
            async move {
                let echo = tower::service_fn(move |r: Request<Streaming<Bytes>>| {
                    let seen = seen.clone();
                    async move {
                        let mut stream = r.into_inner();
                        let mut first = None;
                        while let Some(m) = stream.message().await? {
                            first.get_or_insert_with(|| m.clone());
                            seen.lock().unwrap().push(m);
                        }
                        Ok::<_, Status>(Response::new(first.unwrap_or_default()))
                    }
                });
                let mut server = tonic::server::Grpc::new(PassThrough)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX);
                Ok::<_, Infallible>(server.client_streaming(echo, req).await)
            }
        });
        tonic::client::Grpc::new(transport)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    #[tokio::test]
    async fn unary_round_trip_keeps_the_exact_bytes() {
        for payload in payloads() {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let mut client = in_memory(seen.clone());
            client.ready().await.unwrap();
            let answer = client
                .unary(
                    Request::new(payload.clone()),
                    PathAndQuery::from_static(PATH),
                    PassThrough,
                )
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                *seen.lock().unwrap(),
                std::slice::from_ref(&payload),
                "server side"
            );
            assert_eq!(answer, payload, "client side");
        }
    }

    #[tokio::test]
    async fn client_stream_keeps_every_message_and_its_boundaries() {
        let sent = payloads();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut client = in_memory(seen.clone());
        client.ready().await.unwrap();
        let answer = client
            .client_streaming(
                Request::new(futures_util::stream::iter(sent.clone())),
                PathAndQuery::from_static(PATH),
                PassThrough,
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(*seen.lock().unwrap(), sent);
        assert_eq!(answer, sent[0]);
    }

    #[tokio::test]
    async fn the_wire_frame_holds_exactly_the_payload() {
        // A hand-made frame, delivered in odd-sized chunks, answered by the encoder: the
        // response body must be the same frame byte for byte.
        for payload in payloads() {
            let wire = grpc_frame(&payload);
            let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = wire
                .chunks(7919)
                .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            let request = http::Request::builder()
                .uri(PATH)
                .header("content-type", "application/grpc")
                .body(body)
                .unwrap();
            let echo = tower::service_fn(|r: Request<Bytes>| async move {
                Ok::<_, Status>(Response::new(r.into_inner()))
            });
            let response = tonic::server::Grpc::new(PassThrough)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX)
                .unary(echo, request)
                .await;
            let collected = response.into_body().collect().await.unwrap();
            let status = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .cloned();
            assert_eq!(status.as_ref().map(|v| v.as_bytes()), Some(&b"0"[..]));
            assert_eq!(collected.to_bytes(), wire);
        }
    }

    #[tokio::test]
    async fn a_single_chunk_frame_decodes_to_the_payload() {
        let payload = Bytes::from_static(b"\x0a\x02hi");
        let request = http::Request::builder()
            .uri(PATH)
            .body(Full::new(grpc_frame(&payload)))
            .unwrap();
        let got = Arc::new(Mutex::new(None));
        let record = {
            let got = got.clone();
            tower::service_fn(move |r: Request<Bytes>| {
                let got = got.clone();
                async move {
                    *got.lock().unwrap() = Some(r.into_inner());
                    Ok::<_, Status>(Response::new(Bytes::new()))
                }
            })
        };
        let response = tonic::server::Grpc::new(PassThrough)
            .unary(record, request)
            .await;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.lock().unwrap().take(), Some(payload));
        // An empty answer is a frame with a zero length and nothing after it.
        assert_eq!(body, grpc_frame(b""));
    }
}
