//! `CONNECT` in HTTP proxy mode: a tunnel to the host and port the request
//! names, for what clients send through a proxy that is not plain HTTP
//! (`https://` URLs, gRPC and WebSocket clients with `http_proxy`).
//!
//! A service of the mesh (by name or virtual IP) is reached through the
//! mesh: the tunnel is carried as a connection to that service port would
//! be (its protocol declared, or sniffed from the tunnel's first bytes),
//! HTTP request by request, or opaque TCP over mTLS to an endpoint. A host
//! the mesh does not know is passed through (DNS, then a plain TCP
//! connection) when the outbound traffic policy is ALLOW_ANY, and refused
//! with 403 under REGISTRY_ONLY. The client gets `200` once the tunnel can
//! be carried; its bytes then follow.
use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use trellis_dataplane::mesh::{AppProtocol, Mesh, OutboundPolicy};
use trellis_dataplane::telemetry::{self, DownstreamConn, Flag, RequestLog, TcpLog};
use trellis_transport::connect;
use trellis_transport::detect::read_detect;
use trellis_transport::splice::Timeouts;

use super::{carry_tunnel, is_http, ConnTarget, BLACKHOLE, PASSTHROUGH};
use crate::proxy::body::{self, Body};
use crate::proxy::flags::reply;
use crate::proxy::Proxy;

/// Answers `CONNECT authority` (a request `req` on connection `target`,
/// reported as `log`): `200` and the tunnel carried in a task of its own
/// once the client's connection is handed over, or why not. `resolved` is
/// the service port the authority names, if the mesh has one.
pub async fn open(
    px: &Arc<Proxy>,
    target: &ConnTarget,
    mut req: Request<Incoming>,
    authority: Authority,
    resolved: Option<(Arc<str>, u16)>,
    log: &mut RequestLog,
) -> Result<Response<Body>, Flag> {
    let mesh = px.mesh.load();
    let Some(port) = authority.port_u16() else {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            "CONNECT needs a host and a port",
        ));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (px, remote, drain) = (px.clone(), target.downstream, target.drain.clone());
    match resolved {
        Some((host, port)) => {
            let Some(declared) = service_port(&mesh, &host, port) else {
                log.flag = Some(Flag::NoRouteFound);
                let why =
                    format!("CONNECT {authority} refused: {host} has no port {port} in the mesh");
                return Ok(refused(StatusCode::FORBIDDEN, &why));
            };
            log.upstream_cluster = format!("outbound|{port}||{host}").into();
            let inner = ConnTarget {
                downstream: remote,
                fixed: Some((host, port)),
                // The tunnel is one request of the outer connection, which
                // holds the connection's place under the limit.
                open: Arc::new(DownstreamConn::default()),
                drain,
            };
            tokio::spawn(async move {
                let io = match on_upgrade.await {
                    Ok(up) => TokioIo::new(up),
                    Err(e) => return tracing::debug!(error = %e, "CONNECT: no tunnel"),
                };
                let carried = match declared {
                    AppProtocol::Http1 | AppProtocol::Http2 => {
                        carry_tunnel(px, io, inner, true).await
                    }
                    AppProtocol::Tcp => carry_tunnel(px, io, inner, false).await,
                    AppProtocol::Unknown => match read_detect(io).await {
                        Ok((s, io)) => carry_tunnel(px, io, inner, is_http(s)).await,
                        Err(e) => Err(crate::proxy::ConnError::Detect(e)),
                    },
                };
                if let Err(e) = carried {
                    tracing::debug!(error = %e, "CONNECT tunnel ended");
                }
            });
            Ok(tunnel_open())
        }
        None if mesh.outbound_policy() == OutboundPolicy::RegistryOnly => {
            log.flag = Some(Flag::NoRouteFound);
            log.upstream_cluster = BLACKHOLE.into();
            let why = format!(
                "CONNECT {authority} refused: the outbound traffic policy is REGISTRY_ONLY and {} is not a service of the mesh",
                authority.host()
            );
            Ok(refused(StatusCode::FORBIDDEN, &why))
        }
        None => {
            log.upstream_cluster = PASSTHROUGH.into();
            let addr = tokio::net::lookup_host((authority.host(), port))
                .await
                .ok()
                .and_then(|mut a| a.next());
            let Some(addr) = addr else {
                tracing::debug!(%authority, "CONNECT: the host does not resolve");
                return Err(Flag::UpstreamConnectFailure);
            };
            log.upstream = Some(addr);
            let upstream = connect::tcp(addr, &px.opts).await.map_err(|e| {
                tracing::debug!(%addr, error = %e, "CONNECT: connect failed");
                Flag::UpstreamConnectFailure
            })?;
            let conn = log.conn.clone();
            tokio::spawn(async move {
                let io = match on_upgrade.await {
                    Ok(up) => TokioIo::new(up),
                    Err(e) => return tracing::debug!(error = %e, "CONNECT: no tunnel"),
                };
                let mut tcp_log = TcpLog::start(conn, remote, PASSTHROUGH.into());
                tcp_log.upstream = Some(addr);
                // Envoy's PassthroughCluster: Istio's default timeouts.
                telemetry::splice(&px.telemetry, tcp_log, io, upstream, Timeouts::default()).await;
            });
            Ok(tunnel_open())
        }
    }
}

/// How port `port` of `host` is carried, if the mesh declares it.
fn service_port(mesh: &Mesh, host: &str, port: u16) -> Option<AppProtocol> {
    let svc = mesh.service(host)?;
    svc.ports
        .iter()
        .any(|p| p.number == port)
        .then(|| svc.protocol(port))
}

/// `200` with no body: the client's connection becomes the tunnel.
fn tunnel_open() -> Response<Body> {
    Response::new(body::empty())
}

/// A refusal, with the reason in plain text (a CONNECT is not gRPC); the
/// connection then closes, as a client that asked for a tunnel has
/// nothing else to send on it.
fn refused(status: StatusCode, why: &str) -> Response<Body> {
    let mut resp = reply(status, why, false);
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}
