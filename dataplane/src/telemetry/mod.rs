//! What a proxy tells about the traffic it carries: Istio's metrics
//! ([`metrics`]) with their labels ([`labels`]), one JSON access-log line
//! per request or TCP connection, Envoy's response flags ([`Flag`]), the
//! body wrapper that counts bytes and reports a request when its response
//! has been sent in full ([`Observed`]), and a splice that reports its
//! connection ([`splice`]).
mod flag;
pub mod labels;
pub mod metrics;

pub use flag::Flag;

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use tokio::io::{AsyncRead, AsyncWrite};
use trellis_transport::listen::Slot;
use trellis_transport::splice::{self as transport_splice, Spliced, Timeouts};

use self::labels::ConnLabels;
use self::metrics::{Metrics, RequestKey};

/// Metrics and access log, shared by every listener.
pub struct Telemetry {
    pub metrics: Metrics,
    access_log: bool,
}

/// One request on its way through the agent.
pub struct RequestLog {
    pub start: SystemTime,
    pub started: Instant,
    pub conn: ConnLabels,
    pub grpc: bool,
    pub method: http::Method,
    /// The request's path and query (a handle on its bytes, not a copy).
    pub path: Option<http::uri::PathAndQuery>,
    pub authority: Arc<str>,
    /// `x-request-id`, sharing the bytes of the request's header.
    pub request_id: http::HeaderValue,
    pub upstream: Option<SocketAddr>,
    pub upstream_cluster: Arc<str>,
    pub downstream: SocketAddr,
    pub response_code: u16,
    pub grpc_status: Option<u16>,
    pub flag: Option<Flag>,
    /// Request body bytes read so far; the request body's wrapper adds to it.
    pub request_bytes: Arc<AtomicU64>,
    /// The request's count on its downstream connection, let go with the
    /// log once the request is reported (its response sent, or given up).
    pub in_flight: Option<InFlight>,
}

/// One downstream HTTP connection as its socket and its requests share
/// it: the requests open on it, each counted while its [`RequestLog`]
/// lives ([`InFlight`]) and read by what closes the connection when it
/// has been idle too long; whether it switched protocols (an HTTP upgrade,
/// a CONNECT tunnel: then it is never idle); and its place under the
/// listeners' connection limit, given back when the last of them lets go
/// (an upgraded connection outlives the task that served its requests).
#[derive(Debug, Default)]
pub struct DownstreamConn {
    open: AtomicU32,
    _slot: Option<Slot>,
}

/// The bit of [`DownstreamConn`]'s count that marks an upgraded connection.
const UPGRADED: u32 = 1 << 31;

impl DownstreamConn {
    /// A connection holding `slot` under the connection limit.
    pub fn new(slot: Slot) -> Self {
        Self {
            open: AtomicU32::new(0),
            _slot: Some(slot),
        }
    }

    /// Counts one more request until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.open.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests open now.
    pub fn count(&self) -> u32 {
        self.open.load(Ordering::Relaxed) & !UPGRADED
    }

    /// Marks the connection as no longer HTTP (upgraded, tunnelled).
    pub fn upgrade(&self) {
        self.open.fetch_or(UPGRADED, Ordering::Relaxed);
    }

    /// Whether [`DownstreamConn::upgrade`] was called.
    pub fn upgraded(&self) -> bool {
        self.open.load(Ordering::Relaxed) & UPGRADED != 0
    }
}

