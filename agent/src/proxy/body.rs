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

/// A body of known bytes.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// No body.
pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}
