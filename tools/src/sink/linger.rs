//! A connection that closes without a reset. When the sink ends a connection (after its
//! GOAWAY) satmesh may still have bytes on their way to it; closing a socket with unread
//! bytes makes the kernel send RST instead of FIN, and an RST makes the peer's kernel
//! throw away what it received but had not read yet: the last answers. satmesh would then
//! see a batch the sink counted fail with "connection error" and send it again (a
//! duplicate the sink made, not satmesh). So, as nginx's `lingering_close` does, a dropped
//! connection shuts its write side, then reads and discards until the peer closes or a
//! second has passed, on a task of the sink's own tracker.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

/// How long a closing connection reads what still arrives.
const LINGER: Duration = Duration::from_secs(1);

pub struct Lingering {
    stream: Option<TcpStream>,
    tasks: TaskTracker,
}

impl Lingering {
    pub fn new(stream: TcpStream, tasks: TaskTracker) -> Lingering {
        Lingering {
            stream: Some(stream),
            tasks,
        }
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(
            self.get_mut()
                .stream
                .as_mut()
                .expect("present until dropped"),
        )
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        self.tasks.spawn(async move {
            let _ = stream.shutdown().await;
            let mut scratch = [0u8; 16 * 1024];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
