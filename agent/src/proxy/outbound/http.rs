//! One HTTP request from the application to a service, Istio's way:
//!
//! destination service → route (first match) → fault injection → redirect
//! or direct response → weighted destination → rewrite and header changes →
//! mirror → circuit breaker → tries (balance, forward over pooled mTLS
//! HTTP/2, retry by policy and budget, per-try and route timeouts) →
//! response header changes → observe.
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use trellis_api::config::{Destination, HeaderOperations, HttpRoute};

use trellis_dataplane::mesh::cluster::{Cluster, HashOn, LbPolicy, PlainHttp};
use trellis_dataplane::mesh::Mesh;
use trellis_dataplane::telemetry::labels::{ConnLabels, Reporter, Workload};
use trellis_dataplane::telemetry::{Flag, Observed, RequestLog};
use trellis_dataplane::tls::ALPN_HTTP1;

use super::ConnTarget;
use crate::proxy::body::{self, Body};
use crate::proxy::flags::local_reply;
use crate::proxy::headers::{authority, retarget, strip_hop_by_hop};
use crate::proxy::inbound::PEER_METADATA;
use crate::proxy::{connect, ensure_request_id, trace, upgrade, Proxy};
use crate::route::retry::{retry_limit, Outcome, RetryPolicy};
use crate::route::{self, RequestView};

/// Largest request body kept in memory so that the request can be retried
/// or mirrored; larger or unsized bodies are streamed and tried once.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Handles one request from the application.
pub async fn handle(
    px: Arc<Proxy>,
    target: Arc<ConnTarget>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let mesh = px.mesh.load();
    let authority: Arc<str> = Arc::from(authority(&req).unwrap_or_default());
    let request_id = ensure_request_id(req.headers_mut());
    trace::never_index_ids(req.headers_mut());
    let resolved = match &target.fixed {
        Some((h, p)) => Some((h.clone(), *p)),
        None => mesh.resolve(&authority),
    };
    let destination_service = resolved
        .as_ref()
        .map_or_else(|| authority.clone(), |(h, _)| h.clone());
    let mut log = RequestLog::start(
        source_labels(&px, destination_service),
        &req,
        authority,
        request_id,
        target.downstream,
    );
    let resp = match resolved {
        Some((host, port)) => route_request(&px, &mesh, &target, &host, port, req, &mut log).await,
        None => Err(Flag::NoRouteFound),
    };
    let resp = resp.unwrap_or_else(|flag| {
        log.flag.get_or_insert(flag);
        local_reply(flag)
    });
    log.response_code = resp.status().as_u16();
    log.grpc_status = trellis_dataplane::telemetry::grpc_status(resp.headers());
    let telemetry = px.telemetry.clone();
    resp.map(|b| Observed::reporting(b, telemetry, log).boxed())
}

/// The labels of a connection this agent makes as the source, before an
/// endpoint (and so the destination workload) is chosen.
pub fn source_labels(px: &Proxy, destination_service: Arc<str>) -> ConnLabels {
    ConnLabels {
        reporter: Reporter::Source,
        source: px.me.clone(),
        destination: Workload::none(),
        destination_service,
        mtls: false,
    }
}

