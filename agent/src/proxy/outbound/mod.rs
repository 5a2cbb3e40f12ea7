//! The outbound side: connections from the application to services.
//!
//! accept → find the destination (the explicit upstream a port stands for;
//! else the original destination of a captured connection; else, in HTTP
//! proxy mode, each request's authority) → the port's protocol (declared, or
//! sniffed) → HTTP ([`http`]: route, balance, forward over pooled mTLS
//! HTTP/2) or opaque TCP ([`tcp`]: one mTLS connection per connection).
pub mod http;
pub mod tcp;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use tokio::net::{TcpListener, TcpStream};
use trellis_dataplane::mesh::AppProtocol;
use trellis_dataplane::telemetry::DownstreamConn;
use trellis_transport::detect::detect;
use trellis_transport::listen::Slot;
use trellis_transport::orig_dst::original_dst;
use trellis_transport::sniff::Sniffed;
use trellis_transport::{drain, listen};

use super::{ConnError, Proxy, Versions};

/// What an outbound listener stands for.
#[derive(Clone, Debug)]
pub enum Listener {
    /// 15001: captured connections (by their original destination) and
    /// HTTP proxy mode (by each request's authority).
    Capture,
    /// A local port standing for one service port (`--upstream`).
    Upstream { host: Arc<str>, port: u16 },
}

/// Where the connection's requests go when that does not depend on each
/// request.
#[derive(Clone, Debug)]
pub struct ConnTarget {
    pub downstream: SocketAddr,
    /// The service host and port, or `None` in HTTP proxy mode.
    pub fixed: Option<(Arc<str>, u16)>,
    /// The requests open on the connection.
    pub open: Arc<DownstreamConn>,
}

/// Accepts connections on `listener` until a drain starts.
pub async fn serve(listener: TcpListener, kind: Listener, px: Arc<Proxy>, drain: drain::Watch) {
    let name = match kind {
        Listener::Capture => "outbound",
        Listener::Upstream { .. } => "upstream",
    };
    let limit = px.conn_limit.clone();
    listen::serve(
        listener,
        name,
        limit,
        drain,
        move |tcp, remote, drain, slot| {
            let conn = Conn {
                remote,
                drain,
                slot,
            };
            handle(px.clone(), tcp, kind.clone(), conn)
        },
    )
    .await
}

/// What an accepted connection comes with.
struct Conn {
    remote: SocketAddr,
    drain: drain::Watch,
    /// Its place under the connection limit, held while it lasts.
    slot: Slot,
}

async fn handle(
    px: Arc<Proxy>,
    tcp: TcpStream,
    kind: Listener,
    conn: Conn,
) -> Result<(), ConnError> {
    let Conn {
        remote,
        drain,
        slot,
    } = conn;
    let _ = tcp.set_nodelay(true);
    let mesh = px.mesh.load();
    let (fixed, declared) = match kind {
        Listener::Upstream { host, port } => {
            let proto = mesh
                .service(&host)
                .map_or(AppProtocol::Unknown, |s| s.protocol(port));
            (Some((host, port)), proto)
        }
        Listener::Capture => match original_dst(&tcp) {
            Some(orig) => match mesh.service_by_addr(orig) {
                Some((svc, port)) => (
                    Some((Arc::from(svc.host.as_str()), port)),
                    svc.protocol(port),
                ),
                None => return tcp::passthrough(&px, tcp, remote, orig).await,
            },
            // Not redirected: the client points at 15001 itself, an HTTP proxy.
            None => (None, AppProtocol::Http1),
        },
    };
    let target = ConnTarget {
        downstream: remote,
        fixed,
        open: Arc::new(DownstreamConn::new(slot)),
    };
    let http = match declared {
        AppProtocol::Http1 | AppProtocol::Http2 => true,
        AppProtocol::Tcp => false,
        AppProtocol::Unknown => matches!(
            detect(&tcp).await.map_err(ConnError::Detect)?,
            Sniffed::Http1 | Sniffed::Http2
        ),
    };
    if !http {
        let (host, port) = target.fixed.clone().expect("proxy mode is always HTTP");
        return tcp::forward(&px, tcp, remote, &host, port).await;
    }
    let target = Arc::new(target);
    let limits = px.downstream;
    let (proxy, fixed, open) = (px.clone(), target.fixed.clone(), target.open.clone());
    let svc = service_fn(move |req| {
        let px = px.clone();
        let target = target.clone();
        // Counted open from the moment the head is in.
        let held = target.open.start();
        // Boxed: hyper moves a stream's future a few times on the way into
        // the task it spawns per HTTP/2 stream; a pointer moves cheaper
        // than the request's state (about 5 KB).
        Box::pin(async move {
            Ok::<_, std::convert::Infallible>(http::handle(px, target, req, held).await)
        })
    });
    let served = super::serve_http(tcp, Versions::Any, limits, open, svc, drain).await;
    let labels = || {
        let host = fixed.map_or_else(|| Arc::from("unknown"), |(h, _)| h);
        http::source_labels(&proxy.mesh.load(), host)
    };
    super::report_refused(&proxy.telemetry, &served, labels, remote);
    served
}
