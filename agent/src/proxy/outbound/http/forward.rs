//! The last steps of an outbound request, where it leaves the agent:
//! the circuit breaker, then retries and timeouts around each try, which
//! balances to an endpoint and connects (pooled mTLS HTTP/2 to its agent,
//! or plaintext to a workload without one); upgrades and mirrored copies
//! take a connection of their own.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use trellis_dataplane::mesh::cluster::{Cluster, HashOn, LbPolicy, PlainHttp};
use trellis_dataplane::telemetry::{Flag, Observed};
use trellis_dataplane::tls::ALPN_HTTP1;

use super::{Call, Matched};
use crate::proxy::body::{self, Body};
use crate::proxy::failure::{DownstreamBody, Failure};
use crate::proxy::headers::retarget;
use crate::proxy::inbound::PEER_METADATA;
use crate::proxy::{connect, upgrade, Proxy};
use crate::route::retry::{retry_limit, Outcome, RetryPolicy};

/// Largest request body kept in memory so that the request can be retried
/// or mirrored; larger or unsized bodies are streamed and tried once.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// Circuit breaker: counts the request in flight to `cluster` for as long
/// as the guard lives; `UO` when the cluster's `maxActive` (Envoy's
/// `max_requests`) are in flight already.
pub(super) fn circuit_breaker(cluster: &Cluster) -> Result<Gauge<'_>, Flag> {
    Gauge::inc_below(&cluster.state.active, cluster.limits.max_active).ok_or(Flag::UpstreamOverflow)
}

/// What the last steps take from a [`Call`]: the head to send, where it
/// goes, the request's log, and the hash that picks its endpoint.
struct Leaving<'a> {
    px: &'a Arc<Proxy>,
    mesh: &'a trellis_dataplane::mesh::Mesh,
    head: http::request::Parts,
    upstream_authority: http::uri::Authority,
    log: &'a mut trellis_dataplane::telemetry::RequestLog,
    hash: Option<u64>,
}

