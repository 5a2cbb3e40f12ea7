//! One HTTP request from the application to a service, Istio's way: a
//! pipeline of named steps over one [`Call`], in [`pipeline`]:
//!
//! match (the VirtualService's first route that takes the request) →
//! fault (delay, abort) → redirect (or direct response) → split (the
//! weighted destination) → rewrite (path, authority, request headers) →
//! circuit breaker (the destination cluster's limit on requests in flight)
//! → mirror → retries and timeouts ([`forward`]: balance, connect over
//! pooled mTLS HTTP/2 or plaintext, retry by policy and budget, per-try
//! and route timeouts) → response headers. Whatever the outcome, the
//! request is observed once its response is done ([`handle`]).
mod forward;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use trellis_api::config::{
    Destination, HeaderOperations, HttpMatchRequest, HttpRoute, HttpRouteDestination,
};
use trellis_dataplane::mesh::cluster::Cluster;
use trellis_dataplane::mesh::Mesh;
use trellis_dataplane::telemetry::{Flag, InFlight, Observed, RequestLog};

use self::forward::{circuit_breaker, ReqBody};
use super::ConnTarget;
use crate::proxy::body::{self, Body};
use crate::proxy::flags::{bad_request, grpc_reply, local_reply, reply};
use crate::proxy::headers::{authority, request_authority, strip_hop_by_hop};
use crate::proxy::inbound::PEER_METADATA;
use crate::proxy::{ensure_request_id, trace, upgrade, Proxy};
use crate::route::{self, RequestView};

/// Handles one request from the application: finds the service it is for,
/// runs the [`pipeline`], answers a failure with Envoy's local reply, and
/// reports the request when its response has been sent.
pub async fn handle(
    px: Arc<Proxy>,
    target: Arc<ConnTarget>,
    mut req: Request<Incoming>,
    held: InFlight,
) -> Response<Body> {
    let mesh = px.mesh.load();
    // Parsed once: it goes upstream as it is (unless a route rewrites it).
    let parsed = request_authority(&req);
    let authority: Arc<str> = Arc::from(match &parsed {
        Ok(a) => a.as_str(),
        Err(_) => authority(&req).unwrap_or_default(),
    });
    let request_id = ensure_request_id(req.headers_mut());
    trace::never_index_ids(req.headers_mut());
    let resolved = match (&target.fixed, &parsed) {
        (Some((h, p)), _) => Some((h.clone(), *p)),
        (None, Ok(_)) => mesh.resolve(&authority),
        (None, Err(_)) => None,
    };
    // A host the mesh does not know is named without its port, as Istio
    // names the destination of passthrough traffic.
    let destination_service = match (&resolved, &parsed) {
        (Some((h, _)), _) => h.clone(),
        (None, Ok(a)) => Arc::from(a.host()),
        (None, Err(_)) => Arc::from("unknown"),
    };
    let mut log = RequestLog::start(
        super::source_labels(&mesh, destination_service),
        &req,
        authority,
        request_id,
        target.downstream,
    );
    log.in_flight = Some(held);
    let resp = match (parsed, resolved) {
        // The client's fault, not the upstream's: answered here, once.
        (Err(why), _) => {
            log.flag = Some(Flag::DownstreamProtocolError);
            Ok(bad_request(why, log.grpc))
        }
        (Ok(a), resolved) if req.method() == Method::CONNECT && target.fixed.is_none() => {
            // Boxed, as the rare path.
            Box::pin(super::tunnel::open(
                &px, &target, req, a, resolved, &mut log,
            ))
            .await
        }
        (Ok(upstream_authority), Some((host, port))) => {
            let (head, body) = req.into_parts();
            let call = Call {
                px: &px,
                mesh: &mesh,
                downstream: target.downstream,
                host: &host,
                port,
                arrived: head.uri.path_and_query().cloned(),
                upstream_authority,
                head,
                log: &mut log,
            };
            pipeline(call, body).await
        }
        (Ok(_), None) => Err(Flag::NoRouteFound),
    };
    let resp = resp.unwrap_or_else(|flag| {
        log.flag.get_or_insert(flag);
        local_reply(flag, log.grpc)
    });
    let tunnel = log.method == Method::CONNECT && resp.status().is_success();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS || tunnel {
        // No longer HTTP: no request timeouts on the connection.
        target.open.upgrade();
    }
    log.response_code = resp.status().as_u16();
    log.grpc_status = trellis_dataplane::telemetry::grpc_status(resp.headers());
    let telemetry = px.telemetry.clone();
    resp.map(|b| Observed::reporting(b, telemetry, log).boxed())
}

