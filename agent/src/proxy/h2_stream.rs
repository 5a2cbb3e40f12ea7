//! One request on a pooled HTTP/2 connection ([`super::pool`]), driven
//! with `h2` itself rather than through hyper's client.
//!
//! hyper's client passes each request through a channel to a dispatch task,
//! which opens the stream and spawns one more task per request to await the
//! response and hand it back through a oneshot. Here the request's own task
//! opens the stream, sends the body as it comes (a buffered body, or a
//! unary gRPC message that came with its headers, before the first await)
//! while it waits for the response, and is woken with the response by the
//! connection's task. Only a body still streaming once the response has
//! come (gRPC client or bidirectional streaming) gets a task of its own.
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{header, HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};

use super::body::{Body, BoxError};
use super::failure::{downstream_body, Failure};

/// Why a request on a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The stream could not be opened (the connection is going away): the
    /// request was not sent.
    #[error("stream not opened: {0}")]
    NotSent(#[source] h2::Error),
    /// The stream failed before its response head came.
    #[error(transparent)]
    Stream(h2::Error),
    /// The request body failed (it is the client's, streamed through), and
    /// the stream was reset for it.
    #[error("request body failed: {0}")]
    Body(#[source] BoxError),
}

impl SendError {
    /// What the failure means for the request.
    pub fn failure(&self) -> Failure {
        match self {
            // The connection is going away: safe to send elsewhere.
            SendError::NotSent(e) if e.is_go_away() || e.is_io() || e.is_reset() => {
                Failure::Refused
            }
            // h2 refused the request itself: it cannot be carried as the
            // client made it, here or anywhere.
            SendError::NotSent(_) => Failure::DownstreamProtocol,
            SendError::Stream(e) => Failure::of_h2(e),
            SendError::Body(e) => downstream_body(&**e).unwrap_or(Failure::Reset),
        }
    }
}

/// Sends `req` on `sender` (ready for a new stream) and waits for the
/// response head. The response body keeps `hold` until it is dropped.
pub async fn send<H: Send + Sync + Unpin + 'static>(
    sender: &mut SendRequest<Bytes>,
    req: Request<Body>,
    hold: H,
) -> Result<Response<Body>, SendError> {
    let (mut head, body) = req.into_parts();
    // As hyper's client: a body of known length says so.
    if let Some(n) = body.size_hint().exact() {
        let payload = !matches!(
            head.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if n != 0 || payload {
            head.headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| n.into());
        }
    }
    let eos = body.is_end_stream();
    let (mut response, tx) = sender
        .send_request(Request::from_parts(head, ()), eos)
        .map_err(SendError::NotSent)?;
    let mut upload = Upload((!eos).then_some(Pipe {
        body,
        tx,
        held: None,
    }));
    // The body goes out from this task while the response is awaited:
    // what it has now in this turn, with the headers, the rest as it comes
    // (a unary gRPC message often comes in a read after its headers).
    let mut body_failed = None;
    let response = std::future::poll_fn(|cx| {
        if let Some(pipe) = &mut upload.0 {
            if let Poll::Ready(sent) = pipe.step(cx) {
                upload.0 = None;
                body_failed = sent.err();
            }
        }
        Pin::new(&mut response).poll(cx)
    })
    .await
    .map_err(|e| match body_failed.take() {
        // The stream was reset because the body failed: that is why.
        Some(b) => SendError::Body(b),
        None => SendError::Stream(e),
    })?;
    // The response came: a body still uploading goes on, on a task of its
    // own (gRPC streaming).
    if let Some(pipe) = upload.0.take() {
        tokio::spawn(pipe);
    }
    // As hyper: a response that ended with its head has no body.
    let length =
        content_length(response.headers()).or_else(|| response.body().is_end_stream().then_some(0));
    Ok(response.map(|recv| {
        RecvBody {
            recv,
            data_done: false,
            length,
            _hold: hold,
        }
        .boxed()
    }))
}

