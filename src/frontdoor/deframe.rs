//! The async path's own gRPC message framing, in place of tonic's `Streaming` for calls
//! without compression (what agents send): each message is a slice of the DATA frame
//! hyper received (`Bytes::slice`, no copy) when the frame holds it whole; only a message
//! split across frames is gathered into a buffer sized for it. tonic's decoder copies
//! every message into its buffer and grows it by reallocation, which showed up in the
//! forwarding profile (issue 5).
//!
//! Framing (gRPC over HTTP/2): each message is a 1-byte compressed flag, a 4-byte
//! big-endian length, then the bytes. A length above `server.max_message_bytes` is
//! answered as tonic would (OUT_OF_RANGE, which the handler turns into INVALID_ARGUMENT
//! naming the limit); a compressed flag without a `grpc-encoding` is a protocol error.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use http_body::Body;
use tonic::Status;

const HEADER: usize = 5;

/// Splits a byte stream into gRPC messages.
#[derive(Debug)]
pub struct Deframer {
    /// Bytes of a message (or header) that a frame did not finish.
    partial: BytesMut,
    ready: VecDeque<Bytes>,
    max_message_bytes: usize,
}

impl Deframer {
    pub fn new(max_message_bytes: usize) -> Deframer {
        Deframer {
            partial: BytesMut::new(),
            ready: VecDeque::new(),
            max_message_bytes,
        }
    }

    /// Takes the next DATA frame's bytes.
    pub fn feed(&mut self, mut data: Bytes) -> Result<(), Status> {
        if !self.partial.is_empty() {
            // Only what finishes the split message is copied; the rest of the frame is
            // sliced like any other.
            self.finish_partial(&mut data)?;
            if !self.partial.is_empty() {
                return Ok(());
            }
        }
        while let Some(len) = self.next_len(&data)? {
            if data.len() < HEADER + len {
                break;
            }
            self.ready.push_back(data.slice(HEADER..HEADER + len));
            data.advance(HEADER + len);
        }
        if !data.is_empty() {
            let want = self.next_len(&data)?.map_or(HEADER, |len| HEADER + len);
            self.partial.reserve(want);
            self.partial.extend_from_slice(&data);
        }
        Ok(())
    }

    /// Moves from the front of `data` into `partial` what its message (header first) still
    /// lacks, and hands the message out once it is whole.
    fn finish_partial(&mut self, data: &mut Bytes) -> Result<(), Status> {
        if self.partial.len() < HEADER {
            let n = (HEADER - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data.split_to(n));
        }
        let Some(len) = self.next_len(&self.partial)? else {
            return Ok(());
        };
        let n = (HEADER + len - self.partial.len()).min(data.len());
        self.partial.reserve(HEADER + len - self.partial.len());
        self.partial.extend_from_slice(&data.split_to(n));
        if self.partial.len() == HEADER + len {
            let mut message = std::mem::take(&mut self.partial).freeze();
            message.advance(HEADER);
            self.ready.push_back(message);
        }
        Ok(())
    }

    /// The length of the message starting at `data[0]`, once its header is there.
    fn next_len(&self, data: &[u8]) -> Result<Option<usize>, Status> {
        if data.len() < HEADER {
            return Ok(None);
        }
        if data[0] != 0 {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_message_bytes
            )));
        }
        Ok(Some(len))
    }

    pub fn next_message(&mut self) -> Option<Bytes> {
        self.ready.pop_front()
    }

    /// Every byte fed so far belongs to a message already handed out or ready.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

/// The messages of a request body.
pub struct Deframed<B> {
    body: B,
    deframer: Deframer,
    ended: bool,
}

impl<B> Deframed<B> {
    pub fn new(body: B, max_message_bytes: usize) -> Deframed<B> {
        Deframed {
            body,
            deframer: Deframer::new(max_message_bytes),
            ended: false,
        }
    }
}

impl<B> Stream for Deframed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, Status>;

    /// Cancel-safe: what was received stays in the deframer between polls.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let me = &mut *self;
        loop {
            if let Some(message) = me.deframer.next_message() {
                return Poll::Ready(Some(Ok(message)));
            }
            if me.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut me.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data()
                        && let Err(status) = me.deframer.feed(data)
                    {
                        me.ended = true;
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Some(Err(e)) => {
                    me.ended = true;
                    return Poll::Ready(Some(Err(Status::from_error(e.into()))));
                }
                None => {
                    me.ended = true;
                    if !me.deframer.is_empty() {
                        return Poll::Ready(Some(Err(Status::internal(
                            "the request ended inside a message",
                        ))));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::codec::grpc_frame as frame;

    fn messages() -> Vec<Vec<u8>> {
        vec![
            vec![],
            (0..=255u8).collect(),
            vec![7; 10],
            (0..70_000u32).map(|i| (i % 251) as u8).collect(),
            vec![1],
        ]
    }

    #[test]
    fn messages_come_out_whole_however_the_frames_split_them() {
        let wire: Vec<u8> = messages().iter().flat_map(|m| frame(m)).collect();
        for chunk in [1, 2, 4, 5, 6, 7, 300, 4096, 65_536, wire.len()] {
            let mut d = Deframer::new(1 << 20);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                d.feed(Bytes::copy_from_slice(piece)).unwrap();
                while let Some(m) = d.next_message() {
                    out.push(m.to_vec());
                }
            }
            assert_eq!(out, messages(), "chunks of {chunk}");
            assert!(d.is_empty());
        }
    }

    #[test]
    fn a_message_inside_one_frame_is_a_slice_of_it() {
        let wire = Bytes::from([frame(b"abc"), frame(b"defg")].concat());
        let mut d = Deframer::new(100);
        d.feed(wire.clone()).unwrap();
        let first = d.next_message().unwrap();
        assert_eq!(&first[..], b"abc");
        assert_eq!(
            first.as_ptr(),
            wire[HEADER..].as_ptr(),
            "no copy: the message points into the frame"
        );
    }

    #[test]
    fn after_a_split_message_the_rest_of_the_frame_is_sliced_not_copied() {
        let first = frame(b"split across two frames");
        let mut d = Deframer::new(100);
        d.feed(Bytes::copy_from_slice(&first[..3])).unwrap();
        assert!(d.next_message().is_none());
        let second = Bytes::from([&first[3..], &frame(b"whole")[..]].concat());
        d.feed(second.clone()).unwrap();
        assert_eq!(&d.next_message().unwrap()[..], b"split across two frames");
        let whole = d.next_message().unwrap();
        assert_eq!(&whole[..], b"whole");
        let offset = first.len() - 3 + HEADER;
        assert_eq!(whole.as_ptr(), second[offset..].as_ptr(), "no copy");
        assert!(d.is_empty());
    }

    #[test]
    fn an_unfinished_message_is_not_handed_out() {
        let mut d = Deframer::new(100);
        d.feed(Bytes::from(frame(b"hello")[..7].to_vec())).unwrap();
        assert!(d.next_message().is_none());
        assert!(!d.is_empty());
    }

    #[test]
    fn too_long_and_compressed_messages_are_refused() {
        let mut d = Deframer::new(4);
        let err = d.feed(frame(b"hello")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        let mut d = Deframer::new(100);
        let mut compressed = frame(b"x").to_vec();
        compressed[0] = 1;
        let err = d.feed(Bytes::from(compressed)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }
}
