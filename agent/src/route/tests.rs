//! Table tests for route selection, from Istio's documented examples.
use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue};
use trellis_api::config::{parse_documents, HttpRoute, Spec};

use super::*;

fn routes(yaml: &str) -> Vec<HttpRoute> {
    let doc = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r}}\nspec:\n  hosts: [reviews]\n  http:\n{yaml}"
    );
    match parse_documents(&doc).unwrap().remove(0).spec {
        Spec::VirtualService(vs) => vs.http,
        _ => unreachable!(),
    }
}

struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    authority: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    port: u16,
}

fn req(path: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        query: None,
        authority: "reviews:9080",
        headers: vec![],
        port: 9080,
    }
}

fn select(rs: &[HttpRoute], r: &Req, labels: &BTreeMap<String, String>) -> Option<usize> {
    let mut h = HeaderMap::new();
    for (k, v) in &r.headers {
        h.append(*k, HeaderValue::from_static(v));
    }
    let view = RequestView {
        method: r.method,
        path: r.path,
        query: r.query,
        authority: r.authority,
        scheme: "http",
        port: r.port,
        headers: &h,
        source_labels: labels,
        source_namespace: "default",
    };
    first_match(rs, &view).map(|(i, _, _)| i)
}

#[test]
fn first_matching_route_wins() {
    let rs = routes(
        r#"
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{uri: {prefix: /api/v1}, method: {exact: POST}}, {uri: {regex: "/items/[0-9]+"}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - match: [{uri: {exact: /health}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, subset: v4}}]
  - match: [{queryParams: {debug: {exact: "1"}}}, {authority: {prefix: canary.}}]
    route: [{destination: {host: reviews, subset: v5}}]
  - match: [{port: 8080}, {withoutHeaders: {x-internal: {}}, sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v6}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let pp: BTreeMap<String, String> = [("app".to_string(), "productpage".to_string())].into();
    let none = BTreeMap::new();
    let cases: Vec<(Req, &BTreeMap<String, String>, Option<usize>)> = vec![
        (
            Req {
                headers: vec![("end-user", "jason")],
                ..req("/")
            },
            &none,
            Some(0),
        ),
        (
            Req {
                headers: vec![("end-user", "jason2")],
                ..req("/")
            },
            &none,
            Some(5),
        ),
        (
            Req {
                method: "POST",
                ..req("/api/v1/x")
            },
            &none,
            Some(1),
        ),
        (
            Req {
                method: "GET",
                ..req("/api/v1/x")
            },
            &none,
            Some(5),
        ),
        (req("/items/42"), &none, Some(1)),
        (req("/items/42/x"), &none, Some(5)),
        (req("/HEALTH"), &none, Some(2)),
        (req("/healthz"), &none, Some(5)),
        (
            Req {
                query: Some("a=2&debug=1"),
                ..req("/")
            },
            &none,
            Some(3),
        ),
        (
            Req {
                query: Some("debug=10"),
                ..req("/")
            },
            &none,
            Some(5),
        ),
        (
            Req {
                authority: "canary.reviews",
                ..req("/")
            },
            &none,
            Some(3),
        ),
        (
            Req {
                port: 8080,
                ..req("/")
            },
            &none,
            Some(4),
        ),
        (req("/"), &pp, Some(4)),
        (
            Req {
                headers: vec![("x-internal", "1")],
                ..req("/")
            },
            &pp,
            Some(5),
        ),
    ];
    for (i, (r, labels, want)) in cases.iter().enumerate() {
        assert_eq!(
            select(&rs, r, labels),
            *want,
            "case {i}: {} {}",
            r.method,
            r.path
        );
    }
}

#[test]
fn no_route_when_nothing_matches() {
    let rs =
        routes("  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: reviews}}]\n");
    assert_eq!(select(&rs, &req("/b"), &BTreeMap::new()), None);
}

#[test]
fn weighted_split_follows_weights() {
    let rs = routes(
        "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 80}\n    - {destination: {host: reviews, subset: v2}, weight: 20}\n",
    );
    let picks: Vec<_> = (0..100)
        .map(|roll| {
            pick_weighted(&rs[0].route, roll)
                .unwrap()
                .destination
                .subset
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(picks.iter().filter(|s| *s == "v1").count(), 80);
    assert_eq!(picks[79], "v1");
    assert_eq!(picks[80], "v2");
    let zero = routes(
        "  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 0}\n    - {destination: {host: reviews, subset: v2}, weight: 100}\n",
    );
    assert!((0..100).all(|r| pick_weighted(&zero[0].route, r)
        .unwrap()
        .destination
        .subset
        .as_deref()
        == Some("v2")));
}

#[test]
fn rewrites_replace_the_matched_prefix_and_keep_the_query() {
    let rs = routes(
        r#"
  - match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /old}}]
    rewrite: {uri: /new, authority: other}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /r}}]
    rewrite: {uriRegexRewrite: {match: "^/r/(.*)$", rewrite: "/x/\\1"}}
    route: [{destination: {host: reviews}}]
"#,
    );
    let rw = |i: usize, path: &str, q: Option<&str>| {
        let m = rs[i].matches.first();
        rewrite_path(path, q, m, rs[i].rewrite.as_ref().unwrap())
    };
    assert_eq!(
        rw(0, "/v1/items", Some("a=1")).as_deref(),
        Some("/items?a=1")
    );
    assert_eq!(rw(1, "/old", None).as_deref(), Some("/new"));
    assert_eq!(rw(2, "/r/abc", None).as_deref(), Some("/x/abc"));
}

#[test]
fn redirect_location_replaces_the_parts_it_sets() {
    let rs = routes(
        "  - redirect: {uri: /v2/x, authority: new.example, port: 8443, scheme: https}\n  - redirect: {uri: /moved}\n",
    );
    let r0 = rs[0].redirect.as_ref().unwrap();
    assert_eq!(
        redirect_location(r0, "http", "a:80", "/x?q"),
        "https://new.example:8443/v2/x"
    );
    let r1 = rs[1].redirect.as_ref().unwrap();
    assert_eq!(
        redirect_location(r1, "http", "a:80", "/x?q"),
        "http://a:80/moved"
    );
}

#[test]
fn percent_decoding_of_query_values() {
    assert_eq!(query_param(Some("a=b%20c&d"), "a").as_deref(), Some("b c"));
    assert_eq!(query_param(Some("a=b%2&d"), "d").as_deref(), Some(""));
    assert_eq!(query_param(Some("x%3Dy=1"), "x=y").as_deref(), Some("1"));
    assert_eq!(query_param(None, "a"), None);
}
