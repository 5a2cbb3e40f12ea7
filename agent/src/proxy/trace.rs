//! Trace context. The agent reports no spans (it has no tracer to send
//! them to), so it makes none: W3C `traceparent`/`tracestate` and B3
//! headers pass through it unchanged, end to end, and the spans the
//! applications report join up (the callee's parent is the caller's span).
//! An agent that rewrote the span id for its hop would leave every callee's
//! span pointing at a parent no collector ever hears of. What the agent
//! adds is `x-request-id`, when missing ([`super::ensure_request_id`]).
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers whose values are new on every request: its id and its trace's
/// ids.
const PER_REQUEST: [HeaderName; 6] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
    HeaderName::from_static("b3"),
];

/// A random version-4 UUID, for `x-request-id`, written straight into the
/// header value (one allocation, the value's own).
pub fn uuid_v4() -> HeaderValue {
    let a = fastrand::u128(..);
    let b =
        (a & !(0xf000u128 << 64) | (0x4000u128 << 64)) & !(0xc000u128 << 48) | (0x8000u128 << 48);
    let b = b.to_be_bytes();
    let mut u = [b'-'; 36];
    // 8-4-4-4-12 hex digits: bytes 0..4, 4..6, 6..8, 8..10, 10..16.
    for (bytes, at) in [(0..4, 0), (4..6, 9), (6..8, 14), (8..10, 19), (10..16, 24)] {
        let end = at + 2 * bytes.len();
        hex::encode_to_slice(&b[bytes], &mut u[at..end]).expect("twice as many digits as bytes");
    }
    HeaderValue::from_bytes(&u).expect("hex digits and dashes are a valid header value")
}

/// Marks the values that are new on every request for HPACK's "never
/// indexed", before the request goes on over HTTP/2: indexed, each would
/// take a new entry in the connection's header table and push out the
/// headers that do repeat (the peer metadata, the client certificate
/// details, the application's), which then go out in full again and again.
/// An HTTP/2 decoder does not tell which values its peer marked, so every
/// hop marks them anew.
pub fn never_index_ids(h: &mut HeaderMap) {
    for name in &PER_REQUEST {
        if let Some(v) = h.get_mut(name) {
            v.set_sensitive(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_version_4() {
        let u = uuid_v4();
        let u = u.to_str().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(u.matches('-').count(), 4);
        assert_eq!([&u[8..9], &u[13..14], &u[18..19], &u[23..24]], ["-"; 4]);
        assert!(u.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{u}");
        assert_ne!(u, uuid_v4().to_str().unwrap(), "random");
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn ids_are_never_indexed_by_hpack_and_the_rest_is() {
        let mut h = HeaderMap::new();
        let id = crate::proxy::ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id);
        // One that came with the request is kept.
        assert_eq!(crate::proxy::ensure_request_id(&mut h), id);
        for (k, v) in [
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
            ("content-type", "application/grpc"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        never_index_ids(&mut h);
        for k in ["x-request-id", "traceparent", "x-b3-spanid"] {
            assert!(h[k].is_sensitive(), "{k}");
        }
        for k in ["x-b3-sampled", "content-type"] {
            assert!(!h[k].is_sensitive(), "{k} repeats");
        }
    }
}
