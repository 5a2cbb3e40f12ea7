//! Plaintext HTTP clients: to the agent's own application on 127.0.0.1, and
//! to endpoints outside the mesh (no agent in front of them). Pooled
//! HTTP/1.1 for plain HTTP ports, HTTP/2 (h2c) for gRPC and `http2` ports.
//! Connections are opened as the agent's others are ([`connect::tcp`]):
//! with the capture mark, so that iptables does not send them back to the
//! agent, and the agent's connect timeout or a cluster's own. To endpoints,
//! a connection is reused as the cluster's [`Reuse`] allows: retired after
//! `maxRequestsPerConnection` requests, closed idle after `idleTimeout`.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Extensions, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{capture_connection, Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::Body;
use super::connect::{self, ConnectOpts, Keepalive};
use super::cork::Corked;
use super::flags::Flag;
use super::pool::Reuse;
use crate::mesh::cluster::Limits;

/// Clients for the local application and plaintext endpoints.
pub struct AppClient {
    host: IpAddr,
    /// The agent's connect options (`--connect-timeout`, the mark), and
    /// the clients to the local application.
    opts: ConnectOpts,
    default: Clients,
    /// Clients to endpoints by connect timeout, keepalive and idle timeout:
    /// all are fixed when a client is built, so each DestinationRule
    /// `connectTimeout`, `tcpKeepalive` and `idleTimeout` in use has its
    /// own (and its own connection pool).
    /// Shared, so a request holds 8 bytes of them, not both clients.
    by_timeouts: Mutex<HashMap<ClientsKey, Arc<Clients>>>,
}

/// Most timeout pairs kept at once; past it the map starts over (the
/// clients dropped only lose their idle connections).
const MAX_TIMEOUTS: usize = 32;

/// How long a connection to the local application may stay idle in the pool.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Clients {
    http1: Client<Connector, Body>,
    http2: Client<Connector, Body>,
}

impl Clients {
    /// Clients whose idle connections are closed after `idle` (`None`:
    /// never). The timer is what closes them; without it hyper would only
    /// skip them when it next looks for a connection.
    fn new(opts: ConnectOpts, idle: Option<Duration>) -> Self {
        let mut http1 = Client::builder(TokioExecutor::new());
        http1.pool_timer(TokioTimer::new()).pool_idle_timeout(idle);
        let mut http2 = Client::builder(TokioExecutor::new());
        http2
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .http2_only(true);
        Self {
            http1: http1.build(Connector {
                opts: opts.clone(),
                h2: false,
            }),
            http2: http2.build(Connector { opts, h2: true }),
        }
    }
}

/// The requests a connection has carried, kept with it (hyper's
/// connection "extra"), so that the one that reaches
/// `maxRequestsPerConnection` retires it.
#[derive(Clone, Debug, Default)]
struct Requests(Arc<AtomicU32>);

impl Requests {
    /// Counts one more request; whether the connection has now carried
    /// all it may.
    fn one_more(&self, reuse: &Reuse) -> bool {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        reuse.max_requests.is_some_and(|m| n >= m.get())
    }
}

/// A connection to an application or endpoint, with its [`Requests`].
struct Upstream {
    io: TokioIo<Corked<TcpStream>>,
    requests: Requests,
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        self.io
            .inner()
            .get_ref()
            .connected()
            .extra(self.requests.clone())
    }
}

impl Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// What the clients to endpoints differ by: connect timeout, keepalive,
/// idle timeout.
type ClientsKey = (Duration, Option<Keepalive>, Option<Duration>);

/// hyper's connector over [`connect::tcp`]. The URIs it is given name an
/// IP address and port (see [`AppClient::send_to_endpoint`]).
#[derive(Clone, Debug)]
struct Connector {
    opts: ConnectOpts,
    /// Its connections carry HTTP/2 (see [`Corked`]).
    h2: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = Upstream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (opts, h2) = (self.opts.clone(), self.h2);
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| format!("not an IP address and port: {uri}"))?;
            Ok(Upstream {
                io: TokioIo::new(Corked::client(connect::tcp(addr, &opts).await?, h2)),
                requests: Requests::default(),
            })
        })
    }
}

impl AppClient {
    /// The application listens on `host` (usually 127.0.0.1); connections
    /// are opened with `opts` unless a cluster has its own timeout.
    pub fn new(host: IpAddr, opts: ConnectOpts) -> Self {
        Self {
            host,
            default: Clients::new(opts.clone(), Some(APP_IDLE_TIMEOUT)),
            opts,
            by_timeouts: Mutex::new(HashMap::new()),
        }
    }

