//! Pooled plaintext HTTP/1.1 connections, to the local application and to
//! endpoints without an agent, by address and [`ConnSettings`] ([`PlainKey`]),
//! on the bookkeeping of the HTTP/2 pool ([`super::pool`]): a connection
//! carries one request at a time, is retired after
//! `maxRequestsPerConnection` requests and closed when idle for
//! `idleTimeout`. It goes back to the pool when its response has been read
//! to the end; a response given up before then takes its connection with
//! it (hyper closes it).
//!
//! hyper's connection API, not its pooled client: that one boxed each
//! request's future (3.4 KB), formatted and parsed an absolute URI per
//! request, attached connection info to every response and needed a watch
//! on the connection to count its requests.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::uri::{self, PathAndQuery};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::body::{Body, BoxError};
use super::failure::Failure;
use super::pool::{self, Capacity, Conns, PlainKey, Shared, Stream};
use trellis_dataplane::mesh::cluster::Reuse;
use trellis_transport::connect::{self, ConnectOpts};

/// A pooled connection's sender: there while the connection is idle, taken
/// by the one request it carries and put back at that response's end. An
/// empty slot with no request on it is a connection given up.
#[derive(Clone)]
struct Slot(Arc<Mutex<Option<SendRequest<Body>>>>);

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<Body>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Capacity for Slot {
    /// HTTP/1.1: one request at a time.
    fn streams(&self) -> usize {
        1
    }
}

/// HTTP/1.1 connections by address and settings.
pub struct Http1Pool {
    conns: Shared<PlainKey, Slot>,
    next_id: AtomicU64,
    /// How its connections read responses ([`client_builder`]).
    builder: http1::Builder,
}

impl Http1Pool {
    /// Connections that take response heads of up to
    /// `max_response_headers` bytes.
    pub fn new(max_response_headers: u32) -> Self {
        Self {
            conns: Arc::new(Mutex::new(Conns::new())),
            next_id: AtomicU64::new(0),
            builder: client_builder(max_response_headers),
        }
    }

    /// Sends `req` to `key.addr` over HTTP/1.1, on an idle pooled
    /// connection or a new one opened with `opts`, reused as `reuse`
    /// allows. The request keeps its `Host` (one is set from the URI's
    /// authority, else the address, if it has none) and goes in origin
    /// form.
    pub async fn send(
        &self,
        key: &PlainKey,
        opts: &ConnectOpts,
        reuse: &Reuse,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        prepare(&mut req, key.addr);
        // Idle connections first. One the server closed while it was idle
        // gives the request back unsent: it goes on the next, or a new one.
        loop {
            let Some((slot, id, stream)) = self.lock().checkout(key, reuse, Instant::now()) else {
                break;
            };
            let taken = slot.state().take();
            let Some(mut sender) = taken else {
                self.lock().remove(key, id);
                continue;
            };
            if sender.ready().await.is_err() {
                self.lock().remove(key, id);
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(held(resp, sender, Some((slot, stream)))),
                Err(mut e) => {
                    self.lock().remove(key, id);
                    match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(failed(key.addr, &e.into_error())),
                    }
                }
            }
        }
        // Boxed: the connect is the rare path, and inline its state would
        // make every request's future larger.
        Box::pin(self.open_and_send(key, opts, reuse, req)).await
    }

    /// Sends `req` on a new connection, pooled (idle once the response has
    /// ended) when `reuse` allows more than one request.
    async fn open_and_send(
        &self,
        key: &PlainKey,
        opts: &ConnectOpts,
        reuse: &Reuse,
        req: Request<Body>,
    ) -> Result<Response<Body>, Failure> {
        let addr = key.addr;
        let io = connect::tcp(addr, opts).await.map_err(|e| {
            tracing::debug!(%addr, error = %e, "connect to the application failed");
            Failure::Connect
        })?;
        let (mut sender, conn) = self
            .builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                tracing::debug!(%addr, error = %e, "HTTP/1.1 handshake failed");
                Failure::Connect
            })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let run = async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/1.1 connection closed");
            }
        };
        let slot = Slot(Arc::new(Mutex::new(None)));
        let stream = pool::pool_and_watch(&self.conns, key, slot.clone(), id, reuse, addr, run);
        match sender.send_request(req).await {
            Ok(resp) => Ok(held(resp, sender, stream.map(|s| (slot, s)))),
            Err(e) => {
                self.lock().remove(key, id);
                Err(failed(addr, &e))
            }
        }
    }

    /// Number of pooled connections.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns<PlainKey, Slot>> {
        pool::lock(&self.conns)
    }
}