async fn route_request(
    px: &Arc<Proxy>,
    mesh: &Mesh,
    target: &ConnTarget,
    host: &str,
    port: u16,
    req: Request<Incoming>,
    log: &mut RequestLog,
) -> Result<Response<Body>, Flag> {
    let (mut parts, incoming) = req.into_parts();
    // A handle on the request's own bytes (no copy), kept while the head
    // is rewritten.
    let path_and_query = parts.uri.path_and_query().cloned();
    let path_and_query = path_and_query.as_ref().map_or("/", |p| p.as_str());
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let chosen = match mesh.http_routes(host) {
        Some(routes) => {
            let view = RequestView {
                method: parts.method.as_str(),
                path,
                query,
                authority: &log.authority,
                scheme: parts.uri.scheme_str().unwrap_or("http"),
                port,
                headers: &parts.headers,
                source_labels: &px.labels,
                source_namespace: &px.me.namespace,
            };
            match route::first_match(routes, &view) {
                Some((_, r, m)) => Some((r, m)),
                None => return Err(Flag::NoRouteFound),
            }
        }
        None => None,
    };
    let route = chosen.map(|(r, _)| r);

    // Fault injection.
    if let Some(fault) = route.and_then(|r| r.fault.as_ref()) {
        if let Some(d) = &fault.delay {
            if roll(d.percentage.map(|p| p.value)) {
                tokio::time::sleep(d.fixed_delay.as_std()).await;
                log.flag = Some(Flag::DelayInjected);
            }
        }
        if let Some(a) = &fault.abort {
            if roll(a.percentage.map(|p| p.value)) {
                log.flag = Some(Flag::FaultInjected);
                return Ok(abort_reply(
                    a.http_status,
                    a.grpc_status.as_deref(),
                    log.grpc,
                ));
            }
        }
    }
    if let Some(r) = route {
        if let Some(redirect) = &r.redirect {
            let scheme = parts.uri.scheme_str().unwrap_or("http");
            let location =
                route::redirect_location(redirect, scheme, &log.authority, path_and_query);
            let code = redirect.redirect_code.unwrap_or(301);
            return Ok(local_response(code as u16, Some(location), Bytes::new()));
        }
        if let Some(dr) = &r.direct_response {
            let body = dr
                .body
                .as_ref()
                .map(|b| Bytes::copy_from_slice(b.as_bytes()))
                .unwrap_or_default();
            return Ok(local_response(dr.status as u16, None, body));
        }
    }

    // Destination.
    let dest = route.and_then(|r| route::pick_weighted(&r.route, fastrand::u32(..100)));
    let (dhost, dport, subset) = match dest {
        Some(d) => destination(mesh, &d.destination, host, port),
        None => (host.into(), port, ""),
    };
    let mut upstream_authority = log.authority.clone();
    if let Some(rw) = route.and_then(|r| r.rewrite.as_ref()) {
        if let Some(p) = route::rewrite_path(path, query, chosen.and_then(|(_, m)| m), rw) {
            set_path(&mut parts, &p);
        }
        if let Some(a) = &rw.authority {
            upstream_authority = Arc::from(a.as_str());
        }
    }
    apply_ops(
        &mut parts.headers,
        route
            .and_then(|r| r.headers.as_ref())
            .and_then(|h| h.request.as_ref()),
    );
    apply_ops(
        &mut parts.headers,
        dest.and_then(|d| d.headers.as_ref())
            .and_then(|h| h.request.as_ref()),
    );

    let Some(cluster) = mesh.cluster(&dhost, dport, subset) else {
        log.upstream_cluster = format!("outbound|{dport}|{subset}|{dhost}").into();
        log.conn.destination_service = Arc::from(&*dhost);
        return Err(Flag::NoHealthyUpstream);
    };
    log.upstream_cluster = cluster.name.clone();
    log.conn.destination_service = cluster.host.clone();
    if cluster.state.active.load(Ordering::Relaxed) >= cluster.limits.max_active {
        return Err(Flag::UpstreamOverflow);
    }
    let _active = Gauge::inc(&cluster.state.active);

    let hash = request_hash(&cluster.lb, &parts.headers, query, target.downstream);
    if let Some(u) = upgrade::upgrade_of(parts.version, &parts.headers) {
        let mut req = Request::from_parts(parts, incoming);
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, incoming) = req.into_parts();
        let req = Request::from_parts(parts, body::incoming(incoming));
        // Boxed, as the rare path: inline, its connect and handshake
        // state would enlarge every request's future.
        return Box::pin(upgrade_request(
            px,
            &cluster,
            hash,
            req,
            &upstream_authority,
            u,
            on_upgrade,
            log,
        ))
        .await;
    }

    let counted = Observed::counting(incoming, log.request_bytes.clone());
    let mut body = ReqBody::new(counted).await?;

    if let Some(r) = route {
        mirror(px, mesh, r, &parts, &body, &upstream_authority);
    }

    let configured;
    let policy = match route.and_then(|r| r.retries.as_ref()) {
        Some(r) => {
            configured = RetryPolicy::from_config(Some(r));
            &configured
        }
        None => RetryPolicy::istio_default(),
    };
    let timeout = route
        .and_then(|r| r.timeout)
        .map(|t| t.as_std())
        .filter(|t| !t.is_zero());
    // One `timeout` (no limit: Duration::MAX, which tokio leaves without a
    // timer), awaited in place: a `match` awaiting the future in one arm
    // and its `timeout` in the other, or a local future moved into either,
    // keeps a slot for each in this future (it was 16.5 KB so).
    let mut resp = tokio::time::timeout(
        timeout.unwrap_or(Duration::MAX),
        tries(
            px,
            &cluster,
            policy,
            parts,
            &mut body,
            &upstream_authority,
            hash,
            log,
        ),
    )
    .await
    .unwrap_or(Err(Flag::UpstreamTimeout))?;
    strip_hop_by_hop(resp.headers_mut());
    apply_ops(
        resp.headers_mut(),
        dest.and_then(|d| d.headers.as_ref())
            .and_then(|h| h.response.as_ref()),
    );
    apply_ops(
        resp.headers_mut(),
        route
            .and_then(|r| r.headers.as_ref())
            .and_then(|h| h.response.as_ref()),
    );
    Ok(resp)
}

