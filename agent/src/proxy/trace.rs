//! Trace context: W3C `traceparent` and B3 headers are propagated, and a
//! request that arrives without any gets a new trace, so the services behind
//! the mesh can join their spans to it. Each agent hop is a span of its own:
//! the trace id is kept and a new span id names this hop.
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");

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

/// Starts this hop's span: keeps the incoming trace (W3C or B3) or starts
/// one, and writes both header styles with a new span id.
pub fn propagate(h: &mut HeaderMap) {
    let (trace_id, sampled) =
        incoming(h).unwrap_or_else(|| (format!("{:032x}", fastrand::u128(1..)), true));
    let span_id = format!("{:016x}", fastrand::u64(1..));
    let flags = if sampled { "01" } else { "00" };
    let parent = match h.get(&B3_SPAN_ID).and_then(|v| v.to_str().ok()) {
        Some(s) => fresh(s),
        None => traceparent_span(h).and_then(|s| fresh(&s)),
    };
    let set = |h: &mut HeaderMap, k: HeaderName, v: Option<HeaderValue>| {
        if let Some(v) = v {
            h.insert(k, v);
        }
    };
    set(
        h,
        TRACEPARENT,
        fresh(&format!("00-{trace_id}-{span_id}-{flags}")),
    );
    set(h, B3_TRACE_ID, fresh(&trace_id));
    set(h, B3_SPAN_ID, fresh(&span_id));
    let sampled = HeaderValue::from_static(if sampled { "1" } else { "0" });
    h.insert(B3_SAMPLED, sampled);
    match parent {
        Some(p) => {
            h.insert(B3_PARENT_SPAN_ID, p);
        }
        None => {
            h.remove(B3_PARENT_SPAN_ID);
        }
    }
}

/// The trace id and sampling decision of the incoming request.
fn incoming(h: &HeaderMap) -> Option<(String, bool)> {
    if let Some(tp) = h.get(&TRACEPARENT).and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.split('-').collect();
        if parts.len() == 4
            && is_hex(parts[1], 32)
            && is_hex(parts[2], 16)
            && parts[1] != "0".repeat(32)
        {
            let sampled = u8::from_str_radix(parts[3], 16).is_ok_and(|f| f & 1 == 1);
            return Some((parts[1].to_string(), sampled));
        }
    }
    let tid = h.get(&B3_TRACE_ID)?.to_str().ok()?;
    if !(is_hex(tid, 32) || is_hex(tid, 16)) {
        return None;
    }
    let sampled = h.get(&B3_SAMPLED).and_then(|v| v.to_str().ok()) != Some("0");
    Some((format!("{tid:0>32}"), sampled))
}

fn traceparent_span(h: &HeaderMap) -> Option<String> {
    let tp = h.get(&TRACEPARENT)?.to_str().ok()?;
    let span = tp.split('-').nth(2)?;
    is_hex(span, 16).then(|| span.to_string())
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
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
    fn ids_made_per_request_are_never_indexed_by_hpack() {
        let mut h = HeaderMap::new();
        propagate(&mut h);
        propagate(&mut h);
        for name in [
            "traceparent",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
        ] {
            assert!(h[name].is_sensitive(), "{name}");
        }
        assert!(!h["x-b3-sampled"].is_sensitive(), "a flag that repeats");
        crate::proxy::ensure_request_id(&mut h);
        assert!(h["x-request-id"].is_sensitive());
    }

    #[test]
    fn starts_a_trace_or_continues_one() {
        let mut h = HeaderMap::new();
        propagate(&mut h);
        let tp = h.get("traceparent").unwrap().to_str().unwrap().to_string();
        let tid = h.get("x-b3-traceid").unwrap().to_str().unwrap().to_string();
        assert!(tp.starts_with(&format!("00-{tid}-")), "{tp}");
        let first_span = h.get("x-b3-spanid").unwrap().clone();
        propagate(&mut h);
        assert_eq!(
            h.get("x-b3-traceid").unwrap().to_str().unwrap(),
            tid,
            "same trace"
        );
        assert_ne!(h.get("x-b3-spanid").unwrap(), &first_span, "new span");
        assert_eq!(h.get("x-b3-parentspanid").unwrap(), &first_span);

        let mut b3 = HeaderMap::new();
        b3.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        b3.insert("x-b3-sampled", HeaderValue::from_static("0"));
        propagate(&mut b3);
        let tp = b3.get("traceparent").unwrap().to_str().unwrap();
        assert!(
            tp.starts_with("00-0000000000000000463ac35c9f6413ad-") && tp.ends_with("-00"),
            "{tp}"
        );
    }
}
