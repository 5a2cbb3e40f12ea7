//! Plaintext HTTP clients: to the agent's own application on 127.0.0.1, and
//! to endpoints outside the mesh (no agent in front of them). Pooled
//! HTTP/1.1 for plain HTTP ports, HTTP/2 (h2c) for gRPC and `http2` ports.
//! Connections are opened as the agent's others are ([`connect::tcp`]):
//! with the capture mark, so that iptables does not send them back to the
//! agent, and the agent's connect timeout or a cluster's own.
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::body::Body;
use super::connect::{self, ConnectOpts};
use super::flags::Flag;

/// Clients for the local application and plaintext endpoints.
pub struct AppClient {
    host: IpAddr,
    /// The agent's connect options (`--connect-timeout`, the mark), and
    /// their clients.
    opts: ConnectOpts,
    default: Clients,
    /// Clients by other connect timeouts: a connector's is fixed when it
    /// is built, so each DestinationRule `connectTimeout` in use has its
    /// own (and its own connection pool).
    by_timeout: Mutex<HashMap<Duration, Clients>>,
}

/// Most connect timeouts kept at once; past it the map starts over (the
/// clients dropped only lose their idle connections).
const MAX_TIMEOUTS: usize = 32;

#[derive(Clone)]
struct Clients {
    http1: Client<Connector, Body>,
    http2: Client<Connector, Body>,
}

impl Clients {
    fn new(opts: ConnectOpts) -> Self {
        let connector = Connector { opts };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self { http1, http2 }
    }
}

/// hyper's connector over [`connect::tcp`]. The URIs it is given name an
/// IP address and port (see [`AppClient::send_with_timeout`]).
#[derive(Clone, Debug)]
struct Connector {
    opts: ConnectOpts,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let opts = self.opts.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| format!("not an IP address and port: {uri}"))?;
            Ok(TokioIo::new(connect::tcp(addr, &opts).await?))
        })
    }
}

impl AppClient {
    /// The application listens on `host` (usually 127.0.0.1); connections
    /// are opened with `opts` unless a cluster has its own timeout.
    pub fn new(host: IpAddr, opts: ConnectOpts) -> Self {
        Self {
            host,
            default: Clients::new(opts.clone()),
            opts,
            by_timeout: Mutex::new(HashMap::new()),
        }
    }

    fn clients(&self, connect_timeout: Option<Duration>) -> Cow<'_, Clients> {
        let t = match connect_timeout {
            Some(t) if t != self.opts.timeout => t,
            _ => return Cow::Borrowed(&self.default),
        };
        let mut m = self.by_timeout.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&t) && m.len() >= MAX_TIMEOUTS {
            m.clear();
        }
        let clients = m
            .entry(t)
            .or_insert_with(|| Clients::new(self.opts.with_timeout(Some(t))));
        Cow::Owned(clients.clone())
    }

    /// The application's address for `port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host, port)
    }

    /// Sends `req` to `addr`, over HTTP/2 if `h2`. The request keeps its
    /// `Host` (HTTP/1.1); the URI is pointed at `addr`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        h2: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, Flag> {
        self.send_with_timeout(addr, h2, None, req).await
    }

    /// [`AppClient::send`], a new connection giving up after
    /// `connect_timeout` (`None`: the agent-wide timeout).
    pub async fn send_with_timeout(
        &self,
        addr: SocketAddr,
        h2: bool,
        connect_timeout: Option<Duration>,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Flag> {
        let clients = self.clients(connect_timeout);
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
        client.request(req).await.map_err(|e| {
            tracing::debug!(%addr, error = %trellis_identity::grpc::error_chain(&e), "request to the application failed");
            if e.is_connect() {
                Flag::UpstreamConnectFailure
            } else {
                Flag::UpstreamConnectionTermination
            }
        })
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
        };
        let app = AppClient::new(IpAddr::from([127, 0, 0, 1]), agent);
        let req = Request::get("/").body(super::super::body::empty()).unwrap();
        let t = Instant::now();
        let r = app
            .send_with_timeout(addr, false, Some(Duration::from_millis(100)), req)
            .await;
        assert_eq!(r.err(), Some(Flag::UpstreamConnectFailure));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
