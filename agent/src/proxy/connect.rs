//! Opening connections: plain TCP and UDP (marked so that capture rules
//! let the agent's own traffic through) and mTLS to another agent,
//! expecting the destination's identity.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use trellis_identity::SpiffeId;

use crate::mesh::cluster::Limits;
use crate::tls::MeshTls;

/// The mark the agent puts on its own outgoing connections when it captures
/// traffic, so that its capture rules do not send them back to itself
/// (Istio uses the same value, 1337).
pub const CAPTURE_MARK: u32 = 1337;

/// How the agent opens connections.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// Give up on a TCP connect or TLS handshake after this long.
    pub timeout: Duration,
    /// `SO_MARK` for outgoing sockets (needs CAP_NET_ADMIN; set when capturing).
    pub mark: Option<u32>,
    /// TCP keepalive on outgoing connections; `None`: off (the default).
    pub keepalive: Option<Keepalive>,
}

/// TCP keepalive probes on a connection (DestinationRule
/// `connectionPool.tcp.tcpKeepalive`); a field left unset keeps the
/// system's value (`net.ipv4.tcp_keepalive_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Keepalive {
    /// Idle time before the first probe (`time`).
    pub time: Option<Duration>,
    /// Time between probes (`interval`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (`probes`).
    pub probes: Option<u32>,
}

impl ConnectOpts {
    /// These options with a cluster's own settings (DestinationRule
    /// `connectionPool.tcp`): its `connectTimeout` if it has one, its
    /// `tcpKeepalive`.
    pub fn for_cluster(&self, limits: &Limits) -> ConnectOpts {
        ConnectOpts {
            timeout: limits.connect_timeout.unwrap_or(self.timeout),
            mark: self.mark,
            keepalive: limits.keepalive,
        }
    }
}

/// Why a connection could not be opened: what the access log reports as `UF`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("mTLS handshake with {addr} (expecting {expect}) failed: {source}")]
    Tls {
        addr: SocketAddr,
        expect: SpiffeId,
        source: io::Error,
    },
    #[error("no TLS configuration for {expect}: {reason}")]
    Config { expect: SpiffeId, reason: String },
}

/// A TCP connection to `addr`, `TCP_NODELAY`, with the capture mark and
/// keepalive if set.
pub async fn tcp(addr: SocketAddr, opts: &ConnectOpts) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        if let Some(mark) = opts.mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        socket.set_nodelay(true)?;
        if let Some(k) = &opts.keepalive {
            let mut ka = socket2::TcpKeepalive::new();
            if let Some(t) = k.time {
                ka = ka.with_time(t);
            }
            if let Some(i) = k.interval {
                ka = ka.with_interval(i);
            }
            if let Some(n) = k.probes {
                ka = ka.with_retries(n);
            }
            socket2::SockRef::from(&socket).set_tcp_keepalive(&ka)?;
        }
        socket.connect(addr).await
    };
    match tokio::time::timeout(opts.timeout, attempt).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnectError::Tcp { addr, source }),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            after: opts.timeout,
        }),
    }
}

/// A UDP socket on an ephemeral port, connected to `addr` (so the kernel
/// drops datagrams from anyone else), with the capture mark if set.
pub fn udp(addr: SocketAddr, opts: &ConnectOpts) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(mark) = opts.mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.connect(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// An mTLS connection to the agent at `addr`, which must present `expect`.
/// `sni` tells the peer which service and port the connection is for.
pub async fn mtls(
    tls: &MeshTls,
    addr: SocketAddr,
    sni: &str,
    expect: &SpiffeId,
    alpn: &'static [u8],
    opts: &ConnectOpts,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let config = tls.client(expect, alpn).map_err(|e| ConnectError::Config {
        expect: expect.clone(),
        reason: e.to_string(),
    })?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| ConnectError::Config {
        expect: expect.clone(),
        reason: format!("SNI `{sni}`: {e}"),
    })?;
    let tcp = tcp(addr, opts).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    match tokio::time::timeout(opts.timeout, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnectError::Tls {
            addr,
            expect: expect.clone(),
            source,
        }),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            after: opts.timeout,
        }),
    }
}

/// Waits until `ok`, failing the test (naming `what`) after 5 s.
#[cfg(test)]
pub(crate) async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server on loopback running `serve` on each connection it accepts,
/// and how many connections it has accepted and has open (`serve` not
/// returned yet).
#[cfg(test)]
pub(crate) struct Counting {
    pub addr: SocketAddr,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[cfg(test)]
pub(crate) async fn counting_server<F, Fut>(serve: F) -> Counting
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::Ordering::SeqCst;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Counting {
        addr: l.local_addr().unwrap(),
        accepted: Default::default(),
        open: Default::default(),
    };
    let (a, o) = (server.accepted.clone(), server.open.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            a.fetch_add(1, SeqCst);
            o.fetch_add(1, SeqCst);
            let (o, served) = (o.clone(), serve(s));
            tokio::spawn(async move {
                served.await;
                o.fetch_sub(1, SeqCst);
            });
        }
    });
    server
}

/// A loopback address whose connects hang, as a blackholed one's do: a
/// listener with a backlog of 0 and one connection already queued, which
/// Linux answers by dropping further SYNs. Keep what it returns alive.
#[cfg(test)]
pub(crate) fn unanswered() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            // The accept queue is full: from now on connects hang.
            Err(_) => return (l, queued, addr),
        }
    }
    panic!("connects to a listener that never accepts keep succeeding (not Linux?)");
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_clusters_connect_timeout_replaces_the_agents() {
        let (_listener, _queued, addr) = unanswered();
        let agent = ConnectOpts {
            timeout: Duration::from_secs(30),
            mark: None,
            keepalive: None,
        };
        let limits = Limits::default();
        assert_eq!(agent.for_cluster(&limits).timeout, Duration::from_secs(30));
        let cluster = agent.for_cluster(&Limits {
            connect_timeout: Some(Duration::from_millis(100)),
            ..Limits::default()
        });
        let t = Instant::now();
        let err = tcp(addr, &cluster).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::Timeout { after, .. } if after == Duration::from_millis(100)),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn a_clusters_keepalive_is_set_on_its_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let agent = ConnectOpts {
            timeout: Duration::from_secs(5),
            mark: None,
            keepalive: None,
        };
        let plain = tcp(addr, &agent).await.unwrap();
        assert!(!socket2::SockRef::from(&plain).keepalive().unwrap());

        let limits = Limits {
            keepalive: Some(Keepalive {
                time: Some(Duration::from_secs(42)),
                interval: Some(Duration::from_secs(7)),
                probes: Some(3),
            }),
            ..Limits::default()
        };
        let s = tcp(addr, &agent.for_cluster(&limits)).await.unwrap();
        let s = socket2::SockRef::from(&s);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);

        // Only the time given: the others stay the system's.
        let sys = socket2::SockRef::from(&plain)
            .tcp_keepalive_interval()
            .unwrap();
        let limits = Limits {
            keepalive: Some(Keepalive {
                time: Some(Duration::from_secs(11)),
                ..Keepalive::default()
            }),
            ..Limits::default()
        };
        let s = tcp(addr, &agent.for_cluster(&limits)).await.unwrap();
        let s = socket2::SockRef::from(&s);
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), sys);
    }
}
