//! Plaintext HTTP clients: to the agent's own application on 127.0.0.1, and
//! to endpoints outside the mesh (no agent in front of them). Pooled
//! HTTP/1.1 for plain HTTP ports ([`Http1Pool`]), HTTP/2 (h2c) for gRPC
//! and `http2` ports (the [`Pool`] the connections to peer agents use).
//! Connections are opened as the agent's others are
//! ([`trellis_transport::connect::tcp`]):
//! with the capture mark, so that iptables does not send them back to the
//! agent, and the agent's connect timeout or a cluster's own. To endpoints,
//! a connection is reused as the cluster's [`Reuse`] allows: retired after
//! `maxRequestsPerConnection` requests, closed idle after `idleTimeout`.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::uri::Authority;
use http::{header, Request, Response, Version};

use super::body::Body;
use super::failure::Failure;
use super::h1_pool::Http1Pool;
use super::headers::http_uri;
use super::pool::{ConnSettings, Plain, PlainKey, Pool};
use trellis_dataplane::mesh::cluster::Limits;
use trellis_dataplane::mesh::cluster::Reuse;
use trellis_transport::connect::ConnectOpts;

/// Clients for the local application and plaintext endpoints.
pub struct AppClient {
    host: IpAddr,
    /// The agent's connect options (`--connect-timeout`, the mark), for
    /// the local application and clusters without their own.
    opts: ConnectOpts,
    /// HTTP/1.1 connections, to the application and to endpoints, by
    /// address and the cluster's connect timeout, keepalive and idle
    /// timeout (each combination in use has connections of its own).
    http1: Http1Pool,
    /// h2c connections, keyed the same way.
    h2c: Pool<Plain>,
    max_response_headers: u32,
}

