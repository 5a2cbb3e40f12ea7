//! Opening connections: plain TCP and UDP (marked so that capture rules
//! let the proxy's own traffic through) and mTLS to another proxy with a
//! client configuration that expects the destination's identity.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use trellis_identity::SpiffeId;

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

/// An mTLS connection to the proxy at `addr` with `config` (whose
/// verifier accepts only a server presenting `expect`). `sni` tells the
/// peer which service and port the connection is for.
pub async fn mtls(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    sni: &str,
    expect: &SpiffeId,
    opts: &ConnectOpts,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let name = ServerName::try_from(sni.to_string()).map_err(|e| ConnectError::Config {
        expect: expect.clone(),
        reason: format!("SNI `{sni}`: {e}"),
    })?;
    let tcp = tcp(addr, opts).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testing::unanswered;

    fn opts(timeout: Duration, keepalive: Option<Keepalive>) -> ConnectOpts {
        ConnectOpts {
            timeout,
            mark: None,
            keepalive,
        }
    }

    #[tokio::test]
    async fn a_connect_that_hangs_times_out() {
        let (_listener, _queued, addr) = unanswered();
        let t = Instant::now();
        let err = tcp(addr, &opts(Duration::from_millis(100), None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::Timeout { after, .. } if after == Duration::from_millis(100)),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn keepalive_is_set_on_the_connection_as_asked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let five = Duration::from_secs(5);
        let plain = tcp(addr, &opts(five, None)).await.unwrap();
        assert!(!socket2::SockRef::from(&plain).keepalive().unwrap());

        let all = Keepalive {
            time: Some(Duration::from_secs(42)),
            interval: Some(Duration::from_secs(7)),
            probes: Some(3),
        };
        let s = tcp(addr, &opts(five, Some(all))).await.unwrap();
        let s = socket2::SockRef::from(&s);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 3);

        // Only the time given: the others stay the system's.
        let sys = socket2::SockRef::from(&plain)
            .tcp_keepalive_interval()
            .unwrap();
        let time_only = Keepalive {
            time: Some(Duration::from_secs(11)),
            ..Keepalive::default()
        };
        let s = tcp(addr, &opts(five, Some(time_only))).await.unwrap();
        let s = socket2::SockRef::from(&s);
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), sys);
    }
}