/// The steps, in order. A step that answers the request itself (a fault,
/// a redirect) ends the pipeline with its reply; one that fails ends it
/// with the response flag that says why.
async fn pipeline(mut call: Call<'_>, body: Incoming) -> Result<Response<Body>, Flag> {
    let route = call.match_route()?;
    if let Some(reply) = call.fault(route).await {
        return Ok(reply);
    }
    if let Some(reply) = call.redirect(route) {
        return Ok(reply);
    }
    let dest = call.split(route);
    call.rewrite(route, dest.via);
    let cluster = call.cluster(&dest)?;
    let _active = circuit_breaker(&cluster)?;
    if let Some(u) = upgrade::upgrade_of(call.head.version, &call.head.headers) {
        // Boxed, as the rare path: inline, its connect and handshake
        // state would enlarge every request's future.
        return Box::pin(call.upgrade(&cluster, body, u)).await;
    }
    // Who calls, for the peer's agent (removed before a workload without
    // one, and by the peer before its application, sees the request).
    if let Some(m) = call.mesh.peer_metadata() {
        call.head.headers.insert(PEER_METADATA, m.clone());
    }
    let counted = Observed::counting(body, call.log.request_bytes.clone());
    let body = ReqBody::new(counted).await?;
    if let Some(m) = route {
        call.mirror(m.route, &body);
    }
    let mut resp = call.retries(route, &cluster, body).await?;
    response_headers(&mut resp, route, dest.via);
    Ok(resp)
}

/// One request on its way out: what the steps read and change.
struct Call<'a> {
    px: &'a Arc<Proxy>,
    mesh: &'a Mesh,
    downstream: SocketAddr,
    /// The service and port the request is for.
    host: &'a str,
    port: u16,
    /// The request's head, as the steps rewrite it.
    head: Parts,
    /// The path and query as the request arrived: a handle on its bytes
    /// (no copy), kept while the head is rewritten.
    arrived: Option<http::uri::PathAndQuery>,
    /// The authority sent upstream: the request's, unless rewritten.
    upstream_authority: Authority,
    log: &'a mut RequestLog,
}

/// The route a request took, and the match block that took it (`None`:
/// the route has none and takes everything).
#[derive(Clone, Copy)]
struct Matched<'m> {
    route: &'m HttpRoute,
    by: Option<&'m HttpMatchRequest>,
}

/// Where a request goes: the cluster's host, port and subset, and the
/// weighted destination of the route that chose it, if one did.
struct Dest<'m> {
    host: Cow<'m, str>,
    port: u16,
    subset: &'m str,
    via: Option<&'m HttpRouteDestination>,
}

