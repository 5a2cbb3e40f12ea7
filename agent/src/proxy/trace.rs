//! Trace context. The agent reports no spans (it has no tracer to send
//! them to), so it makes none: W3C `traceparent`/`tracestate` and B3
//! headers pass through it unchanged, end to end, and the spans the
//! applications report join up (the callee's parent is the caller's span).
//! An agent that rewrote the span id for its hop would leave every callee's
//! span pointing at a parent no collector ever hears of. What the agent
//! adds is `x-request-id`, when missing ([`super::ensure_request_id`]).
use http::HeaderValue;

/// A random version-4 UUID, for `x-request-id`.
pub fn uuid_v4() -> String {
    let a = fastrand::u128(..);
    let b =
        (a & !(0xf000u128 << 64) | (0x4000u128 << 64)) & !(0xc000u128 << 48) | (0x8000u128 << 48);
    let mut u = format!("{b:032x}");
    for i in [20, 16, 12, 8] {
        u.insert(i, '-');
    }
    u
}

/// A header value that is new on every request (an id), marked for HPACK's
/// "never indexed": indexing it would only push the headers that do repeat
/// (the peer metadata, the application's) out of the HTTP/2 header table of
/// the connection between the agents.
pub fn fresh(v: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(v).ok()?;
    v.set_sensitive(true);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn a_request_id_made_here_is_never_indexed_by_hpack() {
        let mut h = http::HeaderMap::new();
        let id = crate::proxy::ensure_request_id(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
        assert!(h["x-request-id"].is_sensitive());
        // One that came with the request is kept.
        assert_eq!(crate::proxy::ensure_request_id(&mut h), id);
    }
}
