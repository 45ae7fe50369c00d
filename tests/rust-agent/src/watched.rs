//! The agent's channel connects through [`connector`]: each TCP connection is wrapped in
//! [`Watched`], which hands every byte read and written, unchanged, to a [`ConnWatch`].
//!
//! Bytes count once the socket took them (a write's accepted length, a read's filled
//! part). A read of 0 bytes (EOF) or an error in either direction cuts the connection.

use crate::watch::{ConnWatch, Tally};
use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioIo};
use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::transport::Uri;
use tower::ServiceExt;

/// tonic's own connector (as `Endpoint::connect_lazy` sets it up: every address of the
/// name tried in turn, TCP_NODELAY on), each connection it makes watched into `tally`.
pub fn connector(
    tally: Arc<Tally>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<Watched<TcpStream>>,
    Error: std::error::Error + Send + Sync + 'static,
    Future: Send,
> + Send
+ Clone
+ 'static {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.map_response(move |io: TokioIo<TcpStream>| {
        TokioIo::new(Watched::new(io.into_inner(), Arc::clone(&tally)))
    })
}

/// An IO object whose bytes a [`ConnWatch`] sees go by.
pub struct Watched<T> {
    inner: T,
    watch: ConnWatch,
}

impl<T> Watched<T> {
    pub fn new(inner: T, tally: Arc<Tally>) -> Self {
        Self {
            inner,
            watch: ConnWatch::new(tally),
        }
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        self.watch.on_cut();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if got.is_empty() && room > 0 {
                    this.watch.on_cut();
                } else {
                    this.watch.on_received(got);
                }
            }
            Poll::Ready(Err(_)) => this.watch.on_cut(),
            Poll::Pending => {}
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        match &polled {
            Poll::Ready(Ok(n)) => this.watch.on_sent(&buf[..*n]),
            Poll::Ready(Err(_)) => this.watch.on_cut(),
            Poll::Pending => {}
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match &polled {
            Poll::Ready(Ok(n)) => {
                let mut left = *n;
                for b in bufs {
                    let take = left.min(b.len());
                    this.watch.on_sent(&b[..take]);
                    left -= take;
                    if left == 0 {
                        break;
                    }
                }
            }
            Poll::Ready(Err(_)) => this.watch.on_cut(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Through a small in-memory pipe (writes and reads come in pieces): the bytes arrive
    /// unchanged both ways, a stream told OK counts, and the server hanging up (EOF) ends
    /// the stream still open as not OK.
    #[tokio::test]
    async fn bytes_pass_unchanged_and_eof_cuts_the_open_streams() {
        let (agent_end, mut server_end) = tokio::io::duplex(37);
        let tally = Arc::new(Tally::default());
        let mut io = Watched::new(agent_end, Arc::clone(&tally));
        let (mut c, mut s) = (Side::client(), Side::server());
        c.request(1, TRACE);
        c.data(1, END_STREAM, &messages(3, 50));
        c.request(3, LOG);
        c.data(3, 0, &messages(2, 50));
        s.response(1);
        s.trailers(1, "0");
        s.response(3);

        let (want, answer) = (c.bytes.clone(), s.bytes.clone());
        let server = tokio::spawn(async move {
            let mut got = vec![0; want.len()];
            server_end.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
            server_end.write_all(&answer).await.unwrap();
            // Dropped here: the agent's side reads EOF.
        });
        let exchange = async {
            io.write_all(&c.bytes).await.unwrap();
            io.flush().await.unwrap();
            let mut got = Vec::new();
            io.read_to_end(&mut got).await.unwrap();
            got
        };
        let got = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange ended within 10 s");
        server.await.unwrap();
        assert_eq!(got, s.bytes);
        assert_eq!(tally.told_ok.get(), (3, 0, 0));
        assert_eq!(tally.not_ok.get(), (0, 2, 0));
    }
}
