//! A downstream connection before and while hyper serves it: which HTTP
//! version it speaks, read from its first bytes (HTTP/2's connection
//! preface, or not), which are then read again by the server ([`Rewind`],
//! from the transport);
//! and how long it may take and stay ([`Watched`]): a request head must
//! arrive whole within the request-headers timeout of its first byte (a
//! new connection's first head, or its HTTP/2 preface, within that of its
//! accept), and a connection with no request open for the idle timeout is
//! closed, as Envoy's `request_headers_timeout` and `idle_timeout` do.
//!
//! The agent picks hyper's HTTP/1.1 or HTTP/2 server itself rather than
//! hyper-util's `auto` one, whose HTTP/1.1 side cannot be given a limit on
//! the request head (only on its read buffer, which a head larger than the
//! limit can pass when it arrives in one read). hyper's own
//! `header_read_timeout` is not used: it also runs while an HTTP/1.1
//! connection waits for its next request, so it would close idle
//! keep-alive connections long before the idle timeout.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use trellis_dataplane::telemetry::DownstreamConn;
pub use trellis_transport::rewind::Rewind;

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from `io` until its first bytes are HTTP/2's preface (`true`), or
/// cannot be (`false`: HTTP/1.x, or whatever the HTTP/1.1 server will
/// refuse); the bytes read are read again from the returned connection.
pub async fn read_version<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(bool, Rewind<I>)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            break;
        }
    }
    let h2 = filled == H2_PREFACE.len() && buf == *H2_PREFACE;
    Ok((h2, Rewind::new(Bytes::copy_from_slice(&buf[..filled]), io)))
}

/// How long a downstream connection may take and stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (HTTP/1.1); a new
    /// connection's first head, or HTTP/2 preface, from its accept.
    pub request_headers: Option<Duration>,
    /// With no request open (HTTP/2: no stream).
    pub idle: Option<Duration>,
}

/// Why a connection's time ran out, once it has ([`Expiry::wait`]).
#[derive(Debug, Default)]
pub struct Expiry(AtomicU8);

/// What ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// A request head did not arrive whole in time: the connection is
    /// closed.
    RequestHeaders,
    /// No request for the idle timeout: the connection is shut down
    /// gracefully (HTTP/2: GOAWAY).
    Idle,
}

/// A connection closed because its time ran out.
#[derive(Debug, thiserror::Error)]
#[error("closed: {}", match .0 {
    Expired::RequestHeaders => "the request head did not arrive within the request-headers timeout",
    Expired::Idle => "idle for the idle timeout",
})]
pub struct TimedOut(pub Expired);

impl Expiry {
    fn set(&self, e: Expired) {
        let v = match e {
            Expired::RequestHeaders => 1,
            Expired::Idle => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    fn get(&self) -> Option<Expired> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(Expired::RequestHeaders),
            2 => Some(Expired::Idle),
            _ => None,
        }
    }

    /// Resolves once the connection's time ran out. Polled by the task that
    /// serves the connection, which [`Watched`] wakes when it runs out.
    pub fn wait(&self) -> impl Future<Output = Expired> + '_ {
        std::future::poll_fn(|_| match self.get() {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        })
    }
}

/// What a connection is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request head, whose first byte came (or the connection opened)
    /// then.
    Head,
    /// Nothing: no request open since then.
    Idle,
    /// Nothing of the timeouts': requests are open, or the connection
    /// was upgraded.
    Busy,
}

/// A downstream connection whose reads keep its time ([`Timeouts`]): the
/// request-headers deadline is set by the first byte of a head (HTTP/1.1;
/// `open` has no request then), the idle one when the last open request
/// ends, and both are dropped while a request is open. When one passes,
/// [`Expiry`] says which and the serving task is woken to act on it.
///
/// The timer is polled from `poll_read`, which hyper always has pending
/// while it waits for a head (HTTP/1.1) or for frames (HTTP/2). It is
/// reset only to an earlier deadline; one that fires early (the deadline
/// moved on) is set again, so a request costs no more than one reset.
pub struct Watched<I> {
    io: I,
    timeouts: Timeouts,
    open: Arc<DownstreamConn>,
    expiry: Arc<Expiry>,
    h2: bool,
    phase: Phase,
    deadline: Option<Instant>,
    /// Fires at or before `deadline`; `timer_at` is when.
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
}

