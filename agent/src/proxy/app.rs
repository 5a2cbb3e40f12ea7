//! Plaintext HTTP clients: to the agent's own application on 127.0.0.1, and
//! to endpoints outside the mesh (no agent in front of them). Pooled
//! HTTP/1.1 for plain HTTP ports, HTTP/2 (h2c) for gRPC and `http2` ports.
use std::net::{IpAddr, SocketAddr};

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::body::Body;
use super::flags::Flag;

/// Clients for the local application.
pub struct AppClient {
    host: IpAddr,
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl AppClient {
    /// The application listens on `host` (usually 127.0.0.1).
    pub fn new(host: IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector.clone());
        let http2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self { host, http1, http2 }
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
            &self.http2
        } else {
            *req.version_mut() = Version::HTTP_11;
            &self.http1
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
