//! The outbound side: connections from the application to services.
//!
//! accept → find the destination (the explicit upstream a port stands for;
//! else the original destination of a captured connection; else, in HTTP
//! proxy mode, each request's authority, or the host and port a `CONNECT`
//! names: [`tunnel`]) → the port's protocol (declared, or sniffed) → HTTP
//! ([`http`]: route, balance, forward over pooled mTLS HTTP/2) or opaque
//! TCP ([`tcp`]: one mTLS connection per connection).
pub mod http;
pub mod tcp;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use trellis_dataplane::mesh::{AppProtocol, Mesh};
use trellis_dataplane::telemetry::labels::{ConnLabels, Reporter, Workload};
use trellis_dataplane::telemetry::DownstreamConn;
use trellis_transport::detect::detect;
use trellis_transport::listen::Slot;
use trellis_transport::orig_dst::original_dst;
use trellis_transport::sniff::Sniffed;
use trellis_transport::{drain, listen};

use super::{ConnError, Proxy, Versions};

/// Istio's names for where traffic to a destination outside the mesh goes:
/// through, or nowhere (REGISTRY_ONLY).
pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";

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
    /// For what a tunnel carries (`CONNECT`): a drain ends it as it ends
    /// the connection.
    pub drain: drain::Watch,
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
        drain,
    };
    let http = match declared {
        AppProtocol::Http1 | AppProtocol::Http2 => true,
        AppProtocol::Tcp => false,
        AppProtocol::Unknown => is_http(detect(&tcp).await.map_err(ConnError::Detect)?),
    };
    carry(px, tcp, target, http).await
}

/// What carrying a connection comes to.
type Carried = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ConnError>> + Send>>;

/// [`carry`], boxed, for a tunnel: a connection carried from within a
/// request of another (`CONNECT`), whose future would otherwise contain
/// its own type.
fn carry_tunnel<I>(px: Arc<Proxy>, io: I, target: ConnTarget, http: bool) -> Carried
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(carry(px, io, target, http))
}

/// The labels of a connection this agent makes as the source, before an
/// endpoint (and so the destination workload) is chosen.
pub fn source_labels(mesh: &Mesh, destination_service: Arc<str>) -> ConnLabels {
    ConnLabels {
        reporter: Reporter::Source,
        source: mesh.me().clone(),
        destination: Workload::none(),
        destination_service,
        mtls: false,
    }
}

/// Whether sniffed bytes are HTTP.
fn is_http(s: Sniffed) -> bool {
    matches!(s, Sniffed::Http1 | Sniffed::Http2)
}

/// Carries a connection to its target: `http`, request by request
/// ([`http::handle`]), else as opaque TCP to its service.
async fn carry<I>(px: Arc<Proxy>, io: I, target: ConnTarget, http: bool) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote = target.downstream;
    if !http {
        let (host, port) = target.fixed.clone().expect("proxy mode is always HTTP");
        return tcp::forward(&px, io, remote, &host, port).await;
    }
    let drain = target.drain.clone();
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
    let served = super::serve_http(io, Versions::Any, limits, open, svc, drain).await;
    let labels = || {
        let host = fixed.map_or_else(|| Arc::from("unknown"), |(h, _)| h);
        source_labels(&proxy.mesh.load(), host)
    };
    super::report_refused(&proxy.telemetry, &served, labels, remote);
    served
}
