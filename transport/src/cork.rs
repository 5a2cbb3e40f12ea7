//! Writes held back until the end of the runtime's turn, so that what
//! several tasks write to one connection in a turn leaves in one system call.
//!
//! An HTTP/2 connection's frames come from several tasks (the connection's
//! own, and each stream's: hyper's server sends a response from the
//! request's task, the client side a request from its caller's), and a
//! response's trailers often come after its DATA, in a later poll: flushed
//! as they come, a unary gRPC call cost two `writev` each way on every hop
//! (and two wake-ups of the reader). [`Corked`] keeps what is
//! written; the first flush that finds data yields the task instead (it
//! wakes itself, so the runtime runs the tasks already queued, which add
//! their frames), and the next flush writes everything at once. Envoy
//! defers its writes to the end of the event-loop iteration for the same
//! reason.
//!
//! Only HTTP/2 connections are corked: hyper writes an HTTP/1.1 message
//! from one task, head and body together, so holding them would only cost
//! the yield. A server-side connection learns which it is from the first
//! bytes the client sends (HTTP/2's connection preface).
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this much held back, writes go through to the connection first.
const HOLD_MAX: usize = 64 * 1024;

/// How HTTP/2's connection preface begins: what a client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cork,
    Through,
    /// Until the first read: corked if it begins with [`H2_PREFACE`].
    Sniff,
}

/// A connection whose writes are held until a flush (see the module).
#[derive(Debug)]
pub struct Corked<T> {
    inner: T,
    mode: Mode,
    held: BytesMut,
    /// The task has yielded once for the data now held.
    yielded: bool,
}

impl<T> Corked<T> {
    fn with(inner: T, mode: Mode) -> Self {
        Self {
            inner,
            mode,
            held: BytesMut::new(),
            yielded: false,
        }
    }

    /// A client's HTTP/2 connection: corked.
    pub fn client(inner: T) -> Self {
        Self::with(inner, Mode::Cork)
    }

    /// Corked if the client's first bytes are HTTP/2's preface.
    pub fn server(inner: T) -> Self {
        Self::with(inner, Mode::Sniff)
    }
}

impl<T: AsyncWrite + Unpin> Corked<T> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(n);
        }
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: drains what is held if they would
    /// not fit. `Ready(false)`: too large to hold, write it through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if self.held.len() + len > HOLD_MAX {
            std::task::ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len <= HOLD_MAX))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Corked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let read = std::task::ready!(crate::poll_read_new(&mut me.inner, cx, buf))?;
        if me.mode == Mode::Sniff && !read.is_empty() {
            let n = read.len().min(H2_PREFACE.len());
            me.mode = if read[..n] == H2_PREFACE[..n] {
                Mode::Cork
            } else {
                Mode::Through
            };
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Corked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.mode != Mode::Cork || !std::task::ready!(me.poll_room(cx, buf.len()))? {
            return Pin::new(&mut me.inner).poll_write(cx, buf);
        }
        me.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.mode != Mode::Cork {
            return Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        }
        let len = bufs.iter().map(|b| b.len()).sum();
        if !std::task::ready!(me.poll_room(cx, len))? {
            return Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            me.held.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        self.mode == Mode::Cork || self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.held.is_empty() && !me.yielded {
            // tokio runs a task that woke itself after the tasks already
            // queued: theirs is the data this flush waits for.
            me.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Counts the writes that reach the wrapped stream.
    struct Counting<T> {
        inner: T,
        writes: usize,
    }

    impl<T> Counting<T> {
        fn new(inner: T) -> Self {
            Self { inner, writes: 0 }
        }
    }

    impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    #[tokio::test]
    async fn writes_before_a_flush_leave_in_one_write_after_a_yield() {
        let (c, mut s) = pair().await;
        let mut w = Corked::client(Counting::new(c));
        w.write_all(b"HEADERS ").await.unwrap();
        w.write_all(b"DATA ").await.unwrap();
        assert_eq!(w.inner.writes, 0, "held until the flush");
        // The first flush yields; the data held meanwhile goes with it.
        let mut first = true;
        let flushed = std::future::poll_fn(|cx| {
            let p = Pin::new(&mut w).poll_flush(cx);
            if first {
                assert!(p.is_pending(), "the first flush yields");
                first = false;
                let more = Pin::new(&mut w).poll_write(cx, b"TRAILERS");
                assert!(matches!(more, Poll::Ready(Ok(8))));
            }
            p
        });
        flushed.await.unwrap();
        assert_eq!(w.inner.writes, 1, "one write for all three");
        w.shutdown().await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "HEADERS DATA TRAILERS");
    }

    #[tokio::test]
    async fn a_flush_with_nothing_held_does_not_yield_and_big_writes_go_through() {
        let (c, mut s) = pair().await;
        let mut w = Corked::client(Counting::new(c));
        let flushed = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut w).poll_flush(cx)));
        assert!(flushed.await.is_ready());
        let big = vec![7u8; HOLD_MAX + 1];
        w.write_all(b"small").await.unwrap();
        w.write_all(&big).await.unwrap();
        assert!(w.inner.writes >= 2, "held data drained, then the big write");
        assert!(w.held.is_empty());
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 5 + big.len());
        assert_eq!(&got[..5], b"small");
    }

    #[tokio::test]
    async fn a_server_corks_only_after_the_http2_preface() {
        for (first, corked) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], true),
            (b"GET / HTTP/1.1\r\n\r\n", false),
        ] {
            let (mut c, s) = pair().await;
            let mut w = Corked::server(Counting::new(s));
            c.write_all(first).await.unwrap();
            let mut buf = vec![0u8; first.len()];
            w.read_exact(&mut buf).await.unwrap();
            w.write_all(b"reply").await.unwrap();
            assert_eq!(w.inner.writes, usize::from(!corked), "{first:?}");
        }
    }
}