/// One request counted open on its connection while this lives.
#[derive(Debug)]
pub struct InFlight(Arc<DownstreamConn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One TCP connection, reported when it closes.
pub struct TcpLog {
    pub start: SystemTime,
    pub started: Instant,
    pub conn: ConnLabels,
    pub upstream: Option<SocketAddr>,
    pub upstream_cluster: String,
    pub downstream: SocketAddr,
    pub flag: Option<Flag>,
}

impl RequestLog {
    /// A request starting now; the response fields are filled in later.
    pub fn start<B>(
        conn: ConnLabels,
        req: &http::Request<B>,
        authority: Arc<str>,
        request_id: http::HeaderValue,
        downstream: SocketAddr,
    ) -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
            conn,
            grpc: is_grpc(req.headers()),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            authority,
            request_id,
            upstream: None,
            // Set once the cluster is known; empty, it allocates nothing.
            upstream_cluster: Arc::default(),
            downstream,
            response_code: 0,
            grpc_status: None,
            flag: None,
            request_bytes: Default::default(),
            in_flight: None,
        }
    }
}

impl RequestLog {
    /// A request the HTTP layer refused before it could be read whole (a
    /// head that does not parse, or too large): answered `status`, with
    /// `flag`, its method, path and authority unknown (`-`).
    pub fn refused(conn: ConnLabels, downstream: SocketAddr, status: u16, flag: Flag) -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
            conn,
            grpc: false,
            method: http::Method::from_bytes(b"-").unwrap_or_default(),
            path: None,
            authority: Arc::from("-"),
            request_id: http::HeaderValue::from_static(""),
            upstream: None,
            upstream_cluster: Arc::default(),
            downstream,
            response_code: status,
            grpc_status: None,
            flag: Some(flag),
            request_bytes: Default::default(),
            in_flight: None,
        }
    }
}

impl TcpLog {
    /// A connection starting now, towards `upstream_cluster`.
    pub fn start(conn: ConnLabels, downstream: SocketAddr, upstream_cluster: String) -> Self {
        Self {
            start: SystemTime::now(),
            started: Instant::now(),
            conn,
            upstream: None,
            upstream_cluster,
            downstream,
            flag: None,
        }
    }
}

impl Telemetry {
    pub fn new(access_log: bool) -> Self {
        Self {
            metrics: Metrics::default(),
            access_log,
        }
    }

    /// Records a finished request: metrics, then the access-log line.
    pub fn request_done(&self, log: &RequestLog, response_bytes: u64) {
        let duration = log.started.elapsed();
        let request_bytes = log.request_bytes.load(Ordering::Relaxed);
        self.metrics.request(
            RequestKey {
                conn: log.conn.clone(),
                protocol: if log.grpc { "grpc" } else { "http" },
                response_code: log.response_code,
                grpc_status: log.grpc_status,
                flag: log.flag,
            },
            duration,
            request_bytes,
            response_bytes,
        );
        if self.access_log {
            let line = serde_json::json!({
                "start_time": trellis_identity::rfc3339::format_rfc3339(unix(log.start)),
                "reporter": log.conn.reporter.as_str(),
                "method": log.method.as_str(),
                "path": log.path.as_ref().map_or("", |p| p.as_str()),
                "authority": &*log.authority,
                "protocol": if log.grpc { "grpc" } else { "http" },
                "response_code": log.response_code,
                "grpc_status": log.grpc_status,
                "response_flags": log.flag.map_or("-", Flag::code),
                "bytes_received": request_bytes,
                "bytes_sent": response_bytes,
                "duration": millis(duration),
                "upstream_host": log.upstream.map(|a| a.to_string()),
                "upstream_cluster": &*log.upstream_cluster,
                "downstream_remote_address": log.downstream.to_string(),
                "downstream_peer_principal": log.conn.source.principal,
                "upstream_peer_principal": log.conn.destination.principal,
                "request_id": log.request_id.to_str().unwrap_or_default(),
            });
            write_line(&line);
        }
    }

    /// Records a TCP connection that opened.
    pub fn tcp_opened(&self, log: &TcpLog) {
        self.metrics.tcp_opened(&log.conn);
    }