/// Whether a fault or mirror configured at `pct` percent (100 when unset)
/// applies to this request.
fn roll(pct: Option<f64>) -> bool {
    fastrand::f64() * 100.0 < pct.unwrap_or(100.0)
}

fn abort_reply(http_status: Option<i32>, grpc_status: Option<&str>, grpc: bool) -> Response<Body> {
    if let (true, Some(g)) = (grpc, grpc_status) {
        let code = trellis_api::config::GRPC_STATUS_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(g))
            .map_or_else(|| g.to_string(), |i| i.to_string());
        let mut resp = local_response(200, None, Bytes::new());
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        if let Ok(v) = HeaderValue::from_str(&code) {
            resp.headers_mut().insert("grpc-status", v);
        }
        return resp;
    }
    let status = http_status
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(503);
    local_response(status, None, Bytes::from_static(b"fault filter abort"))
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
fn destination<'a>(
    mesh: &Mesh,
    d: &'a Destination,
    host: &str,
    port: u16,
) -> (Cow<'a, str>, u16, &'a str) {
    let dhost = mesh.canonical_host(&d.host);
    let dport = match d.port {
        Some(p) => p.number as u16,
        None if dhost == host => port,
        None => mesh
            .service(&dhost)
            .and_then(|s| s.only_port())
            .unwrap_or(port),
    };
    (dhost.into(), dport, d.subset.as_deref().unwrap_or(""))
}

fn set_path(parts: &mut http::request::Parts, path_and_query: &str) {
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

/// The request's hash for consistent-hash balancing, if the cluster uses it.
fn request_hash(
    lb: &LbPolicy,
    h: &HeaderMap,
    query: Option<&str>,
    downstream: SocketAddr,
) -> Option<u64> {
    let LbPolicy::RingHash(on) = lb else {
        return None;
    };
    let key: Option<String> = match on {
        HashOn::Header(name) => h
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        HashOn::Cookie(name) => h
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string()),
        HashOn::SourceIp => Some(downstream.ip().to_string()),
        HashOn::QueryParameter(name) => query.and_then(|q| {
            q.split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_string())
        }),
    };
    key.map(|k| trellis_dataplane::mesh::cluster::fnv1a(k.as_bytes()))
}

/// A request body that can be sent again (for retries and mirrors) when it
/// is small enough to keep.
enum ReqBody {
    Buffered(Bytes),
    Stream(Option<Body>),
}

impl ReqBody {
    async fn new(b: Observed<Incoming>) -> Result<Self, Flag> {
        let hint = b.size_hint();
        if b.is_end_stream() {
            return Ok(ReqBody::Buffered(Bytes::new()));
        }
        if hint.exact().is_some_and(|n| n <= MAX_BUFFERED_BODY) {
            let bytes = b
                .collect()
                .await
                .map_err(|_| Flag::DownstreamConnectionTermination)?
                .to_bytes();
            return Ok(ReqBody::Buffered(bytes));
        }
        Ok(ReqBody::Stream(Some(
            b.map_err(body::BoxError::from).boxed(),
        )))
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }

    fn take(&mut self) -> Body {
        match self {
            ReqBody::Buffered(b) if b.is_empty() => body::empty(),
            ReqBody::Buffered(b) => body::full(b.clone()),
            ReqBody::Stream(s) => s.take().unwrap_or_else(body::empty),
        }
    }
}

/// Counts one in-flight request or retry for as long as it lives.
struct Gauge<'a>(&'a std::sync::atomic::AtomicU32);

impl<'a> Gauge<'a> {
    fn inc(g: &'a std::sync::atomic::AtomicU32) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Gauge(g)
    }

