//! tonic over our rustls configurations: a client channel whose connector
//! does the TLS handshake with a SPIFFE-checking verifier, and a stream of
//! accepted mTLS connections for `Server::serve_with_incoming` that carries
//! each peer's verified certificate into the request extensions
//! ([`PeerInfo`]).
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{pem, IdentityError, SpiffeId};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connector of our channels: TCP (its socket marked with `mark`, if
/// given, before it connects), then TLS with `config`.
fn connector(
    config: Arc<rustls::ClientConfig>,
    mark: Option<u32>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or("localhost")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(15012);
            let tcp = match mark {
                None => TcpStream::connect((host.as_str(), port)).await?,
                Some(mark) => connect_marked(&host, port, mark).await?,
            };
            tcp.set_nodelay(true)?;
            // Verifiers check SPIFFE IDs, not this name; it only fills SNI.
            let name = ServerName::try_from(host)
                .unwrap_or_else(|_| ServerName::try_from("trellis.invalid").expect("static name"));
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    })
}

/// A TCP connection to the first address of `host:port` that accepts,
/// from a socket carrying `mark` (so that the agent's capture rules let it
/// through rather than redirecting it to the agent itself).
async fn connect_marked(host: &str, port: u16, mark: u32) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket2::SockRef::from(&socket)
            .set_mark(mark)
            .map_err(|e| io::Error::new(e.kind(), format!("SO_MARK {mark}: {e}")))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"))))
}

fn endpoint(addr: &str) -> Result<Endpoint, IdentityError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| IdentityError::BadAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// A lazily connecting channel to `addr` (`host:port`) over mTLS; it
/// reconnects by itself after failures. Its sockets carry `mark`, if given.
pub fn channel(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    mark: Option<u32>,
) -> Result<Channel, IdentityError> {
    Ok(endpoint(addr)?.connect_with_connector_lazy(connector(config, mark)))
}

/// Connects to the first of `addrs` that completes a handshake, from
/// sockets carrying `mark` if given; the error lists why each one failed.
pub async fn connect_any(
    addrs: &[String],
    config: Arc<rustls::ClientConfig>,
    mark: Option<u32>,
) -> Result<(Channel, String), IdentityError> {
    let mut reasons = Vec::new();
    for addr in addrs {
        match endpoint(addr)?
            .connect_with_connector(connector(config.clone(), mark))
            .await
        {
            Ok(ch) => return Ok((ch, addr.clone())),
            Err(e) => reasons.push(format!("{addr}: {}", error_chain(&e))),
        }
    }
    Err(IdentityError::Unreachable(if reasons.is_empty() {
        "no control-plane addresses given".into()
    } else {
        reasons.join("; ")
    }))
}

/// An error and its sources, joined: tonic's transport errors hide the
/// useful part (a refused certificate, say) in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

/// What the server knows of a caller: its address and, when it presented
/// one, its verified certificate chain.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The leaf's SPIFFE ID, parsed once per connection.
    spiffe: Option<SpiffeId>,
}

impl PeerInfo {
    pub fn new(remote_addr: SocketAddr, certs: Option<Arc<Vec<CertificateDer<'static>>>>) -> Self {
        let spiffe = certs
            .as_ref()
            .and_then(|c| c.first())
            .and_then(|leaf| pem::spiffe_id(leaf).ok());
        Self {
            remote_addr,
            certs,
            spiffe,
        }
    }

    /// The caller's SPIFFE ID, if it authenticated with a certificate.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.spiffe.clone()
    }
}

/// Peer information of a tonic request served over [`incoming`].
pub fn peer_info<T>(req: &tonic::Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

/// An accepted mTLS connection.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes in
/// their own tasks, so a slow client cannot hold up others. Connections that
/// fail the handshake are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let certs =
                            tls.get_ref().1.peer_certificates().map(|c| {
                                Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())
                            });
                        let info = PeerInfo::new(remote_addr, certs);
                        let _ = tx.send(Ok(TlsConn { inner: tls, info })).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%remote_addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote_addr, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