/// An HTTP/1.1 client that takes a response head (status line and
/// headers) of at most `max_response_headers` bytes: a larger one (or more
/// than 100 headers, hyper's and Envoy's limit) fails to parse, an
/// upstream protocol error.
pub fn client_builder(max_response_headers: u32) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.max_header_size(max_response_headers as usize);
    b
}

/// `req` as an HTTP/1.1 request on a connection of its own to `addr`:
/// origin form, and a `Host`.
pub(super) fn prepare(req: &mut Request<Body>, addr: SocketAddr) {
    if !req.headers().contains_key(header::HOST) {
        let host = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()),
            None => HeaderValue::from_str(&addr.to_string()),
        };
        if let Ok(h) = host {
            req.headers_mut().insert(header::HOST, h);
        }
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let mut parts = uri::Parts::default();
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if let Ok(u) = Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Why a request to `addr` failed.
fn failed(addr: SocketAddr, e: &hyper::Error) -> Failure {
    tracing::debug!(%addr, error = %trellis_identity::grpc::error_chain(e), "request to the application failed");
    Failure::of_hyper(e)
}

/// The response, holding its connection until its body has ended: then
/// the sender goes back into its pooled slot (`home`) and the connection
/// is idle, or (not pooled) is dropped, which closes it.
fn held(resp: Response<Incoming>, sender: SendRequest<Body>, home: Option<Home>) -> Response<Body> {
    use http_body_util::BodyExt;
    resp.map(|inner| {
        Held {
            inner,
            conn: Some((sender, home)),
        }
        .boxed()
    })
}

/// Where a pooled connection's sender goes back to, and the request's hold
/// on the connection (which makes it idle when let go).
type Home = (Slot, Stream);

/// A response body and the connection it came on.
struct Held {
    inner: Incoming,
    conn: Option<(SendRequest<Body>, Option<Home>)>,
}