/// The exact length a `Content-Length` header gives, if any.
fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Copies a request body onto its stream, within the flow-control window
/// the peer gives; ends when the body has been sent, or the stream or the
/// body failed (the stream is then reset).
struct Pipe {
    body: Body,
    tx: SendStream<Bytes>,
    /// A chunk taken from the body, waiting for window to be sent in, and
    /// whether it is the last.
    held: Option<(Bytes, bool)>,
}

impl Pipe {
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if let Poll::Ready(reason) = self.tx.poll_reset(cx)? {
                return Poll::Ready(Err(format!("stream reset by the peer: {reason}").into()));
            }
            if self.held.is_some() {
                while self.tx.capacity() == 0 {
                    match ready!(self.tx.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(e.into())),
                        None => return Poll::Ready(Err("stream closed".into())),
                    }
                }
                let (data, eos) = self.held.take().expect("checked above");
                self.tx.send_data(data, eos)?;
                if eos {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The body is polled before any window is claimed: a claim
            // held while the body has nothing would hold the connection's
            // window from the other streams (hyper #4003).
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let eos = self.body.is_end_stream();
                        if data.is_empty() {
                            if eos {
                                self.tx.send_data(data, true)?;
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        // One byte claimed: h2 raises it to what is sent.
                        self.tx.reserve_capacity(1);
                        self.held = Some((data, eos));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.tx.reserve_capacity(0);
                            self.tx.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.tx.send_reset(reset_reason(&*e));
                    return Poll::Ready(Err(e));
                }
                None => {
                    self.tx.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// The code to reset a stream with for a body that failed with `e`: the
/// one the body's own stream was reset with (a gRPC client's CANCEL
/// reaches the server as CANCEL; NO_ERROR, which would make a cut-off
/// upload look whole, as CANCEL), else INTERNAL_ERROR. A connection's
/// GOAWAY code is not the stream's.
fn reset_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(r) = e
            .downcast_ref::<h2::Error>()
            .filter(|e| !e.is_go_away())
            .and_then(h2::Error::reason)
        {
            return if r == Reason::NO_ERROR {
                Reason::CANCEL
            } else {
                r
            };
        }
        next = e.source();
    }
    Reason::INTERNAL_ERROR
}

impl Future for Pipe {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().step(cx).map(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "request body not sent whole");
            }
        })
    }
}

/// A request body being sent while its response is awaited; dropped before
/// the response came (the request was given up, say by a timeout), it
/// resets the stream.
struct Upload(Option<Pipe>);

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(p) = &mut self.0 {
            p.tx.send_reset(Reason::CANCEL);
        }
    }
}

/// The end of a response body reset with `e`: RST_STREAM(NO_ERROR) is the
/// server saying it needs no more of the request (RFC 9113, 8.1), which
/// ends the response as hyper ends it; any other code is an error.
fn ended_or(e: h2::Error) -> Option<Result<Frame<Bytes>, BoxError>> {
    if e.reason() == Some(Reason::NO_ERROR) {
        return None;
    }
    Some(Err(e.into()))
}

/// A response body: its DATA (each chunk's window given
/// back to the peer as it is read), then its trailers.
struct RecvBody<H> {
    recv: RecvStream,
    data_done: bool,
    /// What is left of the `Content-Length`, if given.
    length: Option<u64>,
    /// Kept for as long as the body lives.
    _hold: H,
}

