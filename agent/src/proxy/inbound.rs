//! The inbound listener (15006): connections from other agents, over mTLS,
//! and in PERMISSIVE mode plaintext from clients outside the mesh, forwarded
//! to the application on 127.0.0.1.
//!
//! accept → detect (TLS or not) → handshake (verify the client's mesh
//! certificate) → the target port (from the SNI, else the original
//! destination) → by ALPN: HTTP/2 requests, HTTP/1.1 (upgrades), or opaque
//! TCP → the application → observe.
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use trellis_dataplane::mesh::{AppProtocol, MtlsMode};
use trellis_dataplane::telemetry::labels::{ConnLabels, Reporter, Workload};
use trellis_dataplane::telemetry::{
    self, DownstreamConn, Flag, InFlight, Observed, RequestLog, TcpLog,
};
use trellis_dataplane::tls::{ALPN_H2, ALPN_HTTP1, ALPN_TCP};
use trellis_transport::detect::detect;
use trellis_transport::listen::Slot;
use trellis_transport::orig_dst::original_dst;
use trellis_transport::sni::Sni;
use trellis_transport::sniff::Sniffed;
use trellis_transport::splice::Timeouts;
use trellis_transport::{drain, listen};

use super::body::{self, Body};
use super::failure::{DownstreamBody, Failure};
use super::flags::{bad_request, local_reply};
use super::headers::{authority, request_authority, strip_hop_by_hop};
use super::{refuse, ConnError, Downstream, Proxy, Versions};

/// Header in which the calling agent describes its workload (not its
/// identity, which comes from its certificate); removed before the request
/// reaches the application.
pub const PEER_METADATA: &str = "x-trellis-peer-metadata";

/// What is known of one inbound connection.
struct Conn {
    port: u16,
    /// [`inbound_cluster`] of `port`: made once per connection for the
    /// logs of its requests.
    cluster: Arc<str>,
    downstream: SocketAddr,
    /// The client's workload as its certificate says.
    source: Arc<Workload>,
    mtls: bool,
    /// The last peer-metadata header seen and what it parsed to: every
    /// request on one connection comes from the same agent, so this is
    /// parsed once per connection, not once per request.
    metadata: std::sync::Mutex<Option<(HeaderValue, Arc<Workload>)>>,
    /// `x-forwarded-client-cert` for the application, on mTLS connections.
    xfcc: Option<HeaderValue>,
    /// The requests open on the connection.
    open: Arc<DownstreamConn>,
}

/// Envoy's name for the cluster to application port `port`.
fn inbound_cluster(port: u16) -> Arc<str> {
    format!("inbound|{port}||").into()
}

/// Tells the application who called (Envoy's header, `By=...;URI=...`).
const XFCC: &str = "x-forwarded-client-cert";

/// Accepts connections on `listener` until a drain starts.
pub async fn serve(listener: TcpListener, px: Arc<Proxy>, drain: drain::Watch) {
    let limit = px.conn_limit.clone();
    listen::serve(
        listener,
        "inbound",
        limit,
        drain,
        move |tcp, remote, drain, slot| handle(px.clone(), tcp, remote, drain, slot),
    )
    .await
}

async fn handle(
    px: Arc<Proxy>,
    tcp: TcpStream,
    remote: SocketAddr,
    drain: drain::Watch,
    slot: Slot,
) -> Result<(), ConnError> {
    let _ = tcp.set_nodelay(true);
    // Held by the connection's requests and socket, while they last.
    let held = Arc::new(DownstreamConn::new(slot));
    let orig = original_dst(&tcp);
    let sniffed = detect(&tcp).await.map_err(ConnError::Detect)?;
    if sniffed == Sniffed::Tls {
        return handle_tls(px, tcp, remote, orig, drain, held).await;
    }
    let Some(port) = orig.map(|o| o.port()) else {
        warn_no_port_once(remote);
        return Err(ConnError::NoPort);
    };
    let mesh = px.mesh.load();
    if mesh.inbound_mode(port) == MtlsMode::Strict {
        return Err(ConnError::Strict(port));
    }
    let conn = Arc::new(Conn {
        port,
        cluster: inbound_cluster(port),
        downstream: remote,
        source: Workload::none(),
        mtls: false,
        metadata: Default::default(),
        xfcc: None,
        open: held,
    });
    match sniffed {
        Sniffed::Http1 | Sniffed::Http2 => {
            let limits = px.downstream;
            serve_http(px, conn, tcp, Versions::Any, limits, drain).await
        }
        _ => serve_tcp(px, conn, tcp).await,
    }
}

