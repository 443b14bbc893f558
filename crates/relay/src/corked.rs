//! A TCP stream whose writes wait for a flush: what TLS writes for several frames leaves
//! in one system call.
//!
//! The relay's TLS layer (tokio-rustls) hands each record to the socket as soon as it is
//! sealed, so every answer frame cost a `writev` of its own, and on loopback the kernel
//! runs the receiving side's TCP in that call too: three system calls per envelope for a
//! send's answer, its delivery and its ack's answer. Under the TLS layer, [`Corked`]
//! keeps the records in memory until the stream is flushed (the WebSocket layer flushes
//! after each batch of answers, the TLS handshake after each flight), then writes them
//! together. Each frame is still one TLS record of its own (docs/threat-model.md); only
//! the number of `writev` calls changes.
//!
//! The buffer is freed once it is written out, so an idle connection holds none of it;
//! past [`LIMIT`] bytes a write first drains it to the socket.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write drains the buffer to the socket, whether flushed or not: about
/// eleven frames per system call, and a bound on what a connection holds here (a client that
/// does not read its answers stops the connection at the socket, as before).
const LIMIT: usize = 64 * 1024;

/// What an empty buffer takes at its first write: room for a few frames' records, so that
/// a batch of answers is not copied again as the buffer grows record by record.
const FIRST: usize = 16 * 1024;

/// A stream whose writes are held until [`AsyncWrite::poll_flush`] (see the module
/// documentation).
#[derive(Debug)]
pub(crate) struct Corked<S> {
    inner: S,
    /// Bytes written and not yet handed to `inner`, from `sent` on.
    held: Vec<u8>,
    /// How much of `held` is already handed to `inner`.
    sent: usize,
}

impl<S> Corked<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
        }
    }
}

impl<S> Corked<S> {
    /// Room for `len` more bytes, and for [`FIRST`] at least in an empty buffer.
    fn make_room(&mut self, len: usize) {
        let want = if self.held.capacity() == 0 { len.max(FIRST) } else { len };
        self.held.reserve(want);
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Hands everything held to `inner`, then frees the buffer.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.len() - self.sent + buf.len() > LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        self.make_room(buf.len());
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.held.len() - self.sent + len > LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        self.make_room(len);
        for b in bufs {
            self.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_then_leave_whole_and_in_order() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut corked = Corked::new(a);
        corked.write_all(b"one ").await.unwrap();
        let n = corked
            .write_vectored(&[io::IoSlice::new(b"two "), io::IoSlice::new(b"three")])
            .await
            .unwrap();
        assert_eq!(n, 9, "every slice is taken at once");
        let mut got = [0u8; 1];
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut got)).await;
        assert!(early.is_err(), "nothing leaves before the flush");
        corked.flush().await.unwrap();
        assert!(corked.held.capacity() == 0, "the buffer is freed once written");
        let mut all = vec![0u8; 13];
        b.read_exact(&mut all).await.unwrap();
        assert_eq!(&all, b"one two three");
    }

    #[tokio::test]
    async fn past_the_limit_a_write_drains_what_is_held_first() {
        let (a, mut b) = tokio::io::duplex(4 * LIMIT);
        let mut corked = Corked::new(a);
        let chunk = vec![7u8; LIMIT / 2 + 1];
        corked.write_all(&chunk).await.unwrap();
        corked.write_all(&chunk).await.unwrap();
        // The first chunk left without a flush; the second is held.
        let mut first = vec![0u8; chunk.len()];
        b.read_exact(&mut first).await.unwrap();
        assert_eq!(corked.held.len() - corked.sent, chunk.len());
        corked.shutdown().await.unwrap();
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), chunk.len());
    }
}
