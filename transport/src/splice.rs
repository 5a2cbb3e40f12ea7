//! Opaque TCP: bytes both ways until either side closes, or the connection
//! has been idle too long or has lived too long; [`run`] says how many
//! bytes went each way, for the caller to report. Between two plain TCP
//! sockets, [`run_tcp`] moves the bytes inside the kernel with
//! `splice(2)`, never through user space.
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Istio's default `idleTimeout`, of HTTP and of opaque TCP connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long an opaque TCP connection may last (DestinationRule
/// `connectionPool.tcp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `idleTimeout`: closed after this long without a byte either way.
    /// `None`: never (`0s`).
    pub idle: Option<Duration>,
    /// `maxConnectionDuration`: closed this long after it opened.
    pub max_duration: Option<Duration>,
}

impl Default for Timeouts {
    /// Istio's: an hour idle, no limit on duration.
    fn default() -> Self {
        Self {
            idle: Some(DEFAULT_IDLE_TIMEOUT),
            max_duration: None,
        }
    }
}

/// What a spliced connection carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes sent to the downstream (read from the upstream).
    pub sent: u64,
    /// Bytes received from the downstream (sent to the upstream).
    pub received: u64,
}

/// Copies between `downstream` and `upstream` until both directions end
/// or one of `timeouts` is up.
pub async fn run<D, U>(downstream: D, upstream: U, timeouts: Timeouts) -> Spliced
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    // Milliseconds after `start` of the last byte either way.
    let last = AtomicU64::new(0);
    let mut down = Watched::new(downstream, start, &last);
    let mut up = Watched::new(upstream, start, &last);
    let copy = async {
        tokio::io::copy_bidirectional(&mut down, &mut up)
            .await
            .map(|_| ())
    };
    within(copy, start, &last, timeouts).await;
    // Bytes read from the downstream went up, and the other way round.
    Spliced {
        sent: up.bytes_read(),
        received: down.bytes_read(),
    }
}

/// [`run`] between two TCP sockets, with `splice(2)`: each direction moves
/// socket → pipe → socket inside the kernel, so the bytes are never
/// copied into user space and back. If the pipes cannot be made (out of
/// file descriptors), it copies as [`run`] does.
pub async fn run_tcp(downstream: TcpStream, upstream: TcpStream, timeouts: Timeouts) -> Spliced {
    let (Ok(to_up), Ok(to_down)) = (Pipe::take(), Pipe::take()) else {
        return run(downstream, upstream, timeouts).await;
    };
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let moved = Moved { start, last: &last };
    let (received, sent) = (AtomicU64::new(0), AtomicU64::new(0));
    let both = async {
        tokio::try_join!(
            pump(&downstream, &upstream, &to_up, &received, moved),
            pump(&upstream, &downstream, &to_down, &sent, moved),
        )
        .map(|_| ())
    };
    if within(both, start, &last, timeouts).await {
        // Both directions ended with their pipe drained: reusable.
        to_up.give_back();
        to_down.give_back();
    }
    Spliced {
        sent: sent.into_inner(),
        received: received.into_inner(),
    }
}

/// Runs `copy` until it ends or one of `timeouts` is up, counting idleness
/// from `last` (milliseconds after `start` of the last byte either way).
/// Whether `copy` ran to its end without an error.
async fn within(
    copy: impl Future<Output = io::Result<()>>,
    start: Instant,
    last: &AtomicU64,
    timeouts: Timeouts,
) -> bool {
    tokio::pin!(copy);
    let deadline = timeouts.max_duration.map(|d| start + d);
    // When the connection is idle too long, counting from the last byte.
    let idle_at = || {
        timeouts
            .idle
            .map(|i| start + Duration::from_millis(last.load(Ordering::Relaxed)) + i)
    };
    let ended = loop {
        let wake = match (idle_at(), deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut copy => break r.err().map(|e| e.to_string()),
            () = timer => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    break Some("maxConnectionDuration reached".to_string());
                }
                if idle_at().is_some_and(|at| now >= at) {
                    break Some("idleTimeout reached".to_string());
                }
                // Bytes moved meanwhile: wait again from the last one.
            }
        }
    };
    match ended {
        Some(why) => {
            tracing::debug!(reason = %why, "TCP connection closed");
            false
        }
        None => true,
    }
}

/// When a byte last moved: milliseconds after `start`, in `last`.
#[derive(Clone, Copy)]
struct Moved<'a> {
    start: Instant,
    last: &'a AtomicU64,
}

impl Moved<'_> {
    fn now(self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }
}

/// A pipe between two sockets, and how much it can hold.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    /// Asked for 256 KiB (the default is 64 KiB): fewer system calls per
    /// byte on a fast transfer.
    const SIZE: usize = 256 * 1024;

    /// Empty pipes kept for the next connections, at most this many: a new
    /// pipe costs four system calls and closing it two more, as much CPU as
    /// a small connection's splicing.
    const KEPT: usize = 64;

    /// An empty pipe: a kept one, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(p) = Self::kept().pop() {
            return Ok(p);
        }
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let size = rustix::pipe::fcntl_setpipe_size(&write, Self::SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))?;
        Ok(Pipe { read, write, size })
    }

    /// Keeps this pipe, which must be empty, for another connection.
    fn give_back(self) {
        let mut kept = Self::kept();
        if kept.len() < Self::KEPT {
            kept.push(self);
        }
    }

    fn kept() -> std::sync::MutexGuard<'static, Vec<Pipe>> {
        static KEPT: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());
        KEPT.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Moves what `from` receives to `to` through `pipe`, counting it in