/// Tells the operator, once per process at warn level (after that the
/// accept loop's debug line), that plaintext reaches the inbound port
/// without capture, which cannot work, and what to do instead.
fn warn_no_port_once(remote: SocketAddr) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        %remote,
        "a plaintext connection came straight to the inbound port and was closed: without \
         capture there is no original destination to tell the application port. Clients \
         outside the mesh: call the application's own port, with --capture iptables or \
         nftables on this agent (PERMISSIVE mTLS lets them in). Clients in the mesh: call \
         the service through your agent (its outbound port as an HTTP proxy, or an \
         --upstream port), which connects here with mTLS. Logged once; later ones at debug \
         level"
    );
}

async fn handle_tls(
    px: Arc<Proxy>,
    tcp: TcpStream,
    remote: SocketAddr,
    orig: Option<SocketAddr>,
    drain: drain::Watch,
    held: Arc<DownstreamConn>,
) -> Result<(), ConnError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(px.tls.server());
    let tls = tokio::time::timeout(px.opts.timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| ConnError::HandshakeTimeout(px.opts.timeout))?
        .map_err(ConnError::Handshake)?;
    let (_, session) = tls.get_ref();
    let port = session
        .server_name()
        .and_then(|s| Sni::parse(s).map(|s| s.port))
        .or(orig.map(|o| o.port()))
        .ok_or_else(|| ConnError::NoSniPort(session.server_name().map(str::to_string)))?;
    let principal = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| trellis_identity::pem::spiffe_id(leaf).ok());
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let source = Workload {
        namespace: principal
            .as_ref()
            .and_then(|p| trellis_dataplane::telemetry::labels::namespace_of(p).map(str::to_string))
            .unwrap_or_default(),
        principal: principal.map(|p| p.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    let conn = Arc::new(Conn {
        port,
        cluster: inbound_cluster(port),
        downstream: remote,
        xfcc: HeaderValue::from_str(&format!(
            "By={};URI={}",
            px.tls.identity(),
            source.principal
        ))
        .ok(),
        source: Arc::new(source),
        mtls: true,
        metadata: Default::default(),
        open: held,
    });
    // The calling agent enforced the limits on its side.
    let peers = px.downstream.from_peers();
    match alpn.as_deref() {
        Some(ALPN_H2) => serve_http(px, conn, tls, Versions::Http2, peers, drain).await,
        Some(ALPN_HTTP1) => serve_http(px, conn, tls, Versions::Http1, peers, drain).await,
        Some(ALPN_TCP) | None => serve_tcp(px, conn, tls).await,
        Some(other) => Err(ConnError::Alpn(String::from_utf8_lossy(other).into_owned())),
    }
}

/// Serves HTTP on `io`, in `versions` (as TLS negotiated it, or detected).
async fn serve_http<I>(
    px: Arc<Proxy>,
    conn: Arc<Conn>,
    io: I,
    versions: Versions,
    limits: Downstream,
    drain: drain::Watch,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (proxy, this) = (px.clone(), conn.clone());
    let svc = service_fn(move |req| {
        let px = px.clone();
        let conn = conn.clone();
        let held = conn.open.start();
        // Boxed, as the outbound side's (see there).
        Box::pin(
            async move { Ok::<_, std::convert::Infallible>(to_app(px, conn, req, held).await) },
        )
    });
    let open = this.open.clone();
    let served = super::serve_http(io, versions, limits, open, svc, drain).await;
    let labels = || {
        let mesh = proxy.mesh.load();
        ConnLabels {
            reporter: Reporter::Destination,
            source: this.source.clone(),
            destination: mesh.me().clone(),
            destination_service: mesh.inbound_service(this.port),
            mtls: this.mtls,
        }
    };
    super::report_refused(&proxy.telemetry, &served, labels, this.downstream);
    served
}

async fn to_app(
    px: Arc<Proxy>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
    held: InFlight,
) -> Response<Body> {
    let mesh = px.mesh.load();
    let h2 = match mesh.app_protocol(conn.port) {
        AppProtocol::Http2 => true,
        AppProtocol::Http1 => false,
        AppProtocol::Tcp | AppProtocol::Unknown => {
            trellis_dataplane::telemetry::is_grpc(req.headers())
        }
    };
    let source = peer_metadata(&conn, req.headers_mut());
    let request_id = super::ensure_request_id(req.headers_mut());
    super::trace::never_index_ids(req.headers_mut());
    let authority = Arc::from(authority(&req).unwrap_or_default());
    // The URI's authority is the request's: a `Host` beside it goes (the
    // HTTP/1.1 hop to the application writes `Host` from the authority).
    if req.uri().authority().is_some() {
        req.headers_mut().remove(http::header::HOST);
    }
    match &conn.xfcc {
        Some(v) => {
            req.headers_mut().insert(XFCC, v.clone());
        }
        // Plaintext: nobody vouches for a client certificate header.
        None => {
            req.headers_mut().remove(XFCC);
        }
    }
    let conn_labels = ConnLabels {
        reporter: Reporter::Destination,
        source,
        destination: mesh.me().clone(),
        destination_service: mesh.inbound_service(conn.port),
        mtls: conn.mtls,
    };
    let mut log = RequestLog::start(conn_labels, &req, authority, request_id, conn.downstream);
    log.in_flight = Some(held);
    log.upstream = Some(px.app.addr(conn.port));
    log.upstream_cluster = conn.cluster.clone();
    if let Err(why) = request_authority(&req) {
        // A plaintext client's request without `Host`: its fault.
        log.flag = Some(Flag::DownstreamProtocolError);
        let grpc = log.grpc;
        return observed(&px, bad_request(why, grpc), log);
    }
    let upgrade = super::upgrade::wants_upgrade(&req);
    let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    strip_hop_by_hop(req.headers_mut());
    let (mut parts, b) = req.into_parts();
    if let Some(u) = &upgrade {
        super::upgrade::restore_request_headers(&mut parts.headers, u);
    }
    let counted = Observed::counting(b, log.request_bytes.clone());
    let req = Request::from_parts(
        parts,
        http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(counted, |e| {
            body::BoxError::from(DownstreamBody(e))
        })),
    );
    let result = if let (Some(u), Some(down)) = (upgrade, on_upgrade) {
        let addr = px.app.addr(conn.port);
        match trellis_transport::connect::tcp(addr, &px.opts).await {
            Ok(io) => {
                let hop = super::upgrade::Hop {
                    io,
                    addr,
                    max_response_headers: px.app.max_response_headers(),
                };
                super::upgrade::send_on(hop, req, u, down).await
            }
            Err(_) => Err(Flag::UpstreamConnectFailure),
        }
    } else {
        let sent = px.app.send(px.app.addr(conn.port), h2, req).await;
        sent.map_err(Failure::flag)
    };
    let resp = match result {
        Ok(mut resp) => {
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                // No longer HTTP: no request timeouts on the connection.
                conn.open.upgrade();
            }
            strip_hop_by_hop_response(&mut resp);
            resp
        }
        Err(flag) => {
            log.flag = Some(flag);
            local_reply(flag, log.grpc)
        }
    };
    observed(&px, resp, log)
}