    /// Records a TCP connection that closed after `sent` bytes to the
    /// downstream and `received` from it.
    pub fn tcp_closed(&self, log: &TcpLog, sent: u64, received: u64) {
        self.metrics.tcp_closed(&log.conn, sent, received);
        if self.access_log {
            let line = serde_json::json!({
                "start_time": trellis_identity::rfc3339::format_rfc3339(unix(log.start)),
                "reporter": log.conn.reporter.as_str(),
                "protocol": "tcp",
                "response_flags": log.flag.map_or("-", Flag::code),
                "bytes_received": received,
                "bytes_sent": sent,
                "duration": millis(log.started.elapsed()),
                "upstream_host": log.upstream.map(|a| a.to_string()),
                "upstream_cluster": log.upstream_cluster,
                "downstream_remote_address": log.downstream.to_string(),
                "downstream_peer_principal": log.conn.source.principal,
                "upstream_peer_principal": log.conn.destination.principal,
            });
            write_line(&line);
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

fn write_line(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
}

/// A body that counts the bytes through it. As a response body it reports
/// its request to [`Telemetry`] once it is done or dropped (the client went
/// away: `DC` if it had not finished); as a request body it adds to a shared
/// counter.
pub struct Observed<B> {
    inner: B,
    bytes: u64,
    /// The body reached its end (hyper does not poll a body that starts
    /// at its end, so this is also set up front for those).
    ended: bool,
    sink: Sink,
}

enum Sink {
    Counter(Arc<AtomicU64>),
    Report(Option<(Arc<Telemetry>, Box<RequestLog>)>),
}

impl<B: HttpBody> Observed<B> {
    /// A request body adding its bytes to `counter`.
    pub fn counting(inner: B, counter: Arc<AtomicU64>) -> Self {
        Self {
            ended: inner.is_end_stream(),
            inner,
            bytes: 0,
            sink: Sink::Counter(counter),
        }
    }

    /// A response body reporting `log` when it ends.
    pub fn reporting(inner: B, telemetry: Arc<Telemetry>, log: RequestLog) -> Self {
        Self {
            ended: inner.is_end_stream(),
            inner,
            bytes: 0,
            sink: Sink::Report(Some((telemetry, Box::new(log)))),
        }
    }
}

impl<B> Observed<B> {
    fn finish(&mut self, complete: bool) {
        self.ended |= complete;
        if let Sink::Report(slot) = &mut self.sink {
            if let Some((t, mut log)) = slot.take() {
                if !complete && log.flag.is_none() {
                    log.flag = Some(Flag::DownstreamConnectionTermination);
                }
                t.request_done(&log, self.bytes);
            }
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Unpin> HttpBody for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    self.bytes += n;
                    if let Sink::Counter(c) = &self.sink {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                }
                if frame.is_trailers() {
                    if let (Sink::Report(Some((_, log))), Some(t)) =
                        (&mut self.sink, frame.trailers_ref())
                    {
                        if let Some(s) = grpc_status(t) {
                            log.grpc_status = Some(s);
                        }
                    }
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        self.finish(self.ended);
    }
}

/// The `grpc-status` in headers or trailers.
pub fn grpc_status(h: &http::HeaderMap) -> Option<u16> {
    // A name made once, not parsed from a string at each of the several
    // looks a request gets.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    h.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Splices `downstream` and `upstream` ([`trellis_transport::splice`]),
/// reporting the connection as `log` when it opens and when it closes.
pub async fn splice<D, U>(
    telemetry: &Telemetry,
    log: TcpLog,
    downstream: D,
    upstream: U,
    timeouts: Timeouts,
) where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    report_tcp(
        telemetry,
        log,
        transport_splice::run(downstream, upstream, timeouts),
    )
    .await;
}

/// Reports the connection as `log` when it opens and when `spliced`, the
/// splice that carries it, ends.
pub async fn report_tcp(
    telemetry: &Telemetry,
    log: TcpLog,
    spliced: impl std::future::Future<Output = Spliced>,
) {
    telemetry.tcp_opened(&log);
    let Spliced { sent, received } = spliced.await;
    telemetry.tcp_closed(&log, sent, received);
}
