//! The proxy: [`inbound`] (15006) takes connections from other agents and
//! hands them to the application; [`outbound`] (15001, and one port per
//! explicit upstream) takes the application's connections and carries them
//! to the right endpoint over mTLS.
pub mod app;
pub mod body;
pub mod downstream;
pub mod failure;
pub mod flags;
pub mod h1_pool;
pub mod h2_stream;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod pool;
#[cfg(test)]
mod tests;
pub mod trace;
pub mod upgrade;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use trellis_dataplane::mesh::Mesh;
use trellis_dataplane::telemetry::{DownstreamConn, Telemetry};
use trellis_dataplane::tls::MeshTls;
use trellis_dataplane::Shared;
use trellis_transport::{connect, cork::Corked, drain};

/// Everything the listeners share.
pub struct Proxy {
    pub tls: Arc<MeshTls>,
    pub telemetry: Arc<Telemetry>,
    /// The view of the mesh, this workload's labels with it.
    pub mesh: Arc<Shared<Mesh>>,
    pub pool: pool::Pool<pool::Peers>,
    pub app: app::AppClient,
    pub opts: connect::ConnectOpts,
    /// The port other agents' inbound listeners are on.
    pub peer_inbound_port: u16,
    /// What clients may send (the application's, and those of plaintext
    /// clients of the inbound listener).
    pub downstream: Downstream,
    /// Connections the inbound, outbound and upstream listeners may hold
    /// open at once, together.
    pub conn_limit: Arc<trellis_transport::listen::ConnLimit>,
}

/// Envoy's and Istio's default limit on the headers of a request
/// (`max_request_headers_kb`) and of a response, in KiB.
pub const DEFAULT_MAX_HEADERS_KB: u32 = 60;

/// Room a peer agent's requests and responses get beyond the limit the
/// caller's agent (or the server's) enforced where they entered the mesh:
/// the headers agents add (peer metadata, request id, route header
/// changes), and HTTP/2's count of 32 bytes per header where HTTP/1.1
/// counted the bytes of each line (100 headers at most).
pub const PEER_HEADER_ALLOWANCE: u32 = 8 * 1024;

/// What a downstream connection may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downstream {
    /// The largest request head, in bytes: HTTP/1.1's request line and
    /// headers (hyper's `max_header_size`), HTTP/2's header list as it
    /// counts it (each header's name and value and 32). Past it the request
    /// gets 431 (HTTP/2: while the header block is up to 4 times the limit;
    /// past that the connection is closed with GOAWAY `COMPRESSION_ERROR`,
    /// as h2 does).
    pub max_header_bytes: u32,
    /// How long a request head may take, and a connection stay idle.
    pub timeouts: downstream::Timeouts,
}

impl Downstream {
    /// Limits for connections from peer agents, which enforced these
    /// where the requests came in: the same, with [`PEER_HEADER_ALLOWANCE`].
    pub fn from_peers(self) -> Self {
        Self {
            max_header_bytes: self.max_header_bytes.saturating_add(PEER_HEADER_ALLOWANCE),
            ..self
        }
    }
}

/// Streams an HTTP/2 client may have open at once on one connection to the
/// agent: Envoy's default (2^31 - 1), rather than hyper's 200. Past its
/// peer's limit an HTTP/2 client queues new streams rather than open
/// another connection (h2's and the agent's own pool do), so with 200 the
/// 201st concurrent request from an application, or between two agents,
/// would wait for one of the first to end: forever, behind long-lived gRPC
/// streams.
const MAX_CONCURRENT_STREAMS: u32 = i32::MAX as u32;

