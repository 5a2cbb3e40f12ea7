//! The HTTP side: HTTP/1.1 and h2c on one port. `GET /echo/stats` gives
//! the [`Stats`](crate::Stats), `/plain` a fixed `ok` (the cheapest answer, for latency
//! benchmarks), a request with an `Upgrade` header a 101 and byte echo,
//! and any other request the [`Report`] JSON, shaped by its
//! [controls](crate::controls), after the [calls](crate::calls) to make.
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use crate::controls::Controls;
use crate::report::Report;
use crate::{tcp, State};

const STATS_PATH: &str = "/echo/stats";
const PLAIN_PATH: &str = "/plain";

/// A response body: JSON or text, or filler bytes for throughput tests.
type EchoBody = Either<Full<Bytes>, Filler>;

/// Serves one connection, HTTP/1.1 or HTTP/2 as the client's first bytes
/// tell, until the client closes it.
pub(crate) async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    state.http_connections.fetch_add(1, Ordering::Relaxed);
    state.open_http_connections.fetch_add(1, Ordering::Relaxed);
    let _open = Open(state.clone());
    let svc = service_fn(move |req| handle(state.clone(), req));
    // A client that goes away mid-request is no news to a test server.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .await;
}

/// Counts an HTTP connection as open for as long as it lives.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open_http_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    if req.method() == Method::GET && req.uri().path() == STATS_PATH {
        return Ok(json(&state, StatusCode::OK, &state.stats()));
    }
    state.count_request();
    if req.uri().path() == PLAIN_PATH {
        return Ok(text(&state, StatusCode::OK, "ok"));
    }
    if req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE) {
        return Ok(upgrade(&state, req));
    }
    let controls = match Controls::parse(req.headers(), req.uri().query()) {
        Ok(c) => c,
        Err(e) => return Ok(text(&state, StatusCode::BAD_REQUEST, &e.to_string())),
    };
    if let Some(delay) = controls.delay {
        tokio::time::sleep(delay).await;
    }
    let (head, body) = req.into_parts();
    let body_bytes = match read_to_end(body).await {
        Ok(n) => n,
        Err(e) => {
            let msg = format!("reading the request body: {e}");
            return Ok(text(&state, StatusCode::BAD_REQUEST, &msg));
        }
    };
    let status = controls.status(fastrand::f64());
    if let Some(n) = controls.body_bytes {
        let body = Either::Right(Filler { left: n });
        return Ok(respond(
            &state,
            status,
            Some("application/octet-stream"),
            body,
        ));
    }
    let mut report = Report::new(&state.workload, &head, body_bytes);
    if let Some(caller) = &state.caller {
        report.calls = caller.call_all(&head.headers).await;
    }
    Ok(json(&state, status, &report))
}

/// Answers 101 with the protocol asked for, then echoes the bytes of the
/// upgraded connection. No WebSocket framing: proxies see an upgrade and
/// opaque bytes, which is what they must pass through.
fn upgrade(state: &State, req: Request<Incoming>) -> Response<EchoBody> {
    let protocol = req.headers()[UPGRADE].clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            tcp::echo(TokioIo::new(upgraded)).await;
        }
    });
    let body = Either::Left(Full::default());
    let mut resp = respond(state, StatusCode::SWITCHING_PROTOCOLS, None, body);
    let h = resp.headers_mut();
    h.insert(UPGRADE, protocol);
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    resp
}

/// Reads `body` to its end (uploads in benchmarks may be large: counted,
/// not kept).
async fn read_to_end(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}

fn json(state: &State, status: StatusCode, value: &impl serde::Serialize) -> Response<EchoBody> {
    // Serializing plain structs of strings and numbers cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(
        state,
        status,
        Some("application/json"),
        Either::Left(Full::from(body)),
    )
}

fn text(state: &State, status: StatusCode, msg: &str) -> Response<EchoBody> {
    let body = Full::from(Bytes::copy_from_slice(msg.as_bytes()));
    respond(
        state,
        status,
        Some("text/plain; charset=utf-8"),
        Either::Left(body),
    )
}

/// Every response names the workload in `x-echo-service` and
/// `x-echo-version`.
fn respond(
    state: &State,
    status: StatusCode,
    content_type: Option<&'static str>,
    body: EchoBody,
) -> Response<EchoBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Some(t) = content_type {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(t));
    }
    h.insert("x-echo-service", state.service_header.clone());
    h.insert("x-echo-version", state.version_header.clone());
    resp
}

/// One shared chunk of filler, sent again and again without copying.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A body of `left` filler bytes, made as it is sent.
struct Filler {
    left: u64,
}

impl Body for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let n = this.left.min(FILLER.len() as u64);
        this.left -= n;
        let chunk = Bytes::from_static(&FILLER[..n as usize]);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
