//! The local replies that go with Envoy's response flags
//! ([`Flag`]): what the agent answers itself when it ends a request.
use http::{Response, StatusCode};
use trellis_dataplane::telemetry::Flag;

use super::body::{self, Body};

/// The reply the agent sends itself when `flag` ends a request, with the
/// status and body text Envoy uses, so clients and scripts written for
/// Istio see what they expect.
pub fn local_reply(flag: Flag) -> Response<Body> {
    let (status, text) = match flag {
        Flag::NoHealthyUpstream => (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
        Flag::UpstreamConnectFailure => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        ),
        Flag::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        Flag::UpstreamOverflow => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        ),
        Flag::UpstreamConnectionTermination | Flag::UpstreamRetryLimitExceeded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        ),
        Flag::UpstreamProtocolError => (
            StatusCode::BAD_GATEWAY,
            "upstream connect error or disconnect/reset before headers. reset reason: protocol error",
        ),
        Flag::NoRouteFound => (StatusCode::NOT_FOUND, ""),
        Flag::DownstreamProtocolError => return bad_request("bad request"),
        // Fault replies carry the configured status; callers build those.
        Flag::FaultInjected | Flag::DelayInjected | Flag::DownstreamConnectionTermination => {
            (StatusCode::SERVICE_UNAVAILABLE, "")
        }
    };
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
    }
    resp
}

/// The reply to a request the agent cannot carry as the client sent it
/// (`DPE`): `400`, and why; an HTTP/1.1 connection then closes, as after
/// Envoy's codec errors (hyper drops the header on HTTP/2).
pub fn bad_request(why: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(why));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}