/// Why a downstream connection ended badly (logged at debug level by the
/// accept loop; requests on it have been answered and logged already).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("reading the first bytes: {0}")]
    Detect(std::io::Error),
    #[error(
        "plaintext connection straight to the inbound port: no mTLS and no original \
         destination, so no application port to forward to"
    )]
    NoPort,
    #[error("plaintext connection refused: mTLS is STRICT for port {0}")]
    Strict(u16),
    #[error("mTLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("mTLS handshake timed out after {0:?}")]
    HandshakeTimeout(std::time::Duration),
    #[error("mTLS connection names no port (SNI {0:?})")]
    NoSniPort(Option<String>),
    #[error("unknown ALPN {0:?}")]
    Alpn(String),
    #[error("{flag}: no connection to {cluster}")]
    Refused {
        flag: trellis_dataplane::telemetry::Flag,
        cluster: String,
    },
    #[error("HTTP: {0}")]
    Http(ServeError),
}

/// Reports the request hyper refused itself if serving a connection
/// ended in `result` because of one (its head did not parse: `400`, or
/// was too large: `431`), as a request from `conn` with `DPE`, as Envoy
/// reports its codec errors.
pub fn report_refused(
    telemetry: &Telemetry,
    result: &Result<(), ConnError>,
    conn: impl FnOnce() -> trellis_dataplane::telemetry::labels::ConnLabels,
    downstream: std::net::SocketAddr,
) {
    let Err(ConnError::Http(e)) = result else {
        return;
    };
    let Some(e) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    let status = if e.is_parse_too_large() {
        431
    } else if e.is_parse() {
        400
    } else {
        return;
    };
    let flag = trellis_dataplane::telemetry::Flag::DownstreamProtocolError;
    let log = trellis_dataplane::telemetry::RequestLog::refused(conn(), downstream, status, flag);
    telemetry.request_done(&log, 0);
}

/// Reports a TCP connection that could not be carried, ended by `flag`;
/// the error to end it with.
pub fn refuse(
    telemetry: &Telemetry,
    mut log: trellis_dataplane::telemetry::TcpLog,
    flag: trellis_dataplane::telemetry::Flag,
) -> ConnError {
    log.flag = Some(flag);
    telemetry.tcp_opened(&log);
    telemetry.tcp_closed(&log, 0, 0);
    ConnError::Refused {
        flag,
        cluster: log.upstream_cluster,
    }
}

/// Which HTTP versions a listener's connection may speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Versions {
    /// Detected from the client's first bytes.
    Any,
    Http1,
    Http2,
}

/// Why serving a downstream connection ended in an error.
pub type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// Serves HTTP on a downstream connection (HTTP/2 writes corked,
/// upgrades allowed) until it ends, within `limits`; the service counts
/// its requests in `open`. Once the connection has been idle for the idle
/// timeout, the requests in flight finish and the connection closes
/// (HTTP/2: GOAWAY); one whose request head does not arrive in time is
/// closed at once. A drain is Envoy's, friendly to keep-alive clients:
/// HTTP/2 gets GOAWAY at once; an HTTP/1 connection answers its next
/// request with `Connection: close` and closes after it, and one that
/// stays idle is closed only at the drain's deadline (closing an idle
/// keep-alive connection at once races the request its client may be
/// sending on it, which would fail).
pub async fn serve_http<I, S>(
    io: I,
    versions: Versions,
    limits: Downstream,
    open: Arc<DownstreamConn>,
    svc: S,
    drain: drain::Watch,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<ServeError>,
{
    serve_connection(io, versions, limits, open, svc, drain)
        .await
        .map_err(ConnError::Http)
}

async fn serve_connection<I, S>(
    io: I,
    versions: Versions,
    limits: Downstream,
    open: Arc<DownstreamConn>,
    svc: S,
    drain: drain::Watch,
) -> Result<(), ServeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<ServeError>,
{
    let expiry = Arc::new(downstream::Expiry::default());
    let io = downstream::Watched::new(
        io,
        versions == Versions::Http2,
        limits.timeouts,
        open,
        expiry.clone(),
    );
    let (h2, io) = match versions {
        Versions::Any => {
            // Its first bytes too must come within the request-headers
            // timeout.
            let read = downstream::read_version(io);
            let (h2, mut io) = tokio::select! {
                read = read => read?,
                e = expiry.wait() => return Err(Box::new(downstream::TimedOut(e))),
            };
            if h2 {
                io.inner_mut().set_http2();
            }
            (h2, io)
        }
        Versions::Http1 => (false, downstream::Rewind::new(Bytes::new(), io)),
        Versions::Http2 => (true, downstream::Rewind::new(Bytes::new(), io)),
    };
    let io = TokioIo::new(Corked::server(io));
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_header_list_size(limits.max_header_bytes);
        let conn = builder.serve_connection(io, svc);
        until_done(conn, drain, &expiry, OnDrain::Shutdown, |c| {
            c.graceful_shutdown()
        })
        .await
    } else {
        let mut builder = http1::Builder::new();
        // Past it hyper answers 431 and closes the connection.
        builder.max_header_size(limits.max_header_bytes as usize);
        let svc = CloseOnDrain {
            inner: svc,
            drain: drain.clone(),
        };
        let conn = builder.serve_connection(io, svc).with_upgrades();
        until_done(conn, drain, &expiry, OnDrain::Wait, |c| {
            c.graceful_shutdown()
        })
        .await
    }
}