    /// The clients to the endpoints of a cluster with these limits (its
    /// connect timeout, `None`: the agent-wide one; its keepalive; its idle
    /// timeout, `None`: none).
    fn clients(&self, limits: &Limits) -> Arc<Clients> {
        let opts = self.opts.for_cluster(limits);
        let idle = limits.reuse.idle_timeout;
        let key = (opts.timeout, opts.keepalive, idle);
        let mut m = self.by_timeouts.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&key) && m.len() >= MAX_TIMEOUTS {
            m.clear();
        }
        m.entry(key)
            .or_insert_with(|| Arc::new(Clients::new(opts, idle)))
            .clone()
    }

    /// The application's address for `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }

    /// Sends `req` to the local application at `addr`, over HTTP/2 if
    /// `h2`. The request keeps its `Host` (HTTP/1.1); the URI is pointed
    /// at `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        h2: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, Flag> {
        let unlimited = Reuse {
            max_requests: None,
            idle_timeout: Some(APP_IDLE_TIMEOUT),
        };
        self.request(&self.default, addr, h2, &unlimited, req).await
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
    ) -> Result<Response<Incoming>, Flag> {
        let clients = self.clients(limits);
        self.request(&clients, addr, h2, &limits.reuse, req).await
    }

    async fn request(
        &self,
        clients: &Clients,
        addr: SocketAddr,
        h2: bool,
        reuse: &Reuse,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Flag> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|_| Flag::DownstreamProtocolError)?;
        *req.uri_mut() = uri;
        let client = if h2 {
            *req.version_mut() = Version::HTTP_2;
            &clients.http2
        } else {
            *req.version_mut() = Version::HTTP_11;
            &clients.http1
        };
        // Counted as soon as hyper has picked the connection, before the
        // request is written: an HTTP/1.1 connection goes back to the pool
        // only at the response's end, and an HTTP/2 one is marked before
        // more streams are likely to take it.
        let mut conn = capture_connection(&mut req);
        let send = client.request(req);
        tokio::pin!(send);
        let picked = tokio::select! {
            biased;
            c = conn.wait_for_connection_metadata() => {
                if let Some(c) = c.as_ref() {
                    count_request(c, reuse);
                }
                None
            }
            sent = &mut send => Some(sent),
        };
        let sent = match picked {
            Some(sent) => {
                // Done before the pick was seen (or no connection).
                if let Some(c) = conn.connection_metadata().as_ref() {
                    count_request(c, reuse);
                }
                sent
            }
            None => send.await,
        };
        sent.map_err(|e| {
            tracing::debug!(%addr, error = %trellis_identity::grpc::error_chain(&e), "request to the application failed");
            if e.is_connect() {
                Flag::UpstreamConnectFailure
            } else {
                Flag::UpstreamConnectionTermination
            }
        })
    }
}

/// Counts a request on connection `c`; the one that reaches
/// `maxRequestsPerConnection` retires it (hyper's pool no longer hands it
/// out and drops it once its requests are done).
fn count_request(c: &Connected, reuse: &Reuse) {
    let mut ext = Extensions::new();
    c.get_extras(&mut ext);
    if ext.get::<Requests>().is_some_and(|r| r.one_more(reuse)) {
        c.poison();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_plaintext_connect_gives_up_after_the_clusters_timeout() {
        let (_listener, _queued, addr) = super::super::connect::unanswered();
        let agent = ConnectOpts {
            timeout: Duration::from_secs(30),
            mark: None,
            keepalive: None,
        };
        let app = AppClient::new(IpAddr::from([127, 0, 0, 1]), agent);
        let req = Request::get("/").body(super::super::body::empty()).unwrap();
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
        assert_eq!(r.err(), Some(Flag::UpstreamConnectFailure));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;

    /// An HTTP/1.1 server on loopback, and the connections it accepted and
    /// still has open.
    struct Counting {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        open: Arc<AtomicUsize>,
    }

    async fn counting_server() -> Counting {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(
                            Response::new(super::super::body::empty()),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counting {
            addr,
            accepted,
            open,
        }
    }

    fn app() -> AppClient {
        let opts = ConnectOpts {
            timeout: Duration::from_secs(5),
            mark: None,
            keepalive: None,
        };
        AppClient::new(IpAddr::from([127, 0, 0, 1]), opts)
    }

    /// `n` requests one after the other, each read to its end.
    async fn requests(app: &AppClient, addr: SocketAddr, reuse: &Reuse, n: usize) {
        let limits = Limits {
            reuse: reuse.clone(),
            ..Limits::default()
        };
        for _ in 0..n {
            let req = Request::get("/").body(super::super::body::empty()).unwrap();
            let resp = app
                .send_to_endpoint(addr, false, &limits, req)
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    }

    async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_plaintext_connection_carries_at_most_max_requests() {
        let (limited, unlimited) = (counting_server().await, counting_server().await);
        let app = app();
        let two = Reuse {
            max_requests: std::num::NonZeroU32::new(2),
            idle_timeout: None,
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
        let (idle, kept) = (counting_server().await, counting_server().await);
        let app = app();
        let short = Reuse {
            max_requests: None,
            idle_timeout: Some(Duration::from_millis(200)),
        };
        let never = Reuse {
            max_requests: None,
            idle_timeout: None,
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
}
