//! When an upstream HTTP/2 handshake has completed, read off the wire.
//!
//! hyper's client `handshake()` returns once our connection preface is written, before the
//! server has sent anything, and its `SendRequest::ready()` is ready at once for HTTP/2.
//! A server that accepts TCP and closes at once (an OAP going down, a sink with `--refuse`)
//! therefore looked connected for a millisecond, long enough for `/readyz` to say 200
//! (CI saw it). A connection counts as up only once the handshake of RFC 9113 section 3.4
//! has completed: the server's SETTINGS arrived (its preface, the first frame it sends)
//! and it acknowledged ours. Neither hyper nor h2 tells that to a caller, so [`watch`]
//! wraps the socket and reads the 9-byte header of each frame the server sends until both
//! have passed; from then on reads go straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// Wraps `io`; the receiver resolves when the handshake has completed and fails when the
/// connection is dropped before that.
pub fn watch<IO>(io: IO) -> (Watched<IO>, oneshot::Receiver<()>) {
    let (done, completed) = oneshot::channel();
    let frames = Frames {
        header: [0; FRAME_HEADER],
        have: 0,
        skip: 0,
        server_settings: false,
        done,
    };
    (
        Watched {
            io,
            frames: Some(frames),
        },
        completed,
    )
}

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// A socket whose incoming frames are watched until the handshake has completed.
pub struct Watched<IO> {
    io: IO,
    /// None once the handshake has completed.
    frames: Option<Frames>,
}

/// Frame boundaries of the server's byte stream, as far as the handshake goes.
struct Frames {
    /// The header being read, `have` bytes of it so far.
    header: [u8; FRAME_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// The server's own SETTINGS has arrived (it must be its first frame).
    server_settings: bool,
    done: oneshot::Sender<()>,
}

impl Frames {
    /// Reads `bytes` as the next part of the server's stream; true once the server's
    /// SETTINGS and its acknowledgement of ours have both passed.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < FRAME_HEADER {
                break;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.header;
            self.skip = u32::from_be_bytes([0, l0, l1, l2]) as usize;
            if kind != SETTINGS {
                // A server whose first frame is not SETTINGS breaks the protocol; h2 ends
                // the connection and the handshake never completes.
                continue;
            }
            if flags & ACK == 0 {
                self.server_settings = true;
            } else if self.server_settings {
                // Our SETTINGS acknowledged: what follows is the payload-free ACK frame,
                // and nothing after it matters here.
                return true;
            }
        }
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(frames) = &mut this.frames
            && frames.feed(&buf.filled()[before..])
            && let Some(frames) = this.frames.take()
        {
            // The receiver may be gone (the attempt timed out): nothing to tell then.
            let _ = frames.done.send(());
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    fn frames() -> Frames {
        Frames {
            header: [0; FRAME_HEADER],
            have: 0,
            skip: 0,
            server_settings: false,
            done: oneshot::channel().0,
        }
    }

    /// A server's opening as h2 sends it: SETTINGS with two entries, a connection
    /// WINDOW_UPDATE, then the ACK of ours.
    fn opening() -> Vec<u8> {
        let mut bytes = frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100, 0, 4, 0, 1, 0, 0]);
        bytes.extend(frame(0x8, 0, &[0, 0x0f, 0, 0]));
        bytes.extend(frame(SETTINGS, ACK, &[]));
        bytes
    }

    #[test]
    fn completes_on_the_ack_after_the_server_settings_however_the_bytes_are_cut() {
        let bytes = opening();
        for chunk in 1..=bytes.len() {
            let mut f = frames();
            let parts: Vec<&[u8]> = bytes.chunks(chunk).collect();
            let (last, rest) = parts.split_last().unwrap();
            for part in rest {
                assert!(
                    !f.feed(part),
                    "complete before the last chunk (size {chunk})"
                );
            }
            assert!(f.feed(last), "not complete at the end (size {chunk})");
        }
    }

    #[test]
    fn the_server_settings_alone_do_not_complete_it() {
        let mut f = frames();
        assert!(!f.feed(&frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100])));
        assert!(!f.feed(&frame(0x8, 0, &[0, 0x0f, 0, 0])));
        assert!(!f.feed(&frame(0x6, 0, &[0; 8])), "a PING is no ACK");
    }

    #[test]
    fn an_ack_before_the_server_settings_does_not_complete_it() {
        let mut f = frames();
        assert!(!f.feed(&frame(SETTINGS, ACK, &[])));
    }

    #[test]
    fn a_settings_ack_inside_a_payload_is_not_read_as_a_frame() {
        // A DATA-like frame whose payload looks like a SETTINGS ACK header.
        let mut f = frames();
        assert!(!f.feed(&frame(SETTINGS, 0, &[])));
        assert!(!f.feed(&frame(0x0, 0, &frame(SETTINGS, ACK, &[]))));
        assert!(f.feed(&frame(SETTINGS, ACK, &[])));
    }

    #[tokio::test]
    async fn the_receiver_resolves_through_reads_and_fails_when_dropped_early() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (client, mut server) = tokio::io::duplex(1024);
        let (mut watched, completed) = watch(client);
        server.write_all(&opening()).await.unwrap();
        let mut buf = vec![0; opening().len()];
        watched.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, opening(), "bytes pass through unchanged");
        completed.await.expect("completed");
        assert!(watched.frames.is_none(), "no more watching");

        let (client, _server) = tokio::io::duplex(1024);
        let (watched, completed) = watch(client);
        drop(watched);
        assert!(completed.await.is_err());
    }
}