/// What a connection does when a drain starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnDrain {
    /// Finish the requests in flight and close (HTTP/2's GOAWAY).
    Shutdown,
    /// Go on: the service ends it (HTTP/1's `Connection: close`).
    Wait,
}

/// Runs `conn` to its end; once the connection has been idle too long, or
/// a drain starts and `on_drain` says so, asks it to finish the requests
/// in flight and close (`shutdown`); one whose request head took too long
/// is dropped (closed), as is one still open at the drain's deadline.
async fn until_done<C, E>(
    conn: C,
    mut drain: drain::Watch,
    expiry: &downstream::Expiry,
    on_drain: OnDrain,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), ServeError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<ServeError>,
{
    tokio::pin!(conn);
    let mut closing = drain.clone();
    let stop = tokio::select! {
        served = conn.as_mut() => return served.map_err(Into::into),
        () = drain.signalled() => on_drain == OnDrain::Shutdown,
        e = expiry.wait() => match e {
            downstream::Expired::Idle => true,
            downstream::Expired::RequestHeaders => {
                return Err(Box::new(downstream::TimedOut(e)));
            }
        },
    };
    if stop {
        shutdown(conn.as_mut());
    }
    tokio::select! {
        served = conn.as_mut() => served.map_err(Into::into),
        () = closing.closing() => Ok(()),
    }
}

/// An HTTP/1 service whose responses, once a drain has started, carry
/// `Connection: close`: hyper then closes the connection after writing
/// the response, and the client knows not to send another request on it.
#[derive(Clone)]
struct CloseOnDrain<S> {
    inner: S,
    drain: drain::Watch,
}

impl<S, B> Service<Request<Incoming>> for CloseOnDrain<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = CloseOnDrainFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        CloseOnDrainFuture {
            inner: self.inner.call(req),
            drain: self.drain.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response that gets `Connection: close` if a drain has started by
    /// the time it is ready.
    struct CloseOnDrainFuture<F> {
        #[pin]
        inner: F,
        drain: drain::Watch,
    }
}

impl<F, B, E> Future for CloseOnDrainFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let me = self.project();
        let mut res = std::task::ready!(me.inner.poll(cx));
        if let Ok(r) = &mut res {
            // Not on a switch of protocols: the connection is handed over.
            if me.drain.draining() && r.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                r.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
        }
        std::task::Poll::Ready(res)
    }
}

const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// The request's `x-request-id`, added when missing (a random UUID, as Envoy does).
/// The value is shared with the header map (a clone of the value is a
/// reference to the same bytes, not a copy).
pub fn ensure_request_id(h: &mut HeaderMap) -> http::HeaderValue {
    if let Some(id) = h.get(&X_REQUEST_ID).filter(|v| v.to_str().is_ok()) {
        return id.clone();
    }
    let id = trace::uuid_v4();
    h.insert(X_REQUEST_ID, id.clone());
    id
}
