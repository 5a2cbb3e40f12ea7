//! The body type every hop of the proxy speaks, and the error type inside it.
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: streamed from a peer, or made here.
pub type Body = BoxBody<Bytes, BoxError>;

/// A streamed body from hyper, boxed.
pub fn incoming(b: hyper::body::Incoming) -> Body {
    b.map_err(BoxError::from).boxed()
}

pin_project_lite::pin_project! {
    /// A body that keeps `hold` until it is dropped.
    struct Holding<B, H> {
        #[pin]
        inner: B,
        hold: H,
    }
}

impl<B, H> hyper::body::Body for Holding<B, H>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        self.project()
            .inner
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// [`incoming`], keeping `hold` (say, a claim on the connection it came
/// on) for as long as the body lives.
pub fn incoming_holding<H: Send + Sync + 'static>(b: hyper::body::Incoming, hold: H) -> Body {
    Holding { inner: b, hold }.boxed()
}

/// A body of known bytes.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hyper::body::Body as _;

    use super::*;

    #[tokio::test]
    async fn a_holding_body_keeps_its_hold_until_dropped() {
        let hold = Arc::new(());
        let body = Holding {
            inner: Full::new(Bytes::from_static(b"data")),
            hold: hold.clone(),
        }
        .boxed();
        assert_eq!(Arc::strong_count(&hold), 2);
        let mut body = body;
        assert!(!body.is_end_stream());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "data");
        assert!(body.is_end_stream());
        assert_eq!(
            Arc::strong_count(&hold),
            2,
            "held to the end, not past the data"
        );
        drop(body);
        assert_eq!(Arc::strong_count(&hold), 1);
    }
}
