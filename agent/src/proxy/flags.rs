//! The local replies that go with Envoy's response flags
//! ([`Flag`]): what the agent answers itself when it ends a request. A
//! gRPC client gets them as gRPC answers them: trailers-only, with the
//! HTTP status mapped to a `grpc-status` as Envoy maps it.
use http::header::{CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use trellis_dataplane::telemetry::Flag;

use super::body::{self, Body};

/// The reply the agent sends itself when `flag` ends a request, with the
/// status and body text Envoy uses, so clients and scripts written for
/// Istio see what they expect; trailers-only gRPC if `grpc`.
pub fn local_reply(flag: Flag, grpc: bool) -> Response<Body> {
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
        Flag::DownstreamProtocolError => return bad_request("bad request", grpc),
        // Fault replies carry the configured status; callers build those.
        Flag::FaultInjected | Flag::DelayInjected | Flag::DownstreamConnectionTermination => {
            (StatusCode::SERVICE_UNAVAILABLE, "")
        }
    };
    reply(status, text, grpc)
}

/// The reply to a request the agent cannot carry as the client sent it
/// (`DPE`): `400`, and why; an HTTP/1.1 connection then closes, as after
/// Envoy's codec errors (hyper drops the header on HTTP/2).
pub fn bad_request(why: &'static str, grpc: bool) -> Response<Body> {
    let mut resp = reply(StatusCode::BAD_REQUEST, why, grpc);
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A local reply: `status` with `text` as a plain-text body, or for a
/// gRPC request the trailers-only answer Envoy makes of it (HTTP 200,
/// `grpc-status` from the status, `grpc-message` the text).
pub fn reply(status: StatusCode, text: &str, grpc: bool) -> Response<Body> {
    if grpc {
        return grpc_reply(grpc_status_of(status), text);
    }
    let mut resp = Response::new(if text.is_empty() {
        body::empty()
    } else {
        body::full(bytes::Bytes::copy_from_slice(text.as_bytes()))
    });
    *resp.status_mut() = status;
    if !text.is_empty() {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp
}

/// A trailers-only gRPC answer: HTTP 200 and no body, its status (and
/// message, if any) in the headers.
pub fn grpc_reply(code: u16, message: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// Envoy's mapping of a local reply's HTTP status to a gRPC status
/// (`Grpc::Utility::httpToGrpcStatus`).
pub fn grpc_status_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message` as gRPC encodes it: bytes outside printable ASCII, and
/// `%`, percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use hyper::body::Body as _;

    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_as_envoy_maps_them() {
        let cases = [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 14),
            (502, 14),
            (503, 14),
            (504, 14),
            (418, 2),
            (500, 2),
        ];
        for (http, grpc) in cases {
            let status = StatusCode::from_u16(http).unwrap();
            assert_eq!(grpc_status_of(status), grpc, "{http}");
        }
    }

    #[test]
    fn a_grpc_client_gets_local_replies_trailers_only() {
        let r = local_reply(Flag::UpstreamTimeout, true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "upstream request timeout");
        assert!(
            r.body().is_end_stream(),
            "no body: the headers end the stream"
        );
        let nr = local_reply(Flag::NoRouteFound, true);
        assert_eq!(nr.headers()["grpc-status"], "12");
        assert!(nr.headers().get("grpc-message").is_none());
        let plain = local_reply(Flag::UpstreamTimeout, false);
        assert_eq!(plain.status(), 504);
        assert!(plain.headers().get("grpc-status").is_none());
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b"), "a b");
        assert_eq!(percent_encode("100%\n"), "100%25%0A");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