impl<'a> Call<'a> {
    /// The path and the query as the request arrived.
    fn path_and_query(&self) -> (&str, Option<&str>) {
        let pq = self.arrived.as_ref().map_or("/", |p| p.as_str());
        match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        }
    }

    /// Match: the first route of the service's VirtualService that takes
    /// the request (`None`: the service has no VirtualService). `NR` when
    /// it has one and no route takes the request.
    fn match_route(&self) -> Result<Option<Matched<'a>>, Flag> {
        let Some(routes) = self.mesh.http_routes(self.host) else {
            return Ok(None);
        };
        let (path, query) = self.path_and_query();
        let view = RequestView {
            method: self.head.method.as_str(),
            path,
            query,
            authority: &self.log.authority,
            scheme: self.head.uri.scheme_str().unwrap_or("http"),
            port: self.port,
            headers: &self.head.headers,
            source_labels: self.mesh.labels(),
            source_namespace: &self.mesh.me().namespace,
        };
        match route::first_match(routes, &view) {
            Some((_, route, by)) => Ok(Some(Matched { route, by })),
            None => Err(Flag::NoRouteFound),
        }
    }

    /// Fault: the route's delay, then its abort, each for its percentage
    /// of requests; the abort's reply.
    async fn fault(&mut self, route: Option<Matched<'_>>) -> Option<Response<Body>> {
        let fault = route?.route.fault.as_ref()?;
        if let Some(d) = &fault.delay {
            if roll(d.percentage.map(|p| p.value)) {
                tokio::time::sleep(d.fixed_delay.as_std()).await;
                self.log.flag = Some(Flag::DelayInjected);
            }
        }
        let a = fault.abort.as_ref()?;
        if !roll(a.percentage.map(|p| p.value)) {
            return None;
        }
        self.log.flag = Some(Flag::FaultInjected);
        Some(abort_reply(
            a.http_status,
            a.grpc_status.as_deref(),
            self.log.grpc,
        ))
    }

    /// Redirect: the route's redirect, or its direct response.
    fn redirect(&self, route: Option<Matched<'_>>) -> Option<Response<Body>> {
        let r = route?.route;
        if let Some(redirect) = &r.redirect {
            let scheme = self.head.uri.scheme_str().unwrap_or("http");
            let pq = self.arrived.as_ref().map_or("/", |p| p.as_str());
            let location = route::redirect_location(redirect, scheme, &self.log.authority, pq);
            let code = redirect.redirect_code.unwrap_or(301);
            return Some(local_response(code as u16, Some(location), Bytes::new()));
        }
        let dr = r.direct_response.as_ref()?;
        let body = dr
            .body
            .as_ref()
            .map(|b| Bytes::copy_from_slice(b.as_bytes()))
            .unwrap_or_default();
        Some(local_response(dr.status as u16, None, body))
    }

    /// Split: one of the route's destinations, by weight; without a
    /// route, the service the request is for.
    fn split(&self, route: Option<Matched<'a>>) -> Dest<'a> {
        let via = route.and_then(|m| route::pick_weighted(&m.route.route, fastrand::u32(..100)));
        match via {
            Some(d) => destination(self.mesh, d, self.host, self.port),
            None => Dest {
                host: Cow::Borrowed(self.host),
                port: self.port,
                subset: "",
                via: None,
            },
        }
    }

    /// Rewrite: the route's path and authority rewrites, then the route's
    /// and the destination's request header changes.
    fn rewrite(&mut self, route: Option<Matched<'_>>, via: Option<&HttpRouteDestination>) {
        if let Some(m) = route {
            if let Some(rw) = &m.route.rewrite {
                let (path, query) = self.path_and_query();
                if let Some(p) = route::rewrite_path(path, query, m.by, rw) {
                    set_path(&mut self.head, &p);
                }
                if let Some(a) = rw.authority.as_deref() {
                    match Authority::try_from(a) {
                        Ok(a) => self.upstream_authority = a,
                        Err(_) => tracing::debug!(
                            authority = a,
                            "rewrite to an invalid authority skipped"
                        ),
                    }
                }
            }
        }
        let headers = &mut self.head.headers;
        apply_ops(headers, route_ops(route, |h| h.request.as_ref()));
        apply_ops(headers, dest_ops(via, |h| h.request.as_ref()));
    }

    /// The cluster the request goes to, named in the log; `UH` when the
    /// mesh has none for the destination.
    fn cluster(&mut self, dest: &Dest<'_>) -> Result<Arc<Cluster>, Flag> {
        let Some(cluster) = self.mesh.cluster(&dest.host, dest.port, dest.subset) else {
            self.log.upstream_cluster =
                format!("outbound|{}|{}|{}", dest.port, dest.subset, dest.host).into();
            self.log.conn.destination_service = Arc::from(&*dest.host);
            return Err(Flag::NoHealthyUpstream);
        };
        self.log.upstream_cluster = cluster.name.clone();
        self.log.conn.destination_service = cluster.host.clone();
        Ok(cluster)
    }

    /// Mirror: a copy of the request to each of the route's mirrors, for
    /// its percentage of requests, fire and forget: the copy's `Host` gets
    /// `-shadow`, its response is dropped. Only requests whose body is in
    /// memory are mirrored.
    fn mirror(&self, r: &HttpRoute, body: &ReqBody) {
        let ReqBody::Buffered(bytes) = body else {
            return;
        };
        let mut targets: Vec<(&Destination, Option<f64>)> = Vec::new();
        if let Some(m) = &r.mirror {
            targets.push((m, r.mirror_percentage.map(|p| p.value)));
        }
        targets.extend(
            r.mirrors
                .iter()
                .map(|m| (&m.destination, m.percentage.map(|p| p.value))),
        );
        for (d, pct) in targets {
            if !roll(pct) {
                continue;
            }
            let host = self.mesh.canonical_host(&d.host);
            let port = d
                .port
                .map(|p| p.number as u16)
                .or_else(|| self.mesh.service(&host).and_then(|s| s.only_port()));
            let Some(cluster) = port.and_then(|p| {
                self.mesh
                    .cluster(&host, p, d.subset.as_deref().unwrap_or(""))
            }) else {
                continue;
            };
            let Ok(shadow) =
                Authority::try_from(shadow_authority(self.upstream_authority.as_str()))
            else {
                continue;
            };
            let req = Request::from_parts(self.head.clone(), body::full(bytes.clone()));
            forward::mirror(self.px, cluster, req, shadow);
        }
    }
}