    /// Counts one more if that keeps the count below `limit` (checked and
    /// counted at once, so that concurrent callers cannot both pass).
    fn inc_below(g: &'a std::sync::atomic::AtomicU32, limit: u32) -> Option<Self> {
        g.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Gauge(g))
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)] // the steps of one request, kept in one place
async fn tries(
    px: &Proxy,
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    parts: http::request::Parts,
    body: &mut ReqBody,
    authority: &str,
    hash: Option<u64>,
    log: &mut RequestLog,
) -> Result<Response<Body>, Flag> {
    let mut exclude = None;
    let mut last: Option<Result<Response<Body>, Outcome>> = None;
    // The request head, copied for each try that may be followed by
    // another, moved into the one that cannot be.
    let mut parts = Some(parts);
    for n in 0..=policy.attempts {
        // A retry is outstanding from its backoff to its answer; past the
        // cluster's limit the last answer stands (Envoy's retry overflow).
        let _retry = if n > 0 {
            let state = &cluster.state;
            let limit = retry_limit(
                state.active.load(Ordering::Relaxed),
                cluster.limits.max_retries,
            );
            let Some(retry) = Gauge::inc_below(&state.active_retries, limit) else {
                tracing::debug!(cluster = %log.upstream_cluster, limit, "retry overflow");
                break;
            };
            tokio::time::sleep(policy.backoff(n, fastrand::f64())).await;
            Some(retry)
        } else {
            None
        };
        let Some(i) = cluster.pick(Instant::now(), hash, exclude) else {
            if last.is_none() {
                return Err(Flag::NoHealthyUpstream);
            }
            break;
        };
        let ep = &cluster.endpoints[i];
        log.upstream = Some(ep.addr);
        log.conn.destination = ep.workload.clone();
        log.conn.mtls = ep.identity.is_some();
        let head = if n == policy.attempts || !body.replayable() {
            parts.take()
        } else {
            parts.clone()
        };
        let Some(head) = head else { break };
        let req = Request::from_parts(head, body.take());
        let sent = {
            let _active = Gauge::inc(&ep.state.active);
            // As the route timeout above: one `timeout`, awaited in place.
            tokio::time::timeout(
                policy.per_try_timeout.unwrap_or(Duration::MAX),
                send_one(px, cluster, i, req, authority),
            )
            .await
            .unwrap_or(Err(Outcome::Timeout))
        };
        let outcome = match &sent {
            Ok(r) => Outcome::Status(
                r.status().as_u16(),
                trellis_dataplane::telemetry::grpc_status(r.headers()),
            ),
            Err(o) => *o,
        };
        cluster.record(
            i,
            match outcome {
                Outcome::Status(s, _) => s,
                Outcome::ConnectFailure | Outcome::Reset => 0,
                Outcome::Timeout => 504,
            },
            Instant::now(),
        );
        let again = n < policy.attempts && body.replayable() && policy.retriable(outcome);
        last = Some(sent);
        if !again {
            break;
        }
        exclude = Some(i);
    }
    let retried = policy.attempts > 0;
    match last {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(Outcome::ConnectFailure)) => Err(Flag::UpstreamConnectFailure),
        Some(Err(Outcome::Timeout)) => Err(Flag::UpstreamTimeout),
        Some(Err(Outcome::Reset)) if retried => Err(Flag::UpstreamRetryLimitExceeded),
        Some(Err(_)) => Err(Flag::UpstreamConnectionTermination),
        None => Err(Flag::UpstreamRetryLimitExceeded),
    }
}

/// One try on endpoint `i`: mTLS HTTP/2 to its agent, or plaintext to a
/// workload without one.
async fn send_one(
    px: &Proxy,
    cluster: &Cluster,
    i: usize,
    mut req: Request<Body>,
    authority: &str,
) -> Result<Response<Body>, Outcome> {
    let ep = &cluster.endpoints[i];
    let limits = &cluster.limits;
    match &ep.peer {
        Some(key) => {
            retarget(&mut req, Version::HTTP_2, authority);
            req.headers_mut()
                .insert(PEER_METADATA, px.peer_metadata.clone());
            let opts = limits.connect_opts(&px.opts);
            let sent = px.pool.send(key, &opts, &limits.reuse, req).await;
            sent.map_err(|e| {
                tracing::debug!(endpoint = %ep.addr, error = %e, "request to peer failed");
                if e.before_sent() {
                    Outcome::ConnectFailure
                } else {
                    Outcome::Reset
                }
            })
        }
        None => {
            let h2 = match limits.plain_http {
                PlainHttp::Http1 => false,
                PlainHttp::Http2 => true,
                PlainHttp::Client => req.version() == Version::HTTP_2,
            };
            retarget(
                &mut req,
                if h2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                },
                authority,
            );
            let sent = px.app.send_to_endpoint(ep.addr, h2, limits, req).await;
            sent.map_err(|f| match f {
                Flag::UpstreamConnectFailure => Outcome::ConnectFailure,
                _ => Outcome::Reset,
            })
        }
    }
}

