//! The proxy: [`inbound`] (15006) takes connections from other agents and
//! hands them to the application; [`outbound`] (15001, and one port per
//! explicit upstream) takes the application's connections and carries them
//! to the right endpoint over mTLS.
pub mod app;
pub mod body;
pub mod connect;
pub mod cork;
pub mod detect;
pub mod flags;
pub mod h1_pool;
pub mod h2_stream;
pub mod headers;
pub mod inbound;
pub mod outbound;
pub mod pool;
pub mod sni;
pub mod sniff;
pub mod splice;
pub mod trace;
pub mod upgrade;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

use crate::mesh::Mesh;
use crate::state::Shared;
use crate::telemetry::labels::Workload;
use crate::telemetry::Telemetry;
use crate::tls::MeshTls;

/// Everything the listeners share.
pub struct Proxy {
    pub tls: Arc<MeshTls>,
    pub telemetry: Arc<Telemetry>,
    pub mesh: Shared<Mesh>,
    /// This agent's workload, as metric labels name it.
    pub me: Arc<Workload>,
    pub pool: pool::Pool<pool::Peers>,
    pub app: app::AppClient,
    pub opts: connect::ConnectOpts,
    /// The port other agents' inbound listeners are on.
    pub peer_inbound_port: u16,
    /// This workload's labels (route `sourceLabels`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// [`Proxy::me`] as the peer-metadata header sends it.
    pub peer_metadata: HeaderValue,
}

/// Reads from `inner` into `buf`; the bytes this read added.
pub(crate) fn poll_read_new<'b, T: AsyncRead + Unpin>(
    inner: &mut T,
    cx: &mut Context<'_>,
    buf: &'b mut ReadBuf<'_>,
) -> Poll<std::io::Result<&'b [u8]>> {
    let before = buf.filled().len();
    std::task::ready!(std::pin::Pin::new(inner).poll_read(cx, buf))?;
    Poll::Ready(Ok(&buf.filled()[before..]))
}

/// Streams an HTTP/2 client may have open at once on one connection to the
/// agent: Envoy's default (2^31 - 1), rather than hyper's 200. Past its
/// peer's limit an HTTP/2 client queues new streams rather than open
/// another connection (h2's and the agent's own pool do), so with 200 the
/// 201st concurrent request from an application, or between two agents,
/// would wait for one of the first to end: forever, behind long-lived gRPC
/// streams.
const MAX_CONCURRENT_STREAMS: u32 = i32::MAX as u32;

/// The HTTP/1.1-or-HTTP/2 server of the agent's listeners.
pub fn http_server() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http2().max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    b
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
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
