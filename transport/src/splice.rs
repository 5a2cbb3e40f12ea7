//! Opaque TCP: bytes both ways until either side closes, or the connection
//! has been idle too long or has lived too long; [`run`] says how many
//! bytes went each way, for the caller to report.
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    let ended = {
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        tokio::pin!(copy);
        let deadline = timeouts.max_duration.map(|d| start + d);
        // When the connection is idle too long, counting from the last byte.
        let idle_at = || {
            timeouts
                .idle
                .map(|i| start + Duration::from_millis(last.load(Ordering::Relaxed)) + i)
        };
        loop {
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
        }
    };
    if let Some(why) = ended {
        tracing::debug!(reason = %why, "TCP connection closed");
    }
    // Bytes read from the downstream went up, and the other way round.
    Spliced {
        sent: up.bytes_read(),
        received: down.bytes_read(),
    }
}

/// A stream that notes when a byte last moved on the connection and how
/// many it has read.
struct Watched<'a, T> {
    inner: T,
    start: Instant,
    last: &'a AtomicU64,
    read: u64,
}

impl<'a, T> Watched<'a, T> {
    fn new(inner: T, start: Instant, last: &'a AtomicU64) -> Self {
        Self {
            inner,
            start,
            last,
            read: 0,
        }
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }

    fn moved(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.fetch_max(ms, Ordering::Relaxed);
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
            me.moved();
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

    /// A client and a server with the splice between them; the splice's
    /// task ends when it closes both.
    async fn spliced(
        timeouts: Timeouts,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Spliced>) {
        let (client, down) = pair().await;
        let (up, server) = pair().await;
        let task = tokio::spawn(run(down, up, timeouts));
        (client, server, task)
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
        let t = Timeouts {
            idle: Some(Duration::from_millis(300)),
            max_duration: None,
        };
        let (mut client, mut server, task) = spliced(t).await;
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
        let carried = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the splice did not end")
            .unwrap();
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
        let t = Timeouts {
            idle: None,
            max_duration: Some(Duration::from_secs(1)),
        };
        let (mut client, mut server, task) = spliced(t).await;
        let start = Instant::now();
        let mut b = [0u8; 1];
        while !task.is_finished() && start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if client.write_all(b"x").await.is_err() || server.read(&mut b).await.unwrap_or(0) == 0
            {
                break;
            }
        }
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the splice did not end")
            .unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1300),
            "closed after {took:?}"
        );
        assert!(read_to_close(&mut server).await.len() <= 1);
    }

    #[test]
    fn istio_defaults_an_hour_idle_and_no_max_duration() {
        let d = Timeouts::default();
        assert_eq!(d.idle, Some(Duration::from_secs(3600)));
        assert_eq!(d.max_duration, None);
    }
}
