//! What the front door knows about one call: when DATA last arrived on its request
//! stream and whether everything received so far forms whole gRPC messages.
//!
//! tonic's `Streaming` keeps a partly received message in its own buffer and does not
//! say so; [`Tracked`] wraps the request body beneath it and follows the gRPC framing
//! (5-byte header: flag, big-endian length) of every DATA frame it hands up. When
//! `Streaming::message()` is pending and [`StreamProgress::at_boundary`] holds, tonic's
//! buffer is empty: a message is yielded as soon as it is complete, before the body is
//! polled again. That is when a draining stream may be ended without losing a byte that
//! reached satmesh.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::lifecycle::{ConnInfo, StreamGuard};

/// Where one request stream stands; shared between its body and its handler.
#[derive(Debug)]
pub struct StreamProgress {
    opened: Instant,
    /// Microseconds after `opened` of the last DATA frame.
    last_data_us: AtomicU64,
    at_boundary: AtomicBool,
}

impl StreamProgress {
    pub fn new() -> Arc<StreamProgress> {
        Arc::new(StreamProgress {
            opened: Instant::now(),
            last_data_us: AtomicU64::new(0),
            at_boundary: AtomicBool::new(true),
        })
    }

    /// When DATA last arrived (when the stream opened if none did).
    pub fn last_data(&self) -> Instant {
        self.opened + Duration::from_micros(self.last_data_us.load(Ordering::Relaxed))
    }

    /// Every byte received so far belongs to a complete gRPC message.
    pub fn at_boundary(&self) -> bool {
        self.at_boundary.load(Ordering::Relaxed)
    }

    fn record(&self, now: Instant, at_boundary: bool) {
        let us = now.saturating_duration_since(self.opened).as_micros() as u64;
        self.last_data_us.store(us, Ordering::Relaxed);
        self.at_boundary.store(at_boundary, Ordering::Relaxed);
    }
}

/// The gRPC length-prefixed framing, followed byte by byte.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 5],
    /// Header bytes seen of the current message (0 between messages).
    have: usize,
    /// Body bytes still to come of the current message.
    body_left: usize,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                let len = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                self.body_left = u32::from_be_bytes(len) as usize;
                self.have = 0;
            }
        }
    }

    fn at_boundary(&self) -> bool {
        self.have == 0 && self.body_left == 0
    }
}

/// A request body that reports its progress and the connection's activity.
pub struct Tracked<B> {
    inner: B,
    framing: Framing,
    progress: Arc<StreamProgress>,
    conn: Arc<ConnInfo>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, progress: Arc<StreamProgress>, conn: Arc<ConnInfo>) -> Tracked<B> {
        Tracked {
            inner,
            framing: Framing::default(),
            progress,
            conn,
        }
    }
}

impl<B> Body for Tracked<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let me = &mut *self;
            me.framing.feed(data);
            let now = Instant::now();
            me.progress.record(now, me.framing.at_boundary());
            me.conn.touch_at(now);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its stream counted as open until it is done.
pub struct Guarded<B> {
    inner: B,
    _guard: StreamGuard,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, guard: StreamGuard) -> Guarded<B> {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn framing_knows_a_message_boundary_however_the_bytes_are_split() {
        let mut wire = message(10);
        wire.extend(message(0));
        wire.extend(message(300));
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut f = Framing::default();
            let mut fed = 0;
            for piece in wire.chunks(chunk) {
                f.feed(piece);
                fed += piece.len();
                let boundary = [0, 15, 20, wire.len()].contains(&fed);
                assert_eq!(
                    f.at_boundary(),
                    boundary,
                    "chunk {chunk}, after {fed} bytes"
                );
            }
        }
    }

    #[test]
    fn a_header_split_across_frames_is_mid_message() {
        let mut f = Framing::default();
        f.feed(&[0, 0, 0]);
        assert!(!f.at_boundary());
        f.feed(&[0, 2, 1]);
        assert!(!f.at_boundary());
        f.feed(&[2]);
        assert!(f.at_boundary());
    }
}
