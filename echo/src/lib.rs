//! `trellis-echo`: the workload that end-to-end tests and benchmarks put
//! behind the mesh. It answers every request with who it is (a
//! [`Responder`]: service name, version, identity) and what it received, so
//! a test sent through proxies can check where the request landed and what
//! the proxies changed on the way.
//!
//! [`serve`] binds the listeners of a [`Config`] and returns a [`Server`]
//! with the bound addresses: HTTP/1.1 and h2c on the same port, with
//! Upgrade echo (the [`Report`] JSON, steered by the `x-echo-*` request
//! headers); gRPC (the [`v1::echo_server`] service, whose client
//! [`v1::echo_client`] tests use); and opaque TCP echo. [`Stats`] counts
//! the requests received and the HTTP connections accepted and open. The
//! binary only parses flags and calls [`serve`].
//!
//! To play one service of an application whose services call each other
//! (Istio's bookinfo: productpage calls details and reviews, reviews v2
//! and v3 call ratings), a server can be given [`Callees`] (`--call URL`):
//! before answering an HTTP request with its report, it GETs each URL in
//! order over pooled HTTP/1.1 connections, passing on the request's
//! tracing and routing headers (`x-request-id`, `traceparent`,
//! `tracestate`, `x-b3-*`, `b3`, `end-user`, `user-agent`, `cookie`), and
//! adds each answer to the report as a [`Call`]. The callees' reports nest
//! in it, so one response shows the whole chain. A failed call is recorded
//! in its [`Call`] and leaves the response status alone. Which versions
//! call is a matter of flags: reviews v1 is started without `--call`. The
//! `x-echo-*` controls are not passed on, but a URL's query can steer its
//! callee (`--call http://127.0.0.1:19083/ratings?fail-rate=0.5`). A
//! request 10 calls deep (`x-echo-hops`) makes no calls, so URLs that
//! form a loop cannot flood the host.
#![forbid(unsafe_code)]

mod calls;
mod controls;
mod grpc;
mod http;
mod report;
mod tcp;

pub use report::{Call, Report, Responder, Stats};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::Uri;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// `trellis.echo.v1`: the gRPC echo service and its client.
pub mod v1 {
    #![allow(clippy::all, missing_docs)] // generated code
    tonic::include_proto!("trellis.echo.v1");
}

/// What to listen on and what to report.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// HTTP/1.1 and HTTP/2 prior knowledge (h2c), with Upgrade echo.
    pub http: Vec<SocketAddr>,
    /// gRPC over h2c.
    pub grpc: Vec<SocketAddr>,
    /// Opaque TCP echo.
    pub tcp: Vec<SocketAddr>,
    /// Reported in every response.
    pub workload: Responder,
    /// Called before answering an HTTP request with its report.
    pub callees: Callees,
}

/// How long a call may take by default (`--call-timeout-ms`).
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 2000;

/// The services to call before answering an HTTP request with its
/// [`Report`] (`--call`); see [`Call`]. Requests to `/plain`,
/// `/echo/stats`, Upgrades, filler answers (`x-echo-body-bytes`) and gRPC
/// calls make no calls.
#[derive(Clone, Debug)]
pub struct Callees {
    /// `http://` URLs, called with GET in this order.
    pub urls: Vec<Uri>,
    /// How long each call may take, from connecting to the end of the
    /// answer.
    pub timeout: Duration,
}

