//! Route selection, Istio's semantics, as plain functions over plain data:
//! the first HTTP route whose match blocks accept the request wins; a route's
//! destinations are chosen by weight; rewrites and redirects are computed
//! from the route and the request. Table tests in `tests.rs`.
use std::collections::BTreeMap;

use http::HeaderMap;
use trellis_api::config::{
    HeaderMatch, HttpMatchRequest, HttpRedirect, HttpRewrite, HttpRoute, HttpRouteDestination,
    StringMatch,
};

pub mod retry;
#[cfg(test)]
mod tests;

/// What route matching looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The path without the query string.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Host and port as the client wrote them.
    pub authority: &'a str,
    pub scheme: &'a str,
    /// The destination port.
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// The calling workload's labels and namespace (this agent's own, on
    /// the outbound side).
    pub source_labels: &'a BTreeMap<String, String>,
    pub source_namespace: &'a str,
}

/// The first route that accepts `req`, with the match block that did
/// (`None` when the route has no match blocks: it takes everything).
pub fn first_match<'r>(
    routes: &'r [HttpRoute],
    req: &RequestView,
) -> Option<(usize, &'r HttpRoute, Option<&'r HttpMatchRequest>)> {
    routes.iter().enumerate().find_map(|(i, r)| {
        if r.matches.is_empty() {
            return Some((i, r, None));
        }
        r.matches
            .iter()
            .find(|m| matches(m, req))
            .map(|m| (i, r, Some(m)))
    })
}

/// Whether one match block accepts `req`: every condition it sets holds.
pub fn matches(m: &HttpMatchRequest, req: &RequestView) -> bool {
    let uri_ok = m.uri.as_ref().is_none_or(|u| {
        if m.ignore_uri_case {
            match u {
                StringMatch::Exact(e) => req.path.eq_ignore_ascii_case(e),
                StringMatch::Prefix(p) => req
                    .path
                    .get(..p.len())
                    .is_some_and(|h| h.eq_ignore_ascii_case(p)),
                StringMatch::Regex(_) => u.matches(req.path),
            }
        } else {
            u.matches(req.path)
        }
    });
    uri_ok
        && m.method.as_ref().is_none_or(|s| s.matches(req.method))
        && m.scheme.as_ref().is_none_or(|s| s.matches(req.scheme))
        && m.authority
            .as_ref()
            .is_none_or(|s| s.matches(req.authority))
        && m.port.is_none_or(|p| p == u32::from(req.port))
        && m.headers
            .iter()
            .all(|(name, hm)| hm.matches(header(req.headers, name).as_deref()))
        && m.without_headers
            .iter()
            .all(|(name, hm)| !hm.matches(header(req.headers, name).as_deref()))
        && m.query_params
            .iter()
            .all(|(name, qm)| query_matches(qm, query_param(req.query, name)))
        && m.source_labels
            .iter()
            .all(|(k, v)| req.source_labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| ns == req.source_namespace)
}

/// All values of header `name`, joined with `,` as one header.
fn header(h: &HeaderMap, name: &str) -> Option<String> {
    let mut values = h
        .get_all(name.to_ascii_lowercase())
        .iter()
        .filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    Some(values.fold(first.to_string(), |mut acc, v| {
        acc.push(',');
        acc.push_str(v);
        acc
    }))
}

/// Query parameters match present-with-any-value on `{}` too, and a present
/// parameter without a value (`?debug`) has the empty value.
fn query_matches(m: &HeaderMatch, value: Option<String>) -> bool {
    m.matches(value.as_deref())
}

/// The (percent-decoded) value of the first query parameter `name`.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Chooses among a route's destinations by weight; `roll` is uniform in
/// 0..100. Destinations without a weight share what the others leave.
pub fn pick_weighted(dests: &[HttpRouteDestination], roll: u32) -> Option<&HttpRouteDestination> {
    if dests.len() == 1 {
        return dests.first();
    }
    let total: u32 = dests.iter().map(|d| weight(d.weight)).sum();
    if total == 0 {
        return dests.first();
    }
    let mut at = roll % total;
    for d in dests {
        let w = weight(d.weight);
        if at < w {
            return Some(d);
        }
        at -= w;
    }
    dests.last()
}

fn weight(w: Option<i32>) -> u32 {
    w.map(|w| w.max(0) as u32).unwrap_or(0)
}

/// The path after `rewrite`: a `uri` rewrite replaces what a prefix match
/// matched (or the whole path for other matches); a regex rewrite
/// substitutes. The query string is kept.
pub fn rewrite_path(
    path: &str,
    query: Option<&str>,
    matched: Option<&HttpMatchRequest>,
    rewrite: &HttpRewrite,
) -> Option<String> {
    let new_path = if let Some(uri) = &rewrite.uri {
        match matched.and_then(|m| m.uri.as_ref()) {
            Some(StringMatch::Prefix(p)) if path.len() >= p.len() => {
                let rest = &path[p.len()..];
                if uri.ends_with('/') && rest.starts_with('/') {
                    format!("{uri}{}", &rest[1..])
                } else {
                    format!("{uri}{rest}")
                }
            }
            _ => uri.clone(),
        }
    } else if let Some(rr) = &rewrite.uri_regex_rewrite {
        rr.pattern
            .compiled()
            .replace_all(path, rr.rewrite.replace("\\", "$").as_str())
            .into_owned()
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

/// The `Location` of a redirect: each part the redirect sets replaces the
/// request's.
pub fn redirect_location(
    r: &HttpRedirect,
    scheme: &str,
    authority: &str,
    path_and_query: &str,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(scheme);
    let mut host = r.authority.clone().unwrap_or_else(|| authority.to_string());
    if let Some(port) = r.port {
        let bare = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .to_string();
        host = format!("{bare}:{port}");
    }
    let path = r.uri.as_deref().unwrap_or(path_and_query);
    format!("{scheme}://{host}{path}")
}