/// Response headers: the destination's changes, then the route's.
fn response_headers(
    resp: &mut Response<Body>,
    route: Option<Matched<'_>>,
    via: Option<&HttpRouteDestination>,
) {
    strip_hop_by_hop(resp.headers_mut());
    apply_ops(resp.headers_mut(), dest_ops(via, |h| h.response.as_ref()));
    apply_ops(
        resp.headers_mut(),
        route_ops(route, |h| h.response.as_ref()),
    );
}

type Side = fn(&trellis_api::config::Headers) -> Option<&HeaderOperations>;

/// One side of the route's header changes.
fn route_ops<'m>(route: Option<Matched<'m>>, side: Side) -> Option<&'m HeaderOperations> {
    route?.route.headers.as_ref().and_then(side)
}

/// One side of the destination's header changes.
fn dest_ops(via: Option<&HttpRouteDestination>, side: Side) -> Option<&HeaderOperations> {
    via?.headers.as_ref().and_then(side)
}

/// Whether a fault or mirror configured at `pct` percent (100 when unset)
/// applies to this request.
fn roll(pct: Option<f64>) -> bool {
    fastrand::f64() * 100.0 < pct.unwrap_or(100.0)
}

/// A fault's abort: its HTTP status (503 if unset), or for a gRPC request
/// its gRPC status, else the HTTP one mapped as Envoy maps local replies.
fn abort_reply(http_status: Option<i32>, grpc_status: Option<&str>, grpc: bool) -> Response<Body> {
    const TEXT: &str = "fault filter abort";
    if let (true, Some(g)) = (grpc, grpc_status) {
        let code = trellis_api::config::GRPC_STATUS_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(g))
            .and_then(|i| u16::try_from(i).ok())
            .or_else(|| g.parse().ok())
            .unwrap_or(2);
        return grpc_reply(code, TEXT);
    }
    let status = http_status
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    reply(status, TEXT, grpc)
}

fn local_response(status: u16, location: Option<String>, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(http::header::LOCATION, l);
    }
    resp
}

/// The cluster a route destination names: its host, its port (given, or
/// the request's for the same host, or the host's only port) and subset.
fn destination<'m>(mesh: &Mesh, via: &'m HttpRouteDestination, host: &str, port: u16) -> Dest<'m> {
    let d = &via.destination;
    let dhost = mesh.canonical_host(&d.host);
    let dport = match d.port {
        Some(p) => p.number as u16,
        None if dhost == host => port,
        None => mesh
            .service(&dhost)
            .and_then(|s| s.only_port())
            .unwrap_or(port),
    };
    Dest {
        host: dhost.into(),
        port: dport,
        subset: d.subset.as_deref().unwrap_or(""),
        via: Some(via),
    }
}

fn set_path(parts: &mut Parts, path_and_query: &str) {
    let mut b = http::Uri::builder();
    if let Some(s) = parts.uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = parts.uri.authority() {
        b = b.authority(a.clone());
    }
    if let Ok(uri) = b.path_and_query(path_and_query).build() {
        parts.uri = uri;
    }
}

/// Istio's header operations: `set` replaces, `add` appends, `remove` drops.
fn apply_ops(h: &mut HeaderMap, ops: Option<&HeaderOperations>) {
    let Some(ops) = ops else { return };
    for (k, v) in &ops.set {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.append(k, v);
        }
    }
    for k in &ops.remove {
        h.remove(k.as_str());
    }
}

/// `reviews:9080` → `reviews-shadow:9080`, as Envoy names mirrored requests.
fn shadow_authority(a: &str) -> String {
    match a.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => format!("{h}-shadow:{p}"),
        _ => format!("{a}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_keeps_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
    }

    #[test]
    fn header_operations_set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("1"));
        let ops = HeaderOperations {
            set: [("x-a".to_string(), "2".to_string())].into(),
            add: [("x-a".to_string(), "3".to_string())].into(),
            remove: vec!["x-gone".into()],
        };
        apply_ops(&mut h, Some(&ops));
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["2", "3"]);
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn grpc_abort_sets_grpc_status() {
        let r = abort_reply(None, Some("UNAVAILABLE"), true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get("grpc-status").unwrap(), "14");
        let r = abort_reply(Some(418), None, false);
        assert_eq!(r.status(), 418);
        // An HTTP status only, for a gRPC request: mapped as Envoy maps it.
        let r = abort_reply(Some(503), None, true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "fault filter abort");
    }
}