/// `count`, until `from` ends its side; then ends `to`'s sending side.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    count: &AtomicU64,
    moved: Moved<'_>,
) -> io::Result<()> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        // The pipe is empty here: fill it from the socket.
        let mut held = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(rustix::pipe::splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    pipe.size,
                    flags,
                )?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        };
        if held == 0 {
            // The peer will send no more: say so to the other side, which
            // may still answer (a half-close, as copy_bidirectional does).
            return match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        }
        count.fetch_add(held as u64, Ordering::Relaxed);
        moved.now();
        while held > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(rustix::pipe::splice(
                    &pipe.read, None, to, None, held, flags,
                )?)
            }) {
                Ok(n) => held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        moved.now();
    }
}

/// A stream that notes when a byte last moved on the connection and how
/// many it has read.
struct Watched<'a, T> {
    inner: T,
    moved: Moved<'a>,
    read: u64,
}

impl<'a, T> Watched<'a, T> {
    fn new(inner: T, start: Instant, last: &'a AtomicU64) -> Self {
        Self {
            inner,
            moved: Moved { start, last },
            read: 0,
        }
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let n = std::task::ready!(crate::poll_read_new(&mut me.inner, cx, buf))?.len();
        if n > 0 {
            me.read += n as u64;
            me.moved.now();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    /// Which splice: through user space ([`run`]) or the kernel ([`run_tcp`]).
    #[derive(Clone, Copy, Debug)]
    enum Way {
        Copy,
        Kernel,
    }

    /// A client and a server with the splice between them; the splice's
    /// task ends when it closes both.
    async fn spliced(
        timeouts: Timeouts,
        way: Way,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Spliced>) {
        let (client, down) = pair().await;
        let (up, server) = pair().await;
        let task = match way {
            Way::Copy => tokio::spawn(run(down, up, timeouts)),
            Way::Kernel => tokio::spawn(run_tcp(down, up, timeouts)),
        };
        (client, server, task)
    }

    /// What the splice carried, once it ends (within a minute).
    async fn ended(task: tokio::task::JoinHandle<Spliced>) -> Spliced {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the splice did not end")
            .unwrap()
    }

    /// Reads until the peer closes (within a minute); the bytes read.
    async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got))
            .await
            .expect("the splice did not close the connection")
            .ok();
        got
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_and_traffic_keeps_it_open() {
        for way in [Way::Copy, Way::Kernel] {
            idle_closes_and_traffic_keeps_open(way).await;
        }
    }

    async fn idle_closes_and_traffic_keeps_open(way: Way) {
        let t = Timeouts {
            idle: Some(Duration::from_millis(300)),
            max_duration: None,
        };
        let (mut client, mut server, task) = spliced(t, way).await;
        // A byte every 200ms for a second: never idle for 300ms.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        assert!(!task.is_finished(), "open while bytes move");
        let opened = Instant::now();
        assert!(read_to_close(&mut client).await.is_empty());
        let took = opened.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(400),
            "closed after {took:?} idle"
        );
        let carried = ended(task).await;
        assert_eq!(
            carried,
            Spliced {
                sent: 0,
                received: 5
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_closed_at_its_max_duration_even_when_busy() {
        for way in [Way::Copy, Way::Kernel] {
            closed_at_max_duration(way).await;
        }
    }

    async fn closed_at_max_duration(way: Way) {
        let t = Timeouts {
            idle: None,
            max_duration: Some(Duration::from_secs(1)),
        };
        let (mut client, mut server, task) = spliced(t, way).await;
        let start = Instant::now();
        let mut b = [0u8; 1];
        while !task.is_finished() && start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client.write_all(b"x").await.is_err() || server.read(&mut b).await.unwrap_or(0) == 0
            {
                break;
            }
        }
        ended(task).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1300),
            "closed after {took:?}"
        );
        assert!(read_to_close(&mut server).await.len() <= 1);
    }

    /// 8 MiB up, then a half-close, then 8 MiB down: every byte arrives in
    /// order, the server sees the client's end of stream, and the splice
    /// counts both directions; again on pipes a connection gave back.
    #[tokio::test]
    async fn megabytes_both_ways_with_a_half_close_arrive_whole() {
        // The second kernel splice may take the first one's pipes, kept.
        for way in [Way::Copy, Way::Kernel, Way::Kernel] {
            let (mut client, mut server, task) = spliced(Timeouts::default(), way).await;
            let up: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
            let down: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 241) as u8).collect();
            let (mut client_read, mut client_write) = client.split();
            let send = async {
                client_write.write_all(&up).await.unwrap();
                client_write.shutdown().await.unwrap();
            };
            let serve = async {
                let got = read_to_close(&mut server).await;
                server.write_all(&down).await.unwrap();
                server.shutdown().await.unwrap();
                got
            };
            let receive = async {
                let mut got = Vec::new();
                client_read.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), at_server, at_client) = tokio::join!(send, serve, receive);
            assert!(at_server == up, "{way:?}: the upload arrived changed");
            assert!(at_client == down, "{way:?}: the download arrived changed");
            let carried = ended(task).await;
            assert_eq!(
                carried,
                Spliced {
                    sent: 8 << 20,
                    received: 8 << 20
                },
                "{way:?}"
            );
        }
    }

    #[test]
    fn istio_defaults_an_hour_idle_and_no_max_duration() {
        let d = Timeouts::default();
        assert_eq!(d.idle, Some(Duration::from_secs(3600)));
        assert_eq!(d.max_duration, None);
    }
}
