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

use crate::tls::MeshTls;

/// The mark the agent puts on its own outgoing connections when it captures
/// traffic, so that its iptables rules do not send them back to itself
/// (Istio uses the same value, 1337).
pub const CAPTURE_MARK: u32 = 1337;

/// How the agent opens connections.
#[derive(Clone, Debug)]
pub struct ConnectOpts {
    /// Give up on a TCP connect or TLS handshake after this long.
    pub timeout: Duration,
    /// `SO_MARK` for outgoing sockets (needs CAP_NET_ADMIN; set when capturing).
    pub mark: Option<u32>,
}

impl ConnectOpts {
    /// These options with a cluster's own connect timeout
    /// (DestinationRule `connectionPool.tcp.connectTimeout`), if it has one.
    pub fn with_timeout(&self, timeout: Option<Duration>) -> ConnectOpts {
        ConnectOpts {
            timeout: timeout.unwrap_or(self.timeout),
            mark: self.mark,
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

/// A TCP connection to `addr`, `TCP_NODELAY`, with the capture mark if set.
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
        };
        assert_eq!(agent.with_timeout(None).timeout, Duration::from_secs(30));
        let cluster = agent.with_timeout(Some(Duration::from_millis(100)));
        let t = Instant::now();
        let err = tcp(addr, &cluster).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::Timeout { after, .. } if after == Duration::from_millis(100)),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
