//! How a synthetic agent dials a multi-address target first-address-first, as gRPC's
//! pick-first does for `ipv4:a:p,b:p,c:p` or a DNS name with several records: the first
//! address whose server starts HTTP/2 wins. A peer that turns connections away closes
//! them before the HTTP/2 handshake, so the dialer waits for the server's first bytes (its
//! SETTINGS frame) before settling, then replays them to the HTTP/2 client. A single
//! address is used as it connects.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long one address gets to accept the TCP connection.
const CONNECT: Duration = Duration::from_secs(2);

/// A stream that first yields bytes already read from it.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    /// The address this connection reached.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connects to the first of `addrs` that accepts and starts HTTP/2 within `settle`.
pub async fn first_accepting(
    addrs: &[SocketAddr],
    settle: Duration,
) -> io::Result<TokioIo<Rewind>> {
    let mut last = io::Error::new(io::ErrorKind::NotConnected, "no address to dial");
    for addr in addrs {
        // Bounded: a SYN the server's kernel dropped is retried for up to two minutes.
        let mut stream = match tokio::time::timeout(CONNECT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                last = e;
                continue;
            }
            Err(_) => {
                last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr} did not accept"));
                continue;
            }
        };
        stream.set_nodelay(true)?;
        if addrs.len() == 1 {
            // Nowhere else to go, so nothing to wait for: and a server that speaks only
            // after the client's preface (nginx) would never settle.
            return Ok(TokioIo::new(Rewind {
                prefix: Bytes::new(),
                inner: stream,
            }));
        }
        let mut first = vec![0u8; 64];
        match tokio::time::timeout(settle, stream.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {
                first.truncate(n);
                return Ok(TokioIo::new(Rewind {
                    prefix: first.into(),
                    inner: stream,
                }));
            }
            Ok(Ok(_)) => {
                last = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("{addr} turned the connection away"),
                )
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr} sent no HTTP/2 preface"),
                )
            }
        }
    }
    Err(last)
}
