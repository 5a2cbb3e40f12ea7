//! Header plumbing between HTTP versions: hop-by-hop headers are the
//! connection's business and never forwarded; `Host` and `:authority` are
//! the same thing in two versions.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};

/// Connection-specific headers (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers and those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none (a gRPC request only `te: trailers`, which
    // stays): one pass over the names instead of a lookup for each.
    if !h.keys().any(|n| n != header::TE && HOP_BY_HOP.contains(n)) {
        let mut te = h.get_all(header::TE).iter();
        match (te.next(), te.next()) {
            (None, _) => return,
            (Some(v), None) if v == "trailers" => return,
            _ => {}
        }
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let keep_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for n in HOP_BY_HOP.iter().chain(&named) {
        h.remove(n);
    }
    if keep_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The authority a request is for: the URI's, else the `Host` header.
pub fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// The authority a request is for, parsed: the URI's (shared, not
/// copied), else its `Host`. `Err` with why the request cannot be carried
/// as the client sent it: no authority at all (an HTTP/1.x request without
/// `Host`, which HTTP/1.1 requires), or one that is not a host and port.
pub fn request_authority<B>(req: &Request<B>) -> Result<Authority, &'static str> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or("missing required header: host")?;
    Authority::try_from(host.as_bytes()).map_err(|_| "invalid host header")
}

/// Prepares `req` for `version` towards `authority`: the URI becomes
/// `http://AUTHORITY/PATH`; for HTTP/1.1 the authority goes in `Host`, for
/// HTTP/2 in `:authority` only.
pub fn retarget<B>(req: &mut Request<B>, version: Version, authority: &Authority) {
    if let Some(uri) = http_uri(authority.clone(), req.uri()) {
        *req.uri_mut() = uri;
    }
    strip_hop_by_hop(req.headers_mut());
    if version == Version::HTTP_2 {
        req.headers_mut().remove(header::HOST);
    } else if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, v);
    }
    *req.version_mut() = version;
}

/// `http://AUTHORITY` and `uri`'s path and query (or `/`), which is shared,
/// not parsed or copied again.
pub fn http_uri(authority: Authority, uri: &Uri) -> Option<Uri> {
    let mut parts = uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named_headers_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("x-bar", HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-foo").is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h.get("x-bar").unwrap(), "2");
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn hop_by_hop_headers_are_found_without_connection_naming_them() {
        // `te: trailers` alone (every gRPC request) stays as it is.
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        // A hop-by-hop header that `Connection` does not name still goes.
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-connection", HeaderValue::from_static("close"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("keep-alive").is_none() && h.get("proxy-connection").is_none());
        // Two `te` lines become the one `trailers`.
        h.append(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        let te: Vec<_> = h.get_all(header::TE).iter().collect();
        assert_eq!(te, ["trailers"]);
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.get(header::TE).is_none());
        assert_eq!(h["x-a"], "1");
    }

    fn at(a: &'static str) -> Authority {
        Authority::from_static(a)
    }

    #[test]
    fn retarget_replaces_the_authority_and_keeps_the_path() {
        let mut r = Request::get("http://a:1/p?q=1").body(()).unwrap();
        retarget(&mut r, Version::HTTP_2, &at("b:2"));
        assert_eq!(r.uri().to_string(), "http://b:2/p?q=1");
        let mut r = Request::get("http://a:1").body(()).unwrap();
        retarget(&mut r, Version::HTTP_2, &at("a:1"));
        assert_eq!(r.uri().to_string(), "http://a:1/");
    }

    #[test]
    fn retarget_moves_authority_between_host_and_uri() {
        let mut r = Request::get("/a?b=1")
            .header(header::HOST, "reviews:9080")
            .body(())
            .unwrap();
        assert_eq!(authority(&r), Some("reviews:9080"));
        retarget(&mut r, Version::HTTP_2, &at("reviews:9080"));
        assert_eq!(r.uri().to_string(), "http://reviews:9080/a?b=1");
        assert!(r.headers().get(header::HOST).is_none());
        retarget(&mut r, Version::HTTP_11, &at("reviews:9080"));
        assert_eq!(r.headers().get(header::HOST).unwrap(), "reviews:9080");
        assert_eq!(r.version(), Version::HTTP_11);
    }

    #[test]
    fn a_request_without_a_host_and_port_has_no_authority() {
        let with_host =
            |h: &'static str| Request::get("/").header(header::HOST, h).body(()).unwrap();
        assert_eq!(request_authority(&with_host("a:1")), Ok(at("a:1")));
        let absolute = Request::get("http://b:2/").body(()).unwrap();
        assert_eq!(request_authority(&absolute), Ok(at("b:2")));
        let none = Request::get("/").body(()).unwrap();
        assert_eq!(
            request_authority(&none),
            Err("missing required header: host")
        );
        for bad in ["a b", "a/b", "[::1", ""] {
            assert_eq!(
                request_authority(&with_host(bad)),
                Err("invalid host header"),
                "{bad:?}"
            );
        }
    }
}
