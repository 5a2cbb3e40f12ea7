//! Header plumbing between HTTP versions: hop-by-hop headers are the
//! connection's business and never forwarded; `Host` and `:authority` are
//! the same thing in two versions.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
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

/// Prepares `req` for `version` towards `authority`: the URI becomes
/// `http://AUTHORITY/PATH`; for HTTP/1.1 the authority goes in `Host`, for
/// HTTP/2 in `:authority` only.
pub fn retarget<B>(req: &mut Request<B>, version: Version, authority: &str) {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
    strip_hop_by_hop(req.headers_mut());
    if version == Version::HTTP_2 {
        req.headers_mut().remove(header::HOST);
    } else if let Ok(v) = HeaderValue::from_str(authority) {
        req.headers_mut().insert(header::HOST, v);
    }
    *req.version_mut() = version;
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
    fn retarget_moves_authority_between_host_and_uri() {
        let mut r = Request::get("/a?b=1")
            .header(header::HOST, "reviews:9080")
            .body(())
            .unwrap();
        assert_eq!(authority(&r), Some("reviews:9080"));
        retarget(&mut r, Version::HTTP_2, "reviews:9080");
        assert_eq!(r.uri().to_string(), "http://reviews:9080/a?b=1");
        assert!(r.headers().get(header::HOST).is_none());
        retarget(&mut r, Version::HTTP_11, "reviews:9080");
        assert_eq!(r.headers().get(header::HOST).unwrap(), "reviews:9080");
        assert_eq!(r.version(), Version::HTTP_11);
    }
}