impl Held {
    /// The response has ended: its connection is free for the next request
    /// once hyper is done with this one (usually at once; a request body
    /// still uploading after an early answer keeps it busy until it ends,
    /// and meanwhile the connection counts as in use, so that the next
    /// request does not wait for it).
    fn release(&mut self) {
        let Some((mut sender, Some((slot, mut stream)))) = self.conn.take() else {
            return;
        };
        if sender.is_ready() {
            *slot.state() = Some(sender);
            stream.end(Instant::now());
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if sender.ready().await.is_ok() {
                    *slot.state() = Some(sender);
                }
                stream.end(Instant::now());
            });
        }
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => me.release(),
            Poll::Ready(Some(Ok(_))) if me.inner.is_end_stream() => me.release(),
            Poll::Ready(Some(Err(_))) => me.conn = None,
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Held {
    /// A body dropped at its end (one that was empty, say, and never
    /// polled) frees the connection too; one dropped before takes it along.
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proxy::body;
    use trellis_testing::eventually;

    const LIMIT: u32 = crate::proxy::DEFAULT_MAX_HEADERS_KB * 1024;
    use trellis_transport::testing::counting_server;

    fn opts() -> ConnectOpts {
        ConnectOpts {
            timeout: Duration::from_secs(5),
            mark: None,
            keepalive: None,
        }
    }

    fn key(addr: SocketAddr) -> PlainKey {
        PlainKey {
            addr,
            settings: pool::ConnSettings::new(&opts(), None),
        }
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(body::empty()).unwrap()
    }

    /// A server that answers each request on a connection with `answer`,
    /// after reading its head, and closes the connection `close_after`
    /// the first answer (`None`: keeps it).
    async fn raw_server(
        answer: &'static [u8],
        close_after: Option<Duration>,
    ) -> trellis_transport::testing::Counting {
        counting_server(move |mut s| async move {
            let mut buf = vec![0; 4096];
            loop {
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if s.write_all(answer).await.is_err() {
                    return;
                }
                if let Some(after) = close_after {
                    tokio::time::sleep(after).await;
                    return;
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn the_request_goes_in_origin_form_with_its_host() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = seen.clone();
        let server = counting_server(move |mut s| {
            let got = got.clone();
            async move {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap();
                got.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        })
        .await;
        let pool = Http1Pool::new(LIMIT);
        let reqs = [
            Request::get("http://reviews:9080/r?x=1")
                .body(body::empty())
                .unwrap(),
            Request::get("/plain").body(body::empty()).unwrap(),
        ];
        for req in reqs {
            let key = key(server.addr);
            let resp = pool
                .send(&key, &opts(), &Reuse::default(), req)
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        let seen = seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /r?x=1 HTTP/1.1\r\n"),
            "{}",
            seen[0]
        );
        assert!(seen[0].contains("host: reviews:9080\r\n"), "{}", seen[0]);
        assert!(
            seen[1].starts_with("GET /plain HTTP/1.1\r\n"),
            "{}",
            seen[1]
        );
        assert!(
            seen[1].contains(&format!("host: {}\r\n", server.addr)),
            "{}",
            seen[1]
        );
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_used_again() {
        let server = raw_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Some(Duration::from_millis(50)),
        )
        .await;
        let pool = Http1Pool::new(LIMIT);
        let key = key(server.addr);
        for _ in 0..3 {
            let resp = pool
                .send(&key, &opts(), &Reuse::default(), get("/"))
                .await
                .unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
            eventually("the server closed it", || server.open.load(SeqCst) == 0).await;
        }
        assert_eq!(server.accepted.load(SeqCst), 3);
    }

    #[tokio::test]
    async fn a_response_ended_unread_frees_its_connection_and_one_given_up_takes_it_along() {
        // Empty bodies, dropped without being read: one connection.
        let empty = raw_server(b"HTTP/1.1 204 No Content\r\n\r\n", None).await;
        let pool = Http1Pool::new(LIMIT);
        for _ in 0..3 {
            let resp = pool
                .send(&key(empty.addr), &opts(), &Reuse::default(), get("/"))
                .await;
            assert_eq!(resp.unwrap().status(), 204);
        }
        assert_eq!(empty.accepted.load(SeqCst), 1);
        assert_eq!(pool.len(), 1);
        // A body given up half-way: its connection is closed, the next
        // request gets a new one.
        let long = raw_server(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
            None,
        )
        .await;
        let key = key(long.addr);
        let resp = pool
            .send(&key, &opts(), &Reuse::default(), get("/"))
            .await
            .unwrap();
        let mut b = resp.into_body();
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ok");
        drop(b);
        eventually("the abandoned connection closed", || {
            long.open.load(SeqCst) == 0
        })
        .await;
        let resp = pool.send(&key, &opts(), &Reuse::default(), get("/")).await;
        assert_eq!(resp.unwrap().status(), 200);
        assert_eq!(long.accepted.load(SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_still_uploading_after_an_early_answer_is_not_handed_out() {
        // The server answers 413 after the head, keeps the connection and
        // reads nothing more; the first request's body never ends.
        let server = raw_server(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
            None,
        )
        .await;
        let pool = Http1Pool::new(LIMIT);
        let key = key(server.addr);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let uploading =
            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = Request::post("/").body(uploading.boxed()).unwrap();
        let first = pool
            .send(&key, &opts(), &Reuse::default(), req)
            .await
            .unwrap();
        assert_eq!(first.status(), 413);
        drop(first);
        let second = tokio::time::timeout(
            Duration::from_secs(5),
            pool.send(&key, &opts(), &Reuse::default(), get("/")),
        )
        .await
        .expect("the second request waited for the first one's upload");
        assert_eq!(second.unwrap().status(), 413);
        assert_eq!(server.accepted.load(SeqCst), 2, "a connection of its own");
        drop(tx);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let pool = Http1Pool::new(LIMIT);
        let r = pool
            .send(&key(addr), &opts(), &Reuse::default(), get("/"))
            .await;
        assert_eq!(r.err(), Some(Failure::Connect));
    }
}
