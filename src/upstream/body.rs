//! Request bodies of upstream calls. Unary and two-way calls send what tonic encoded; a
//! batch (one client-stream of queued messages) is sent as a [`Batch`]: its gRPC framing
//! laid out once, large messages referenced where they already are instead of copied.
//!
//! tonic's encoder copies every message into its send buffer. For messages of a few KiB
//! that copy was an eighth of satmesh's CPU (docs/BENCHMARKS.md). h2 writes a DATA frame
//! larger than 256 bytes with one `writev` of its head and its payload's slices, so a
//! frame whose payload is a list of `Bytes` (5-byte headers, small messages copied
//! together, large messages as received) goes out without that copy and with as many
//! writes as before: one per frame, not one per message.
//!
//! The batch rides in the request's extensions through tonic (which still builds the
//! headers, the deadline and reads the answer) and replaces tonic's empty body in
//! [`UpBody::from_tonic`], on its way into hyper.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// Messages of at least this many bytes are referenced, smaller ones copied together
/// with the headers around them. At 2 KiB a 16 KiB DATA frame holds at most 8 large
/// messages: 16 slices, what `bytes::buf::Take` (h2 cuts frames with it) hands `writev`.
const REFERENCE_FROM: usize = 2048;

/// A batch's messages in gRPC framing, as a list of byte chunks.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Never an empty chunk: every message adds its header to a copied chunk.
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Batch {
    /// Lays out `messages` behind their 5-byte headers (uncompressed).
    pub fn new<'a, I>(messages: I) -> Batch
    where
        I: IntoIterator<Item = &'a Bytes>,
        I::IntoIter: Clone,
    {
        let messages = messages.into_iter();
        let copied: usize = messages
            .clone()
            .map(|m| 5 + if m.len() < REFERENCE_FROM { m.len() } else { 0 })
            .sum();
        let mut small = BytesMut::with_capacity(copied);
        let mut chunks = VecDeque::new();
        let mut remaining = 0;
        for m in messages {
            remaining += 5 + m.len();
            small.put_u8(0);
            small.put_u32(m.len() as u32);
            if m.len() < REFERENCE_FROM {
                small.extend_from_slice(m);
            } else {
                chunks.push_back(small.split().freeze());
                chunks.push_back(m.clone());
            }
        }
        if !small.is_empty() {
            chunks.push_back(small.freeze());
        }
        Batch { chunks, remaining }
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| c.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a batch");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("remaining counts the chunks");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }
}

/// What an upstream request's DATA frames carry.
#[derive(Debug)]
pub enum UpBuf {
    Bytes(Bytes),
    Batch(Batch),
}

impl Buf for UpBuf {
    fn remaining(&self) -> usize {
        match self {
            UpBuf::Bytes(b) => b.remaining(),
            UpBuf::Batch(b) => b.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            UpBuf::Bytes(b) => b.chunk(),
            UpBuf::Batch(b) => b.chunk(),
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        match self {
            UpBuf::Bytes(b) => b.chunks_vectored(dst),
            UpBuf::Batch(b) => b.chunks_vectored(dst),
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            UpBuf::Bytes(b) => b.advance(cnt),
            UpBuf::Batch(b) => b.advance(cnt),
        }
    }
}

/// The body of every upstream request.
pub enum UpBody {
    /// What tonic encoded (unary and two-way calls).
    Tonic(tonic::body::Body),
    /// A batch, sent whole as one frame of the body (h2 cuts it to the peer's frame size
    /// and window); None once sent.
    Batch(Option<Batch>),
}

impl UpBody {
    /// The body for a request tonic built: the batch in its extensions if it has one
    /// (tonic's own body is then empty: the call was made with no messages).
    pub fn from_tonic(mut req: http::Request<tonic::body::Body>) -> http::Request<UpBody> {
        match req.extensions_mut().remove::<Batch>() {
            Some(batch) => req.map(|_| UpBody::Batch(Some(batch))),
            None => req.map(UpBody::Tonic),
        }
    }
}

impl Body for UpBody {
    type Data = UpBuf;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<UpBuf>, tonic::Status>>> {
        match self.get_mut() {
            UpBody::Tonic(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map(|f| f.map_data(UpBuf::Bytes)))),
            UpBody::Batch(batch) => {
                Poll::Ready(batch.take().map(|b| Ok(Frame::data(UpBuf::Batch(b)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Tonic(body) => body.is_end_stream(),
            UpBody::Batch(batch) => batch.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Tonic(body) => body.size_hint(),
            UpBody::Batch(batch) => {
                SizeHint::with_exact(batch.as_ref().map_or(0, |b| b.remaining) as u64)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    /// What tonic's encoder would have sent for `messages`.
    fn framed(messages: &[Bytes]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| crate::codec::grpc_frame(m))
            .collect()
    }

    fn drain(mut batch: Batch, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while batch.has_remaining() {
            let chunk = batch.chunk();
            let n = chunk.len().min(step);
            out.extend_from_slice(&chunk[..n]);
            batch.advance(n);
        }
        out
    }

    fn mixed() -> Vec<Bytes> {
        vec![
            message(300, 1),
            message(0, 0),
            message(4096, 2),
            message(4096, 3),
            message(2047, 4),
            message(2048, 5),
            message(10, 6),
        ]
    }

    #[test]
    fn a_batch_is_the_grpc_framing_of_its_messages_byte_for_byte() {
        let messages = mixed();
        let want = framed(&messages);
        for step in [1, 3, 5, 7, 300, 4096, usize::MAX] {
            let batch = Batch::new(&messages);
            assert_eq!(batch.remaining(), want.len());
            assert_eq!(drain(batch, step), want, "read {step} bytes at a time");
        }
        assert!(!Batch::new(&[] as &[Bytes]).has_remaining());
    }

    #[test]
    fn large_messages_are_referenced_not_copied() {
        let messages = mixed();
        let batch = Batch::new(&messages);
        let large: Vec<&Bytes> = messages.iter().filter(|m| m.len() >= 2048).collect();
        let referenced = batch
            .chunks
            .iter()
            .filter(|c| large.iter().any(|m| m.as_ptr() == c.as_ptr()))
            .count();
        assert_eq!(referenced, large.len());
        // Small ones travel with the headers: one chunk before each large message, one after.
        assert_eq!(batch.chunks.len(), 2 * large.len() + 1);
    }

    #[test]
    fn vectored_slices_cover_the_batch_in_order() {
        let messages = mixed();
        let mut batch = Batch::new(&messages);
        batch.advance(100); // part of the first chunk already written
        let mut slices = [IoSlice::new(&[]); 64];
        let n = batch.chunks_vectored(&mut slices);
        let joined: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, framed(&messages)[100..]);
        // A short slice array takes the first chunks only.
        let mut two = [IoSlice::new(&[]); 2];
        assert_eq!(batch.chunks_vectored(&mut two), 2);
        assert_eq!(&*two[0], batch.chunk());
    }
}