/// How long a connection to the local application may stay idle in the pool.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl AppClient {
    /// The application listens on `host` (usually 127.0.0.1); connections
    /// are opened with `opts` unless a cluster has its own timeout, and
    /// take response heads of up to `max_response_headers` bytes.
    pub fn new(host: IpAddr, opts: ConnectOpts, max_response_headers: u32) -> Self {
        Self {
            host,
            opts,
            http1: Http1Pool::new(max_response_headers),
            h2c: Pool::new(Plain, max_response_headers),
            max_response_headers,
        }
    }

    /// The largest response head taken from the application and from
    /// endpoints without an agent, in bytes.
    pub fn max_response_headers(&self) -> u32 {
        self.max_response_headers
    }

    /// The application's address for `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }

    /// Sends `req` to the local application at `addr`, over HTTP/2 if
    /// `h2`. The request keeps its `Host` (HTTP/1.1) or authority
    /// (HTTP/2); the connection goes to `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        h2: bool,
        req: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        let unlimited = Reuse {
            max_requests: None,
            idle_timeout: Some(APP_IDLE_TIMEOUT),
            max_streams: None,
        };
        self.plain(addr, h2, &self.opts, &unlimited, req).await
    }

    /// [`AppClient::send`] to an endpoint without an agent, of a cluster
    /// with these limits: a new connection gives up after its connect
    /// timeout (`None`: the agent-wide one) and has its keepalive, and
    /// connections are reused as its `reuse` allows.
    pub async fn send_to_endpoint(
        &self,
        addr: SocketAddr,
        h2: bool,
        limits: &Limits,
        req: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        let opts = limits.connect_opts(&self.opts);
        self.plain(addr, h2, &opts, &limits.reuse, req).await
    }

    /// Sends `req` to `addr` over HTTP/2 (h2c) if `h2`, else HTTP/1.1, on
    /// a connection opened with `opts` and reused as `reuse` allows.
    async fn plain(
        &self,
        addr: SocketAddr,
        h2: bool,
        opts: &ConnectOpts,
        reuse: &Reuse,
        req: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        let key = PlainKey {
            addr,
            settings: ConnSettings::new(opts, reuse.idle_timeout),
        };
        if h2 {
            self.h2c(&key, opts, reuse, req).await
        } else {
            self.http1.send(&key, opts, reuse, req).await
        }
    }

    async fn h2c(
        &self,
        key: &PlainKey,
        opts: &ConnectOpts,
        reuse: &Reuse,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        let addr = key.addr;
        // The authority the request is for (HTTP/2 has no `Host`), else
        // the address; only the connection goes to `addr`.
        let host = req.headers_mut().remove(header::HOST);
        // Parsed as an authority alone: a `Host` such as `a/b` must not
        // reach the path.
        let authority = req.uri().authority().cloned().or_else(|| {
            host.as_ref()
                .and_then(|h| h.to_str().ok()?.parse::<Authority>().ok())
        });
        let authority = match authority {
            Some(a) => a,
            None => {
                Authority::try_from(addr.to_string()).map_err(|_| Failure::DownstreamProtocol)?
            }
        };
        *req.uri_mut() = http_uri(authority, req.uri()).ok_or(Failure::DownstreamProtocol)?;
        *req.version_mut() = Version::HTTP_2;
        self.h2c.send(key, opts, reuse, req).await.map_err(|e| {
            tracing::debug!(%addr, error = %e, "request to the application failed");
            e.failure()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use hyper_util::rt::TokioIo;

    use super::*;

    const LIMIT: u32 = crate::proxy::DEFAULT_MAX_HEADERS_KB * 1024;

    #[tokio::test]
    async fn a_plaintext_connect_gives_up_after_the_clusters_timeout() {
        let (_listener, _queued, addr) = trellis_transport::testing::unanswered();
        let agent = ConnectOpts {
            timeout: Duration::from_secs(30),
            mark: None,
            keepalive: None,
        };
        let app = AppClient::new(IpAddr::from([127, 0, 0, 1]), agent, LIMIT);
        let req = Request::get("/").body(crate::proxy::body::empty()).unwrap();
        let t = Instant::now();
        let r = app
            .send_to_endpoint(
                addr,
                false,
                &Limits {
                    connect_timeout: Some(Duration::from_millis(100)),
                    ..Limits::default()
                },
                req,
            )
            .await;
        assert_eq!(r.err(), Some(Failure::Connect));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    use http_body_util::BodyExt;

    use trellis_testing::eventually;
    use trellis_transport::testing::{counting_server, Counting};

    /// An HTTP/1.1 server on loopback answering `200` with no body.
    async fn http1_server() -> Counting {
        counting_server(|s| async move {
            let svc = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(Response::new(crate::proxy::body::empty()))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        })
        .await
    }

    fn app() -> AppClient {
        let opts = ConnectOpts {
            timeout: Duration::from_secs(5),
            mark: None,
            keepalive: None,
        };
        AppClient::new(IpAddr::from([127, 0, 0, 1]), opts, LIMIT)
    }

    /// `n` requests one after the other, each read to its end.
    async fn requests(app: &AppClient, addr: SocketAddr, reuse: &Reuse, n: usize) {
        let limits = Limits {
            reuse: reuse.clone(),
            ..Limits::default()
        };
        for _ in 0..n {
            let req = Request::get("/").body(crate::proxy::body::empty()).unwrap();
            let resp = app
                .send_to_endpoint(addr, false, &limits, req)
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_plaintext_connection_carries_at_most_max_requests() {
        let (limited, unlimited) = (http1_server().await, http1_server().await);
        let app = app();
        let two = Reuse {
            max_requests: std::num::NonZeroU32::new(2),
            idle_timeout: None,
            max_streams: None,
        };
        requests(&app, limited.addr, &two, 5).await;
        assert_eq!(limited.accepted.load(Ordering::SeqCst), 3, "2 + 2 + 1");
        // The retired ones are closed, not left open.
        eventually("retired connections closed", || {
            limited.open.load(Ordering::SeqCst) == 1
        })
        .await;
        requests(&app, unlimited.addr, &Reuse::default(), 5).await;
        assert_eq!(
            unlimited.accepted.load(Ordering::SeqCst),
            1,
            "unset: one connection"
        );
    }

    #[tokio::test]
    async fn an_idle_plaintext_connection_is_closed_after_the_idle_timeout() {
        let (idle, kept) = (http1_server().await, http1_server().await);
        let app = app();
        let short = Reuse {
            max_requests: None,
            idle_timeout: Some(Duration::from_millis(200)),
            max_streams: None,
        };
        let never = Reuse {
            max_requests: None,
            idle_timeout: None,
            max_streams: None,
        };
        requests(&app, idle.addr, &short, 1).await;
        requests(&app, kept.addr, &never, 1).await;
        assert_eq!(
            idle.open.load(Ordering::SeqCst),
            1,
            "pooled after the request"
        );
        eventually("the idle connection closed", || {
            idle.open.load(Ordering::SeqCst) == 0
        })
        .await;
        assert_eq!(
            kept.open.load(Ordering::SeqCst),
            1,
            "idle as long, without an idle timeout: still open"
        );
        requests(&app, idle.addr, &short, 1).await;
        assert_eq!(idle.accepted.load(Ordering::SeqCst), 2, "a new connection");
    }

    /// An h2c server on loopback that answers every request with the
    /// `:authority`, `Host` and path it got.
    async fn h2c_server() -> Counting {
        counting_server(|s| async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let host = req.headers().get(header::HOST);
                let seen = format!(
                    "{} {} {}",
                    req.uri().authority().map_or("-", |a| a.as_str()),
                    host.map_or("-", |h| h.to_str().unwrap()),
                    req.uri().path()
                );
                let mut tx = respond.send_response(Response::new(()), false).unwrap();
                tx.send_data(bytes::Bytes::from(seen), true).unwrap();
            }
        })
        .await
    }

    #[tokio::test]
    async fn h2c_keeps_the_authority_and_a_clusters_requests_share_a_connection() {
        let server = h2c_server().await;
        let addr = server.addr;
        let app = app();
        let inbound = Request::get("http://reviews:9080/r")
            .header(header::HOST, "reviews:9080")
            .body(crate::proxy::body::empty())
            .unwrap();
        let resp = app.send(addr, true, inbound).await.unwrap();
        let seen = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            seen, "reviews:9080 - /r",
            "the authority, no Host beside it"
        );
        // An HTTP/1.1-style request (origin form and Host), to an endpoint:
        // what the server saw.
        let with_host = |host: &'static str| {
            let req = Request::get("/r")
                .header(header::HOST, host)
                .body(crate::proxy::body::empty())
                .unwrap();
            let app = &app;
            async move {
                let limits = Limits::default();
                let resp = app.send_to_endpoint(addr, true, &limits, req).await;
                let resp = resp.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            }
        };
        let seen = with_host("ratings:9080").await;
        assert_eq!(seen, "ratings:9080 - /r", "Host becomes the authority");
        // A Host that is no authority: the address instead, and the path
        // as it was.
        for odd in ["not an authority", "evil/x"] {
            let seen = with_host(odd).await;
            assert_eq!(seen, format!("{addr} - /r"), "Host {odd:?}");
        }
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            2,
            "one for the application, one for the cluster"
        );
        // A cluster with its own connect timeout: its own connection.
        let own = Limits {
            connect_timeout: Some(Duration::from_secs(3)),
            ..Limits::default()
        };
        let req = Request::get("/r")
            .body(crate::proxy::body::empty())
            .unwrap();
        app.send_to_endpoint(addr, true, &own, req).await.unwrap();
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }
}
