//! What the echo server says back: the [`Report`] of an HTTP request (with
//! the [`Call`]s it made first, if any), the [`Stats`] of `/echo/stats`,
//! and the [`Responder`] that every answer names. Plain data, built from a
//! request's head without I/O.
use std::collections::BTreeMap;

use hyper::header::HOST;
use hyper::http::request::Parts;
use hyper::{HeaderMap, Version};
use serde::{Deserialize, Serialize};

/// Who answers: reported in every HTTP and gRPC response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Responder {
    /// Service name (`--name`).
    pub service: String,
    /// Version (`--version`), to tell the subsets of a traffic split apart.
    pub version: String,
    /// Free text (`--identity`), e.g. the workload's SPIFFE id.
    pub identity: String,
    /// The cluster it runs in (`--cluster`), to tell the same version in
    /// two clusters apart. Absent from the JSON when empty, so a report
    /// without it keeps its shape.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
}

impl Default for Responder {
    fn default() -> Self {
        Self {
            service: "echo".into(),
            version: "v1".into(),
            identity: String::new(),
            cluster: String::new(),
        }
    }
}

/// The JSON body of an HTTP echo response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub workload: Responder,
    /// The authority the server saw: `:authority` in HTTP/2, the
    /// absolute-form URI's or the `Host` header in HTTP/1.
    pub host: String,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub proto: String,
    /// Request headers by lowercase name; repeated ones joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// Length of the request body, which the server reads to its end.
    pub body_bytes: u64,
    /// The calls made before answering (`--call`), in order. Absent from
    /// the JSON when there were none, so the report of a server without
    /// `--call` keeps its shape.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Call>,
}

/// One call a server made before answering (`--call`). A callee that is
/// itself an echo server answers with its [`Report`], so the reports of a
/// chain nest. Fields without a value are absent from the JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The URL called.
    pub url: String,
    /// The callee's response status; none if no response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The callee's answer, if it was a report (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    /// Why the call failed: no connection, no answer in time, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    pub(crate) fn new(workload: &Responder, head: &Parts, body_bytes: u64) -> Self {
        let host = match head.uri.authority() {
            Some(a) => a.as_str().to_string(),
            None => head
                .headers
                .get(HOST)
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default(),
        };
        Self {
            workload: workload.clone(),
            host,
            method: head.method.as_str().to_string(),
            path: head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            proto: proto_name(head.version).to_string(),
            headers: header_map(&head.headers),
            body_bytes,
            calls: Vec::new(),
        }
    }
}

/// The body of `GET /echo/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// HTTP requests and gRPC calls received since start, but for
    /// `/echo/stats` itself.
    pub requests: u64,
    /// Connections accepted on the HTTP ports since start, the one asking
    /// for these stats included (tells a test how a client or proxy
    /// reuses connections).
    #[serde(default)]
    pub http_connections: u64,
    /// Of those, the ones still open (the one asking included).
    #[serde(default)]
    pub open_http_connections: u64,
}

/// Headers (or gRPC metadata) by lowercase name, repeated names joined
/// with ", " as HTTP allows; values that are not UTF-8 are shown lossily.
pub(crate) fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

fn proto_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use hyper::Request;

    use super::*;

    #[test]
    fn reports_the_head_of_an_http1_request() {
        let (head, ()) = Request::post("/a/b?x=1")
            .header("Host", "echo.default:8080")
            .header("X-Multi", "one")
            .header("x-multi", "two")
            .body(())
            .unwrap()
            .into_parts();
        let r = Report::new(&Responder::default(), &head, 42);
        assert_eq!(r.workload.service, "echo");
        assert_eq!(r.host, "echo.default:8080");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/a/b?x=1");
        assert_eq!(r.proto, "HTTP/1.1");
        assert_eq!(r.headers["x-multi"], "one, two");
        assert_eq!(r.body_bytes, 42);
    }

    #[test]
    fn prefers_the_uri_authority_over_the_host_header() {
        let (head, ()) = Request::get("http://svc.example:80/")
            .version(Version::HTTP_2)
            .header("host", "other")
            .body(())
            .unwrap()
            .into_parts();
        let r = Report::new(&Responder::default(), &head, 0);
        assert_eq!(r.host, "svc.example:80");
        assert_eq!(r.proto, "HTTP/2");
    }

    #[test]
    fn json_is_flat() {
        let (head, ()) = Request::get("/").body(()).unwrap().into_parts();
        let json = serde_json::to_value(Report::new(&Responder::default(), &head, 0)).unwrap();
        assert_eq!(json["service"], "echo");
        assert_eq!(json["version"], "v1");
        assert_eq!(json["identity"], "");
        assert_eq!(json["body_bytes"], 0);
        assert!(json.get("calls").is_none(), "{json}");
    }

    #[test]
    fn calls_nest_and_leave_out_what_they_lack() {
        let (head, ()) = Request::get("/").body(()).unwrap().into_parts();
        let mut r = Report::new(&Responder::default(), &head, 0);
        r.calls = vec![
            Call {
                url: "http://127.0.0.1:1/ratings".into(),
                status: None,
                report: None,
                error: Some("refused".into()),
            },
            Call {
                url: "http://127.0.0.1:2/reviews".into(),
                status: Some(200),
                report: Some(r.clone()),
                error: None,
            },
        ];
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["calls"][0],
            serde_json::json!({"url": "http://127.0.0.1:1/ratings", "error": "refused"})
        );
        assert_eq!(json["calls"][1]["report"]["service"], "echo");
        assert_eq!(serde_json::from_value::<Report>(json).unwrap(), r);
    }
}
