//! Envoy's response flags, which Istio users read in access logs and in
//! the `response_flags` metric label, and the local replies that go with them.
use std::fmt;

use http::{Response, StatusCode};

use super::body::{self, Body};

/// Why a request or connection ended the way it did, when not simply by the
/// upstream's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    /// No healthy upstream endpoint.
    NoHealthyUpstream,
    /// Connecting to the upstream failed.
    UpstreamConnectFailure,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// Retries exhausted (or the retry budget spent) and the last try failed.
    UpstreamRetryLimitExceeded,
    /// A connection pool limit was hit.
    UpstreamOverflow,
    /// The downstream went away before the response was done.
    DownstreamConnectionTermination,
    /// No route matched.
    NoRouteFound,
    /// The request was aborted by fault injection.
    FaultInjected,
    /// The request was delayed by fault injection.
    DelayInjected,
    /// The upstream connection or stream broke before a response.
    UpstreamConnectionTermination,
    /// The downstream sent something that is not valid HTTP.
    DownstreamProtocolError,
}

impl Flag {
    /// The short name in access logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectFailure => "UF",
            Flag::UpstreamTimeout => "UT",
            Flag::UpstreamRetryLimitExceeded => "URX",
            Flag::UpstreamOverflow => "UO",
            Flag::DownstreamConnectionTermination => "DC",
            Flag::NoRouteFound => "NR",
            Flag::FaultInjected => "FI",
            Flag::DelayInjected => "DI",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::DownstreamProtocolError => "DPE",
        }
    }

    /// The reply the agent sends itself when this flag ends a request, with
    /// the status and body text Envoy uses, so clients and scripts written
    /// for Istio see what they expect.
    pub fn local_reply(self) -> Response<Body> {
        let (status, text) = match self {
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
            Flag::NoRouteFound => (StatusCode::NOT_FOUND, ""),
            Flag::DownstreamProtocolError => (StatusCode::BAD_REQUEST, "bad request"),
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
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