impl<H: Unpin> hyper::body::Body for RecvBody<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        if !me.data_done {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    if let Some(n) = &mut me.length {
                        *n = n.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(ended_or(e)),
                None => me.data_done = true,
            }
        }
        match ready!(me.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(ended_or(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.length
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    use super::*;
    use crate::proxy::body;

    /// An h2 client connection to an h2 server over an in-memory pipe, and
    /// the server's incoming requests.
    async fn pair() -> (
        SendRequest<Bytes>,
        mpsc::UnboundedReceiver<(Request<RecvStream>, h2::server::SendResponse<Bytes>)>,
    ) {
        let (c, s) = tokio::io::duplex(1 << 20);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            while let Some(Ok(r)) = conn.accept().await {
                let _ = tx.send(r);
            }
        });
        let (sender, conn) = h2::client::handshake(c).await.unwrap();
        tokio::spawn(conn);
        (sender.ready().await.unwrap(), rx)
    }

    /// All of a request's body as the server got it, and its trailers.
    async fn read_all(mut r: RecvStream) -> (Vec<u8>, Option<HeaderMap>) {
        let mut got = Vec::new();
        while let Some(d) = r.data().await {
            let d = d.unwrap();
            let _ = r.flow_control().release_capacity(d.len());
            got.extend_from_slice(&d);
        }
        (got, r.trailers().await.unwrap())
    }

    /// The code the stream `recv` reads from is reset with (within 5 s).
    async fn reset_code(recv: &mut RecvStream) -> Option<Reason> {
        let next = tokio::time::timeout(Duration::from_secs(5), recv.data());
        let err = next.await.expect("reset, not left open").unwrap();
        err.unwrap_err().reason()
    }

    /// A body fed through a channel, as a body streaming from a client.
    fn channel_body() -> (mpsc::UnboundedSender<Frame<Bytes>>, Body) {
        let (tx, rx) = mpsc::unbounded_channel::<Frame<Bytes>>();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        use tokio_stream::StreamExt;
        let body = StreamBody::new(stream.map(Ok::<_, BoxError>)).boxed();
        (tx, body)
    }

    fn trailers(status: &'static str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static(status));
        t
    }

    #[tokio::test]
    async fn a_buffered_body_goes_with_its_length_and_the_response_comes_back_whole() {
        let (mut sender, mut requests) = pair().await;
        let hold = Arc::new(());
        let req = Request::post("http://reviews:9080/r")
            .body(body::full("ping"))
            .unwrap();
        let server = tokio::spawn(async move {
            let (req, mut respond) = requests.recv().await.unwrap();
            let length = req.headers().get(header::CONTENT_LENGTH).cloned();
            let (got, _) = read_all(req.into_body()).await;
            let resp = Response::builder()
                .header(header::CONTENT_LENGTH, "4")
                .body(())
                .unwrap();
            let mut tx = respond.send_response(resp, false).unwrap();
            tx.send_data(Bytes::from_static(b"pong"), false).unwrap();
            tx.send_trailers(trailers("0")).unwrap();
            (length, got)
        });
        let resp = send(&mut sender, req, hold.clone()).await.unwrap();
        let (length, got) = server.await.unwrap();
        assert_eq!(length.unwrap(), "4", "Content-Length from the body's size");
        assert_eq!(got, b"ping");
        assert_eq!(resp.body().size_hint().exact(), Some(4));
        assert_eq!(Arc::strong_count(&hold), 2, "held by the response body");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "pong");
        assert_eq!(Arc::strong_count(&hold), 1, "let go with the body");
    }

    #[tokio::test]
    async fn a_streaming_body_keeps_uploading_after_the_response_came() {
        let (mut sender, mut requests) = pair().await;
        let (chunks, req_body) = channel_body();
        chunks
            .send(Frame::data(Bytes::from_static(b"one ")))
            .unwrap();
        let req = Request::post("http://echo:50051/e").body(req_body).unwrap();
        let server = tokio::spawn(async move {
            let (req, mut respond) = requests.recv().await.unwrap();
            let mut tx = respond.send_response(Response::new(()), false).unwrap();
            let (got, trailers_got) = read_all(req.into_body()).await;
            tx.send_data(Bytes::from(got), true).unwrap();
            trailers_got
        });
        let resp = send(&mut sender, req, ()).await.unwrap();
        assert_eq!(resp.status(), 200, "the response before the body ended");
        chunks
            .send(Frame::data(Bytes::from_static(b"two")))
            .unwrap();
        chunks.send(Frame::trailers(trailers("7"))).unwrap();
        drop(chunks);
        let echoed = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, "one two");
        assert_eq!(server.await.unwrap().unwrap()["grpc-status"], "7");
    }

    #[tokio::test]
    async fn a_body_that_comes_after_its_headers_is_sent_while_the_response_is_awaited() {
        let (mut sender, mut requests) = pair().await;
        let (chunks, req_body) = channel_body();
        let req = Request::post("http://echo:50051/e").body(req_body).unwrap();
        // The server answers only once it has the whole body.
        let server = tokio::spawn(async move {
            let (req, mut respond) = requests.recv().await.unwrap();
            let (got, _) = read_all(req.into_body()).await;
            let mut tx = respond.send_response(Response::new(()), false).unwrap();
            tx.send_data(Bytes::from(got), true).unwrap();
        });
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            chunks
                .send(Frame::data(Bytes::from_static(b"late")))
                .unwrap();
        });
        let resp = tokio::time::timeout(Duration::from_secs(5), send(&mut sender, req, ()))
            .await
            .expect("the body went out while the response was awaited")
            .unwrap();
        let echoed = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(echoed, "late");
        feed.await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_request_given_up_before_its_response_resets_its_stream() {
        let (mut sender, mut requests) = pair().await;
        let (chunks, req_body) = channel_body();
        let req = Request::post("http://echo:50051/e").body(req_body).unwrap();
        let gave_up =
            tokio::time::timeout(Duration::from_millis(50), send(&mut sender, req, ())).await;
        assert!(gave_up.is_err(), "no response yet");
        let (req, _respond) = requests.recv().await.unwrap();
        let mut recv = req.into_body();
        assert_eq!(reset_code(&mut recv).await, Some(Reason::CANCEL));
        assert!(
            chunks
                .send(Frame::data(Bytes::from_static(b"late")))
                .is_err(),
            "the body is no longer read"
        );
    }

    #[tokio::test]
    async fn a_client_that_cancels_its_upload_cancels_the_upstream_stream() {
        // Downstream: a client whose request body is relayed upstream, as
        // the agent relays one body into the next hop's stream.
        let (mut client, mut downstream) = pair().await;
        let (mut sender, mut upstream) = pair().await;
        let (resp, mut upload) = client
            .send_request(Request::post("http://echo/e").body(()).unwrap(), false)
            .unwrap();
        upload
            .send_data(Bytes::from_static(b"part"), false)
            .unwrap();
        let (req, _respond) = downstream.recv().await.unwrap();
        let (head, recv) = req.into_parts();
        let relayed = RecvBody {
            recv,
            data_done: false,
            length: None,
            _hold: (),
        }
        .boxed();
        let relay =
            tokio::spawn(
                async move { send(&mut sender, Request::from_parts(head, relayed), ()).await },
            );
        let (req, _respond_up) = upstream.recv().await.unwrap();
        let mut recv = req.into_body();
        assert_eq!(recv.data().await.unwrap().unwrap(), "part");
        upload.send_reset(Reason::CANCEL);
        assert_eq!(reset_code(&mut recv).await, Some(Reason::CANCEL));
        relay.abort();
        drop(resp);
    }

    #[test]
    fn a_failed_body_resets_with_the_code_it_was_reset_with() {
        #[derive(Debug)]
        struct Wrapped(h2::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "body failed")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let cancelled: BoxError = Box::new(Wrapped(Reason::CANCEL.into()));
        assert_eq!(reset_reason(&*cancelled), Reason::CANCEL);
        let done: BoxError = Box::new(Wrapped(Reason::NO_ERROR.into()));
        assert_eq!(reset_reason(&*done), Reason::CANCEL, "never NO_ERROR");
        let other: BoxError = "the client went away".into();
        assert_eq!(reset_reason(&*other), Reason::INTERNAL_ERROR);
    }

    #[test]
    fn a_response_reset_with_no_error_ends_and_any_other_code_fails() {
        assert!(ended_or(Reason::NO_ERROR.into()).is_none());
        assert!(matches!(ended_or(Reason::CANCEL.into()), Some(Err(_))));
    }
}