impl Default for Callees {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_CALL_TIMEOUT_MS),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config has no listener.
    #[error("nothing to serve: give at least one --http, --grpc or --tcp address")]
    NothingToServe,
    /// A listener could not be bound.
    #[error("cannot listen for {proto} on {addr}; is another process using the port?")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `--name` or `--version` cannot go into `x-echo-service` or
    /// `x-echo-version`.
    #[error("--{flag} {value:?} cannot be sent as a response header: use visible ASCII")]
    NotAHeaderValue { flag: &'static str, value: String },
    /// A `--call` URL the client cannot call.
    #[error("--call {url}: {reason}")]
    CallUrl { url: String, reason: &'static str },
}

/// A running server: its bound addresses (the real ports when the config
/// asked for port 0). Dropping it stops accepting connections; connections
/// already open run to their end.
pub struct Server {
    pub http: Vec<SocketAddr>,
    pub grpc: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    _accept_loops: JoinSet<()>,
}

impl Server {
    /// `http=ADDR grpc=ADDR ...`, one entry per listener, for the start-up
    /// log line.
    pub fn listening(&self) -> String {
        let http = self.http.iter().map(|a| format!("http={a}"));
        let grpc = self.grpc.iter().map(|a| format!("grpc={a}"));
        let tcp = self.tcp.iter().map(|a| format!("tcp={a}"));
        http.chain(grpc).chain(tcp).collect::<Vec<_>>().join(" ")
    }
}

/// Binds every listener of `config` (all or none), then serves them on
/// the current tokio runtime until the returned [`Server`] is dropped.
pub async fn serve(config: Config) -> Result<Server, Error> {
    if config.http.is_empty() && config.grpc.is_empty() && config.tcp.is_empty() {
        return Err(Error::NothingToServe);
    }
    let state = Arc::new(State::new(config.workload, config.callees)?);
    let http = bind_all("http", &config.http).await?;
    let grpc = bind_all("grpc", &config.grpc).await?;
    let tcp = bind_all("tcp", &config.tcp).await?;

    let server_addrs = (local_addrs(&http), local_addrs(&grpc), local_addrs(&tcp));

    let mut loops = JoinSet::new();
    for l in http {
        let state = state.clone();
        loops.spawn(accept_loop(l, move |s| {
            http::serve_connection(s, state.clone())
        }));
    }
    let grpc_service = grpc::service(state);
    for l in grpc {
        let svc = grpc_service.clone();
        loops.spawn(accept_loop(l, move |s| {
            grpc::serve_connection(s, svc.clone())
        }));
    }
    for l in tcp {
        loops.spawn(accept_loop(l, tcp::echo::<TcpStream>));
    }
    let (http, grpc, tcp) = server_addrs;
    Ok(Server {
        http,
        grpc,
        tcp,
        _accept_loops: loops,
    })
}

/// What every connection handler shares.
struct State {
    workload: Responder,
    /// `x-echo-service` and `x-echo-version`, checked once at start.
    service_header: HeaderValue,
    version_header: HeaderValue,
    /// HTTP requests and gRPC calls received, but for `/echo/stats`.
    requests: AtomicU64,
    /// HTTP connections accepted, and those still open.
    http_connections: AtomicU64,
    open_http_connections: AtomicU64,
    /// None without `--call`.
    caller: Option<calls::Caller>,
}

impl State {
    fn new(workload: Responder, callees: Callees) -> Result<Self, Error> {
        let header = |flag, value: &str| {
            HeaderValue::from_str(value).map_err(|_| Error::NotAHeaderValue {
                flag,
                value: value.to_string(),
            })
        };
        Ok(Self {
            service_header: header("name", &workload.service)?,
            version_header: header("version", &workload.version)?,
            workload,
            requests: AtomicU64::new(0),
            http_connections: AtomicU64::new(0),
            open_http_connections: AtomicU64::new(0),
            caller: calls::Caller::new(callees)?,
        })
    }

    fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            http_connections: self.http_connections.load(Ordering::Relaxed),
            open_http_connections: self.open_http_connections.load(Ordering::Relaxed),
        }
    }
}

async fn bind_all(proto: &'static str, addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, Error> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind {
                proto,
                addr,
                source,
            })?;
        listeners.push(l);
    }
    Ok(listeners)
}

fn local_addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    // A bound listener always has a local address.
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}

/// How long to pause after a failed accept (out of file descriptors, say)
/// so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections forever, each handled on its own task.
async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Small requests and replies: latency matters more than
                // packet count.
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream));
            }
            Err(e) => {
                let addr = listener.local_addr().map(|a| a.to_string());
                eprintln!(
                    "trellis-echo: accepting on {}: {e}",
                    addr.unwrap_or_default()
                );
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}
