//! Listening sockets and the accept loop every listener runs: one task
//! per connection, backoff on accept errors (out of file descriptors), a
//! limit on the connections open at once ([`ConnLimit`]), and an end to
//! accepting when a drain starts ([`crate::drain`]).
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::drain;

/// First wait after a failed accept; it doubles up to [`MAX_BACKOFF`] while
/// accepts keep failing.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How often, at most, the accept loop warns that it closes connections
/// past a [`ConnLimit`].
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(10);

/// How many connections the listeners that share it may hold open at once.
/// Past it a new connection is closed as soon as it is accepted (so its
/// client learns at once, rather than waiting in the backlog), and the
/// accept loop warns (at most every 10 s, with the number closed).
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    /// When the last warning was logged, and the count refused then.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl ConnLimit {
    /// At most `max` connections open at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            warned: Mutex::new((None, 0)),
        })
    }

    /// No limit (the admin and metrics listeners).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at accept so far, the limit reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A slot for one more connection, if the limit allows.
    pub fn acquire(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Counts a connection closed at accept, and warns if it has not
    /// lately.
    fn refuse(&self, name: &str, remote: SocketAddr) {
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if warned
            .0
            .is_some_and(|t| now.duration_since(t) < LIMIT_WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            listener = name,
            %remote,
            limit = self.max,
            closed = refused - warned.1,
            "connection limit reached: new connections are closed until some end (see --max-downstream-connections)"
        );
        *warned = (Some(now), refused);
    }
}

/// One connection's place under a [`ConnLimit`], given back when dropped:
/// kept for as long as the connection lives (by its task, or by its
/// socket where that outlives the task, as an upgraded HTTP connection's
/// does).
#[derive(Debug)]
pub struct Slot(Arc<ConnLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections on `listener` and runs `handle` on each in a task
/// of its own (with a watch on the drain, so the drain waits for it, and
/// its [`Slot`] under `limit`), until a drain starts; at most as many at
/// once as `limit` allows (it may be shared with other listeners). `name`
/// names the listener in the logs, where a connection that ends in an
/// error is reported at debug level.
pub async fn serve<F, Fut, E>(
    listener: TcpListener,
    name: &'static str,
    limit: Arc<ConnLimit>,
    mut drain: drain::Watch,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, drain::Watch, Slot) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        tokio::select! {
            biased;
            () = drain.signalled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    backoff = MIN_BACKOFF;
                    let Some(slot) = limit.acquire() else {
                        drop(tcp);
                        limit.refuse(name, remote);
                        continue;
                    };
                    let conn = handle(tcp, remote, drain.clone(), slot);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(listener = name, %remote, error = %e, "connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// A TCP listener on `addr`.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Raises this process's soft limit of open files to its hard limit (or
/// to `wanted`, if lower), for a proxy that holds several descriptors per
/// connection (two sockets, and the gateway's two pipes); the soft limit
/// is often 1,024. The limit it has afterwards.
pub fn raise_open_files(wanted: u64) -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let now = getrlimit(Resource::Nofile);
    let soft = now.current.unwrap_or(u64::MAX);
    let target = now.maximum.unwrap_or(u64::MAX).min(wanted);
    if soft >= target {
        return soft;
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: now.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => target,
        Err(e) => {
            tracing::warn!(error = %e, soft, "raising the open-files limit");
            soft
        }
    }
}

/// Whether the host has IPv6: its loopback address can be bound.
pub fn host_has_ipv6() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Where IPv6 capture sends what would have gone to IPv4 listener `addr`:
/// REDIRECT takes locally made packets (outbound, DNS: `local`) to `::1`
/// and incoming ones to the first address of the interface they arrived
/// on, so the inbound twin listens on all (`::`). `None` for a listener on
/// IPv6.
pub fn ipv6_twin(addr: SocketAddr, local: bool) -> Option<SocketAddr> {
    let ip = if local {
        Ipv6Addr::LOCALHOST
    } else {
        Ipv6Addr::UNSPECIFIED
    };
    addr.is_ipv4()
        .then(|| SocketAddr::new(ip.into(), addr.port()))
}

/// A TCP listener on an IPv6 address that takes IPv6 only: on `::` a
/// dual-stack socket would clash with the IPv4 listener on the same port.
pub fn bind_ipv6_only(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn ipv6_twins_are_where_redirect_delivers() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            ipv6_twin(at("127.0.0.1:15001"), true),
            Some(at("[::1]:15001"))
        );
        assert_eq!(
            ipv6_twin(at("0.0.0.0:15006"), false),
            Some(at("[::]:15006"))
        );
        assert_eq!(ipv6_twin(at("[::1]:15001"), true), None);
    }

    #[tokio::test]
    async fn a_drain_stops_accepting_and_waits_for_open_connections() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (signal, watch) = drain::channel();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let loop_task = tokio::spawn(serve(
            listener,
            "test",
            ConnLimit::unlimited(),
            watch,
            move |mut tcp, _, mut drain, _slot| {
                let count = count.clone();
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    // The connection finishes its work once asked to drain.
                    drain.signalled().await;
                    tcp.write_all(b"bye").await?;
                    Ok::<_, io::Error>(())
                }
            },
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        trellis_testing::eventually("the connection is served", || {
            served.load(Ordering::SeqCst) == 1
        })
        .await;
        assert!(signal.drain(Duration::from_secs(5)).await);
        loop_task.await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(got, b"bye");
        // No longer accepting: the listener is closed.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn past_the_limit_a_new_connection_is_closed_until_one_ends() {
        use tokio::io::AsyncReadExt;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_signal, watch) = drain::channel();
        let limit = ConnLimit::new(2);
        // Each connection is held until its client closes it.
        tokio::spawn(serve(
            listener,
            "test",
            limit.clone(),
            watch,
            |mut tcp, _, _, slot| async move {
                let mut buf = [0u8; 1];
                let _ = tcp.read(&mut buf).await;
                drop(slot);
                Ok::<_, io::Error>(())
            },
        ));
        let a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
        trellis_testing::eventually("two held", || limit.open() == 2).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        // Closed at once: end of stream, or a reset.
        let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        assert_eq!(limit.refused(), 1);
        drop(a);
        trellis_testing::eventually("one ended", || limit.open() == 1).await;
        let _d = tokio::net::TcpStream::connect(addr).await.unwrap();
        trellis_testing::eventually("a new one held", || limit.open() == 2).await;
        assert_eq!(limit.refused(), 1);
    }
}