impl<'a> Call<'a> {
    /// The call, leaving for `cluster`.
    fn leave(self, cluster: &Cluster) -> Leaving<'a> {
        let hash = request_hash(
            &cluster.lb,
            &self.head.headers,
            self.path_and_query().1,
            self.downstream,
        );
        Leaving {
            px: self.px,
            mesh: self.mesh,
            head: self.head,
            upstream_authority: self.upstream_authority,
            log: self.log,
            hash,
        }
    }

    /// Retries and timeouts: the tries, within the route's timeout, by the
    /// route's retry policy (Istio's default without one).
    pub(super) async fn retries(
        self,
        route: Option<Matched<'_>>,
        cluster: &Arc<Cluster>,
        body: ReqBody,
    ) -> Result<Response<Body>, Flag> {
        let route = route.map(|m| m.route);
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
        // One `timeout` (no limit: Duration::MAX, which tokio leaves
        // without a timer), awaited in place: a `match` awaiting the future
        // in one arm and its `timeout` in the other, or a local future
        // moved into either, keeps a slot for each in this future (it was
        // 16.5 KB so).
        tokio::time::timeout(
            timeout.unwrap_or(Duration::MAX),
            self.tries(cluster, policy, body),
        )
        .await
        .unwrap_or(Err(Flag::UpstreamTimeout))
    }

    /// Each try picks an endpoint (another than the last try's) and sends
    /// the request there, until one answers in a way the policy does not
    /// retry, the tries or the retry budget are spent, or the body cannot
    /// be sent again.
    async fn tries(
        self,
        cluster: &Arc<Cluster>,
        policy: &RetryPolicy,
        mut body: ReqBody,
    ) -> Result<Response<Body>, Flag> {
        let Leaving {
            px,
            head,
            upstream_authority,
            log,
            hash,
            ..
        } = self.leave(cluster);
        let mut exclude = None;
        // The last try's answer, and whether it was a retry.
        let mut last: Option<(Result<Response<Body>, Outcome>, bool)> = None;
        // The request head, copied for each try that may be followed by
        // another, moved into the one that cannot be.
        let mut head = Some(head);
        for n in 0..=policy.attempts {
            // A retry is outstanding from its backoff to its answer; past
            // the cluster's limit the last answer stands (Envoy's retry
            // overflow).
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
            let this = if n == policy.attempts || !body.replayable() {
                head.take()
            } else {
                head.clone()
            };
            let Some(this) = this else { break };
            let req = Request::from_parts(this, body.take());
            let sent = {
                let _active = Gauge::inc(&ep.state.active);
                // As the route timeout: one `timeout`, awaited in place.
                tokio::time::timeout(
                    policy.per_try_timeout.unwrap_or(Duration::MAX),
                    send(px, cluster, i, req, &upstream_authority),
                )
                .await
                .unwrap_or(Err(Tried::Timeout))
            };
            let outcome = match &sent {
                Ok(r) => Outcome::Status(
                    r.status().as_u16(),
                    trellis_dataplane::telemetry::grpc_status(r.headers()),
                ),
                Err(Tried::Timeout) => Outcome::Timeout,
                Err(Tried::Failed(f)) => match f {
                    Failure::Connect => Outcome::ConnectFailure,
                    Failure::Refused => Outcome::Refused,
                    Failure::Reset => Outcome::Reset,
                    // The client's fault: nothing to hold against the
                    // endpoint, and no reason to try again.
                    Failure::DownstreamProtocol | Failure::DownstreamGone => return Err(f.flag()),
                    // A response that could not be parsed: a gateway
                    // error for outlier detection, never tried again.
                    Failure::UpstreamProtocol => {
                        cluster.record(i, 502, Instant::now());
                        return Err(f.flag());
                    }
                },
            };
            cluster.record(
                i,
                match outcome {
                    Outcome::Status(s, _) => s,
                    Outcome::ConnectFailure | Outcome::Refused | Outcome::Reset => 0,
                    Outcome::Timeout => 504,
                },
                Instant::now(),
            );
            let again = n < policy.attempts && body.replayable() && policy.retriable(outcome);
            last = Some((sent.map_err(|_| outcome), n > 0));
            if !again {
                break;
            }
            exclude = Some(i);
        }
        match last {
            Some((Ok(resp), _)) => Ok(resp),
            Some((Err(Outcome::ConnectFailure), _)) => Err(Flag::UpstreamConnectFailure),
            Some((Err(Outcome::Timeout), _)) => Err(Flag::UpstreamTimeout),
            // URX only when a retry was made: a single try that was reset
            // is a plain UC.
            Some((Err(_), true)) => Err(Flag::UpstreamRetryLimitExceeded),
            Some((Err(_), false)) => Err(Flag::UpstreamConnectionTermination),
            None => Err(Flag::UpstreamRetryLimitExceeded),
        }
    }

    /// An upgrade (WebSocket and others): one try, on a connection of its
    /// own (HTTP/1.1, ALPN `http/1.1` to the endpoint's agent), whose bytes
    /// are spliced to the client's once both sides have switched.
    pub(super) async fn upgrade(
        self,
        cluster: &Cluster,
        body: Incoming,
        u: HeaderValue,
    ) -> Result<Response<Body>, Flag> {
        let Leaving {
            px,
            mesh,
            head,
            upstream_authority,
            log,
            hash,
        } = self.leave(cluster);
        let mut req = Request::from_parts(head, body);
        let on_upgrade = hyper::upgrade::on(&mut req);
        let mut req = req.map(body::incoming);
        let i = cluster
            .pick(Instant::now(), hash, None)
            .ok_or(Flag::NoHealthyUpstream)?;
        let ep = &cluster.endpoints[i];
        log.upstream = Some(ep.addr);
        log.conn.destination = ep.workload.clone();
        log.conn.mtls = ep.identity.is_some();
        retarget(&mut req, Version::HTTP_11, &upstream_authority);
        let opts = cluster.limits.connect_opts(&px.opts);
        let max_response_headers = px.app.max_response_headers();
        match &ep.peer {
            Some(peer) => {
                if let Some(m) = mesh.peer_metadata() {
                    req.headers_mut().insert(PEER_METADATA, m.clone());
                }
                let io = px
                    .tls
                    .connect(peer.addr, &peer.sni, &peer.identity, ALPN_HTTP1, &opts)
                    .await
                    .map_err(|_| Flag::UpstreamConnectFailure)?;
                let hop = upgrade::Hop {
                    io,
                    addr: peer.addr,
                    max_response_headers: max_response_headers
                        .saturating_add(crate::proxy::PEER_HEADER_ALLOWANCE),
                };
                upgrade::send_on(hop, req, u, on_upgrade).await
            }
            None => {
                // The agents' own header: no agent here to take it off.
                req.headers_mut().remove(PEER_METADATA);
                let io = connect::tcp(ep.addr, &opts)
                    .await
                    .map_err(|_| Flag::UpstreamConnectFailure)?;
                let hop = upgrade::Hop {
                    io,
                    addr: ep.addr,
                    max_response_headers,
                };
                upgrade::send_on(hop, req, u, on_upgrade).await
            }
        }
    }
}