impl<I> Watched<I> {
    /// `io`, just accepted, speaking HTTP/2 if `h2` (else HTTP/1.1 or not
    /// known yet); its requests counted in `open`, its expiry told in
    /// `expiry`.
    pub fn new(
        io: I,
        h2: bool,
        timeouts: Timeouts,
        open: Arc<DownstreamConn>,
        expiry: Arc<Expiry>,
    ) -> Self {
        let now = Instant::now();
        let far = now + Duration::from_secs(365 * 24 * 3600);
        let mut me = Self {
            io,
            timeouts,
            open,
            expiry,
            h2,
            phase: Phase::Busy,
            deadline: None,
            timer: Box::pin(tokio::time::sleep_until(far)),
            timer_at: far,
        };
        me.enter(if h2 { Phase::Idle } else { Phase::Head }, now);
        me
    }

    /// The connection turned out to speak HTTP/2 (its preface came): it
    /// waits for streams, under the idle timeout.
    pub fn set_http2(&mut self) {
        self.h2 = true;
        self.enter(Phase::Idle, Instant::now());
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        let after = match phase {
            Phase::Head => self.timeouts.request_headers,
            Phase::Idle => self.timeouts.idle,
            Phase::Busy => None,
        };
        self.deadline = after.map(|d| now + d);
        if let Some(at) = self.deadline {
            if at < self.timer_at {
                self.timer.as_mut().reset(at);
                self.timer_at = at;
            }
        }
    }

    /// Follows the connection's requests after a read (`got`: it brought
    /// bytes).
    fn observe(&mut self, got: bool) {
        if self.open.upgraded() {
            self.phase = Phase::Busy;
            self.deadline = None;
            return;
        }
        let open = self.open.count() > 0;
        let next = match (self.phase, open) {
            (_, true) => Phase::Busy,
            // The first bytes of the next head (HTTP/2 sends frames of its
            // own while idle, which are no request).
            (Phase::Idle, false) if got && !self.h2 => Phase::Head,
            (Phase::Busy, false) if got && !self.h2 => Phase::Head,
            (Phase::Busy, false) => Phase::Idle,
            (phase, false) => phase,
        };
        if next != self.phase {
            self.enter(next, Instant::now());
        }
    }

    /// Whether the deadline has passed; polls the timer (so that the task
    /// is woken when it fires).
    fn due(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline else {
            return false;
        };
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
            self.timer_at = deadline;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut me.io).poll_read(cx, buf);
        if me.timeouts.request_headers.is_none() && me.timeouts.idle.is_none() {
            return read;
        }
        let got = matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        me.observe(got);
        if me.due(cx) && me.expiry.get().is_none() {
            me.expiry.set(match me.phase {
                Phase::Head => Expired::RequestHeaders,
                Phase::Idle | Phase::Busy => Expired::Idle,
            });
            // The serving task, which is this one, acts on it.
            cx.waker().wake_by_ref();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
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
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn version_of(sent: &[u8]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        drop(client);
        let (h2, mut io) = read_version(server).await.unwrap();
        let mut again = Vec::new();
        io.read_to_end(&mut again).await.unwrap();
        (h2, again)
    }

    #[tokio::test]
    async fn the_preface_says_http2_and_every_byte_is_read_again() {
        let h2 = [&H2_PREFACE[..], b"\x00\x00\x00\x04"].concat();
        assert_eq!(version_of(&h2).await, (true, h2.clone()));
        let h1 = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(version_of(h1).await, (false, h1.to_vec()));
        // Cut short, or a prefix of the preface only: not HTTP/2.
        assert_eq!(version_of(b"PRI * HT").await, (false, b"PRI * HT".to_vec()));
        assert_eq!(version_of(b"").await, (false, Vec::new()));
    }
}
