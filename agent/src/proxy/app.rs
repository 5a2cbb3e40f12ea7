//! Plaintext HTTP clients: to the agent's own application on 127.0.0.1, and
//! to endpoints outside the mesh (no agent in front of them). Pooled
//! HTTP/1.1 for plain HTTP ports, HTTP/2 (h2c) for gRPC and `http2` ports,
//! with the agent's connect timeout or a cluster's own.
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::body::Body;
use super::flags::Flag;

/// Clients for the local application and plaintext endpoints.
pub struct AppClient {
    host: IpAddr,
    /// The agent-wide `--connect-timeout`, and its clients.
    default_timeout: Duration,
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
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Clients {
    fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        connector.set_connect_timeout(Some(connect_timeout));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self { http1, http2 }
    }
}

impl AppClient {
    /// The application listens on `host` (usually 127.0.0.1); connects
    /// give up after `connect_timeout` unless a cluster says otherwise.
    pub fn new(host: IpAddr, connect_timeout: Duration) -> Self {
        Self {
            host,
            default_timeout: connect_timeout,
            default: Clients::new(connect_timeout),
            by_timeout: Mutex::new(HashMap::new()),
        }
    }

    fn clients(&self, connect_timeout: Option<Duration>) -> Cow<'_, Clients> {
        let t = match connect_timeout {
            Some(t) if t != self.default_timeout => t,
            _ => return Cow::Borrowed(&self.default),
        };
        let mut m = self.by_timeout.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&t) && m.len() >= MAX_TIMEOUTS {
            m.clear();
        }
        Cow::Owned(m.entry(t).or_insert_with(|| Clients::new(t)).clone())
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
        let app = AppClient::new(IpAddr::from([127, 0, 0, 1]), Duration::from_secs(30));
        let req = Request::get("/").body(super::super::body::empty()).unwrap();
        let t = Instant::now();
        let r = app
            .send_with_timeout(addr, false, Some(Duration::from_millis(100)), req)
            .await;
        assert_eq!(r.err(), Some(Flag::UpstreamConnectFailure));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