#[allow(clippy::too_many_arguments)] // the steps of one request, kept in one place
async fn upgrade_request(
    px: &Proxy,
    cluster: &Cluster,
    hash: Option<u64>,
    req: Request<Body>,
    authority: &str,
    u: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    log: &mut RequestLog,
) -> Result<Response<Body>, Flag> {
    let i = cluster
        .pick(Instant::now(), hash, None)
        .ok_or(Flag::NoHealthyUpstream)?;
    let ep = &cluster.endpoints[i];
    log.upstream = Some(ep.addr);
    log.conn.destination = ep.workload.clone();
    log.conn.mtls = ep.identity.is_some();
    let mut req = req;
    retarget(&mut req, Version::HTTP_11, authority);
    let opts = cluster.limits.connect_opts(&px.opts);
    match &ep.peer {
        Some(peer) => {
            req.headers_mut()
                .insert(PEER_METADATA, px.peer_metadata.clone());
            let io = px
                .tls
                .connect(peer.addr, &peer.sni, &peer.identity, ALPN_HTTP1, &opts)
                .await
                .map_err(|_| Flag::UpstreamConnectFailure)?;
            upgrade::send_on(io, peer.addr, req, u, on_upgrade).await
        }
        None => {
            let io = connect::tcp(ep.addr, &opts)
                .await
                .map_err(|_| Flag::UpstreamConnectFailure)?;
            upgrade::send_on(io, ep.addr, req, u, on_upgrade).await
        }
    }
}

/// Sends a copy of the request to the route's mirror(s), fire and forget:
/// the copy's `Host` gets `-shadow`, its response is dropped. Only requests
/// whose body is in memory are mirrored.
fn mirror(
    px: &Arc<Proxy>,
    mesh: &Mesh,
    r: &HttpRoute,
    parts: &http::request::Parts,
    body: &ReqBody,
    authority: &str,
) {
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
        let host = mesh.canonical_host(&d.host);
        let port = d
            .port
            .map(|p| p.number as u16)
            .or_else(|| mesh.service(&host).and_then(|s| s.only_port()));
        let Some(cluster) =
            port.and_then(|p| mesh.cluster(&host, p, d.subset.as_deref().unwrap_or("")))
        else {
            continue;
        };
        let shadow = shadow_authority(authority);
        let req = Request::from_parts(parts.clone(), body::full(bytes.clone()));
        let px = px.clone();
        tokio::spawn(async move {
            if let Some(i) = cluster.pick(Instant::now(), None, None) {
                let _ = send_one(&px, &cluster, i, req, &shadow).await;
            }
        });
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
    fn consistent_hash_keys() {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("a=1; user=bob"));
        h.insert("x-user", HeaderValue::from_static("bob"));
        let ds: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let cookie = request_hash(
            &LbPolicy::RingHash(HashOn::Cookie("user".into())),
            &h,
            None,
            ds,
        );
        let header = request_hash(
            &LbPolicy::RingHash(HashOn::Header("x-user".into())),
            &h,
            None,
            ds,
        );
        assert_eq!(cookie, header, "both hash `bob`");
        assert_eq!(request_hash(&LbPolicy::RoundRobin, &h, None, ds), None);
        let q = request_hash(
            &LbPolicy::RingHash(HashOn::QueryParameter("u".into())),
            &h,
            Some("x=1&u=bob"),
            ds,
        );
        assert_eq!(q, cookie);
    }

    #[test]
    fn grpc_abort_sets_grpc_status() {
        let r = abort_reply(None, Some("UNAVAILABLE"), true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers().get("grpc-status").unwrap(), "14");
        let r = abort_reply(Some(418), None, false);
        assert_eq!(r.status(), 418);
    }
}