/// Sends `req` to an endpoint of `cluster` as `authority`, in a task of
/// its own, its answer dropped.
pub(super) fn mirror(
    px: &Arc<Proxy>,
    cluster: Arc<Cluster>,
    req: Request<Body>,
    authority: Authority,
) {
    let px = px.clone();
    tokio::spawn(async move {
        if let Some(i) = cluster.pick(Instant::now(), None, None) {
            let _ = send(&px, &cluster, i, req, &authority).await;
        }
    });
}

/// How one try went wrong.
enum Tried {
    Failed(Failure),
    /// The per-try timeout passed first.
    Timeout,
}

/// Connect: one try on endpoint `i`, mTLS HTTP/2 to its agent, or
/// plaintext to a workload without one.
async fn send(
    px: &Proxy,
    cluster: &Cluster,
    i: usize,
    mut req: Request<Body>,
    authority: &Authority,
) -> Result<Response<Body>, Tried> {
    let ep = &cluster.endpoints[i];
    let limits = &cluster.limits;
    match &ep.peer {
        Some(key) => {
            retarget(&mut req, Version::HTTP_2, authority);
            let opts = limits.connect_opts(&px.opts);
            let sent = px.pool.send(key, &opts, &limits.reuse, req).await;
            sent.map_err(|e| {
                tracing::debug!(endpoint = %ep.addr, error = %e, "request to peer failed");
                Tried::Failed(e.failure())
            })
        }
        None => {
            // The agents' own header: no agent here to take it off.
            req.headers_mut().remove(PEER_METADATA);
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
            sent.map_err(Tried::Failed)
        }
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
pub(super) enum ReqBody {
    Buffered(Bytes),
    Stream(Option<Body>),
}

impl ReqBody {
    pub(super) async fn new(b: Observed<Incoming>) -> Result<Self, Flag> {
        let hint = b.size_hint();
        if b.is_end_stream() {
            return Ok(ReqBody::Buffered(Bytes::new()));
        }
        if hint.exact().is_some_and(|n| n <= MAX_BUFFERED_BODY) {
            let bytes = b
                .collect()
                .await
                .map_err(|e| DownstreamBody(e).failure().flag())?
                .to_bytes();
            return Ok(ReqBody::Buffered(bytes));
        }
        Ok(ReqBody::Stream(Some(
            b.map_err(|e| body::BoxError::from(DownstreamBody(e)))
                .boxed(),
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
pub(super) struct Gauge<'a>(&'a std::sync::atomic::AtomicU32);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
