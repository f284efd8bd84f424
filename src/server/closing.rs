//! Closing a connection in stages (RFC 9112 §9.6). When hyper ends a connection after an answer
//! that ends it (431 for a head too large, the over-capacity 503 with `Connection: close`, a
//! drained or idle connection), the client may still be writing its request. A socket closed
//! with unread bytes makes the kernel reset the connection: the client's next write fails, and
//! its kernel may discard the answer before the client reads it. So hyper's stream comes back to
//! the connection task, which shuts it for writing (the answer is followed by a FIN) and reads
//! and discards what the client still sends until it closes, for at most [`LINGER`] and
//! [`LINGER_BYTES`]; only then is the socket closed. The task still holds the connection's place
//! under the caps, so lingering connections are counted like open ones.
//!
//! An upgraded socket keeps its stream: its session closes it (with its own closing handshake).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long a closing connection reads what the client still sends.
pub(super) const LINGER: Duration = Duration::from_secs(2);
/// How much of it at most: the rest of an oversized head or of a refused request's body.
pub(super) const LINGER_BYTES: usize = 256 * 1024;

/// The TCP stream as hyper holds it. When hyper drops it, it goes back to the connection task
/// (through [`Stream::new`]'s receiver) to be closed in stages; if nobody takes it (the socket
/// was upgraded and its session has ended), it is closed as it is.
pub(super) struct Stream {
    /// Always `Some` until dropped.
    tcp: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Stream {
    pub(super) fn new(tcp: TcpStream) -> (Stream, oneshot::Receiver<TcpStream>) {
        let (back, returned) = oneshot::channel();
        (Stream { tcp: Some(tcp), back: Some(back) }, returned)
    }

    fn tcp(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(self.get_mut().tcp.as_mut().expect("the stream is taken only on drop"))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let (Some(tcp), Some(back)) = (self.tcp.take(), self.back.take()) {
            let _ = back.send(tcp);
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.tcp().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tcp().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|tcp| tcp.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_shutdown(cx)
    }
}

/// Shuts `tcp` for writing, then reads and discards until the client closes, [`LINGER`] has
/// passed or [`LINGER_BYTES`] were read; then closes it.
pub(super) async fn close_in_stages(mut tcp: TcpStream) {
    // An error here (hyper shut it already, or the client reset it) still leaves reading to do
    // or to fail at once.
    let _ = tcp.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut left = LINGER_BYTES;
    while left > 0 {
        match tokio::time::timeout_at(deadline, tcp.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        match discard(&tcp) {
            Ok(0) => return, // the client closed: nothing is left unread
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Reads and drops what is waiting. The buffer lives on this call's stack, not in the lingering
/// task's future: thousands of connections may linger at once.
fn discard(tcp: &TcpStream) -> io::Result<usize> {
    let mut buf = [0u8; 16 * 1024];
    tcp.try_read(&mut buf)
}