/// `resp`, reporting the request as `log` once it has been sent.
fn observed(px: &Proxy, resp: Response<Body>, mut log: RequestLog) -> Response<Body> {
    log.response_code = resp.status().as_u16();
    log.grpc_status = trellis_dataplane::telemetry::grpc_status(resp.headers());
    let telemetry = px.telemetry.clone();
    resp.map(|b| http_body_util::BodyExt::boxed(Observed::reporting(b, telemetry, log)))
}

fn strip_hop_by_hop_response(resp: &mut Response<Body>) {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        strip_hop_by_hop(resp.headers_mut());
    }
}

/// The caller's workload: its identity from the certificate, the rest from
/// the metadata header its agent sent (removed here either way).
fn peer_metadata(conn: &Conn, headers: &mut http::HeaderMap) -> Arc<Workload> {
    let Some(v) = headers.remove(PEER_METADATA) else {
        return conn.source.clone();
    };
    if !conn.mtls {
        return conn.source.clone();
    }
    let mut cache = conn.metadata.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((seen, w)) = cache.as_ref() {
        if *seen == v {
            return w.clone();
        }
    }
    let w = match serde_json::from_slice::<Workload>(v.as_bytes()) {
        Ok(mut w) => {
            // What the certificate proves wins over what the header claims.
            w.principal.clone_from(&conn.source.principal);
            w.namespace.clone_from(&conn.source.namespace);
            Arc::new(w)
        }
        Err(_) => conn.source.clone(),
    };
    *cache = Some((v, w.clone()));
    w
}

async fn serve_tcp<I>(px: Arc<Proxy>, conn: Arc<Conn>, io: I) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mesh = px.mesh.load();
    let addr = px.app.addr(conn.port);
    let conn_labels = ConnLabels {
        reporter: Reporter::Destination,
        source: conn.source.clone(),
        destination: mesh.me().clone(),
        destination_service: mesh.inbound_service(conn.port),
        mtls: conn.mtls,
    };
    let mut log = TcpLog::start(conn_labels, conn.downstream, conn.cluster.to_string());
    log.upstream = Some(addr);
    let Ok(upstream) = trellis_transport::connect::tcp(addr, &px.opts).await else {
        return Err(refuse(&px.telemetry, log, Flag::UpstreamConnectFailure));
    };
    // DestinationRules apply on the client side; the inbound side keeps
    // Istio's default timeouts, as its Envoy does.
    telemetry::splice(&px.telemetry, log, io, upstream, Timeouts::default()).await;
    Ok(())
}
