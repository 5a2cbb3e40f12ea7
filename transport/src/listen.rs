//! Listening sockets and the accept loop every listener runs: one task
//! per connection, backoff on accept errors (out of file descriptors),
//! and an end to accepting when a drain starts ([`crate::drain`]).
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::drain;

/// First wait after a failed accept; it doubles up to [`MAX_BACKOFF`] while
/// accepts keep failing.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` and runs `handle` on each in a task
/// of its own (with a watch on the drain, so the drain waits for it),
/// until a drain starts. `name` names the listener in the logs, where a
/// connection that ends in an error is reported at debug level.
pub async fn serve<F, Fut, E>(
    listener: TcpListener,
    name: &'static str,
    mut drain: drain::Watch,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, drain::Watch) -> Fut,
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
                    let conn = handle(tcp, remote, drain.clone());
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
            watch,
            move |mut tcp, _, mut drain| {
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
}
