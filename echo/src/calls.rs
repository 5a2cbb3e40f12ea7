//! Calls to other services before answering (`--call`), so that echo
//! servers behind mesh agents can play an application whose services call
//! each other, like Istio's bookinfo. The [`Caller`] GETs each URL in
//! order over pooled HTTP/1.1 keep-alive connections, passing on the
//! incoming request's tracing and routing headers as bookinfo's services
//! do, and turns each answer into a [`Call`] for the report. A failed call
//! is recorded, never an error of the request that made it.
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, COOKIE};
use hyper::{HeaderMap, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::report::{Call, Report};
use crate::{Callees, Error};

/// Request headers passed on to every callee: those bookinfo's services
/// forward, so that traces join up and routing on `end-user` or `cookie`
/// holds along the chain. The `x-echo-*` controls are not among them: they
/// steer the server they are sent to, not its callees.
const FORWARDED: &[&str] = &[
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "end-user",
    "user-agent",
    "cookie",
];
/// ... and every header with this prefix (Zipkin's `x-b3-traceid`,
/// `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`).
const FORWARDED_PREFIX: &str = "x-b3-";

/// How many calls deep a request is: 0 from a client, one more on each
/// call. A request this deep makes no calls, so `--call` URLs that form a
/// loop end there instead of taking every socket of the host.
const HOPS: &str = "x-echo-hops";
const MAX_HOPS: u32 = 10;

/// The most of an answer that is read; a report is a few KiB.
const MAX_ANSWER_BYTES: usize = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `--call` URLs and the client that calls them.
pub(crate) struct Caller {
    client: Client<HttpConnector, Empty<Bytes>>,
    urls: Vec<Uri>,
    timeout: Duration,
}

impl Caller {
    /// A caller for `callees`, or none if there is nothing to call.
    pub fn new(callees: Callees) -> Result<Option<Self>, Error> {
        if callees.urls.is_empty() {
            return Ok(None);
        }
        for url in &callees.urls {
            check_url(url)?;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Some(Self {
            client,
            urls: callees.urls,
            timeout: callees.timeout,
        }))
    }

    /// Calls every URL in order, for a request with headers `incoming`.
    pub async fn call_all(&self, incoming: &HeaderMap) -> Vec<Call> {
        let hops = hops(incoming);
        let mut calls = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            calls.push(if hops >= MAX_HOPS {
                Call::failed(
                    url,
                    None,
                    format!(
                        "not called: the request is {hops} calls deep ({HOPS}); \
                         do the --call URLs make a loop?"
                    ),
                )
            } else {
                self.call(url, forwarded(incoming, hops + 1)).await
            });
        }
        calls
    }

    async fn call(&self, url: &Uri, headers: HeaderMap) -> Call {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = url.clone();
        *req.headers_mut() = headers;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| (None, BoxError::from(e)))?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES);
            match body.collect().await {
                Ok(b) => Ok((status, b.to_bytes())),
                Err(e) => Err((Some(status), e)),
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((status, body))) => Call {
                url: url.to_string(),
                status: Some(status),
                // Anything but a report (a proxy's error page, say) leaves
                // the status to tell what happened.
                report: serde_json::from_slice::<Report>(&body).ok(),
                error: None,
            },
            Ok(Err((None, e))) => Call::failed(url, None, error_chain(&*e)),
            Ok(Err((status, e))) => {
                let msg = format!("reading the answer: {}", error_chain(&*e));
                Call::failed(url, status, msg)
            }
            Err(_) => {
                let msg = format!("no complete answer within {:?}", self.timeout);
                Call::failed(url, None, msg)
            }
        }
    }
}

impl Call {
    fn failed(url: &Uri, status: Option<u16>, error: String) -> Self {
        Self {
            url: url.to_string(),
            status,
            report: None,
            error: Some(error),
        }
    }
}

/// The client speaks plain HTTP: TLS is the mesh agent's job.
fn check_url(url: &Uri) -> Result<(), Error> {
    let reason = if url.scheme_str() != Some("http") {
        "only http:// URLs can be called (the mesh agent adds TLS)"
    } else if url.authority().is_none() {
        "the URL has no host"
    } else {
        return Ok(());
    };
    Err(Error::CallUrl {
        url: url.to_string(),
        reason,
    })
}

/// How many calls deep the request with headers `incoming` is; a value
/// that is not a number counts as 0.
fn hops(incoming: &HeaderMap) -> u32 {
    incoming
        .get(HOPS)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// The headers of a call made for a request with headers `incoming`: the
/// forwarded ones, and the new depth `hops`.
fn forwarded(incoming: &HeaderMap, hops: u32) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in incoming {
        let n = name.as_str();
        if n == COOKIE {
            // HTTP/1.1 wants one Cookie header; HTTP/2 clients may split it.
            continue;
        }
        if FORWARDED.contains(&n) || n.starts_with(FORWARDED_PREFIX) {
            out.append(name, value.clone());
        }
    }
    let cookies: Vec<&[u8]> = incoming
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if !cookies.is_empty() {
        // Joined from valid header values, so still one.
        if let Ok(v) = HeaderValue::from_bytes(&cookies.join(&b"; "[..])) {
            out.insert(COOKIE, v);
        }
    }
    out.insert(HOPS, HeaderValue::from(hops));
    out
}

/// `e` and its sources, e.g. "client error (Connect): tcp connect error:
/// Connection refused (os error 111)": the first alone says too little.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwards_tracing_and_routing_headers_only() {
        let incoming = headers(&[
            ("x-request-id", "r1"),
            ("traceparent", "00-abc-def-01"),
            ("tracestate", "k=v"),
            ("x-b3-traceid", "t"),
            ("x-b3-spanid", "s"),
            ("x-b3-sampled", "1"),
            ("b3", "t-s-1"),
            ("end-user", "jason"),
            ("user-agent", "curl/8"),
            ("host", "productpage:9080"),
            ("content-length", "0"),
            ("x-echo-status", "503"),
            ("x-other", "no"),
        ]);
        let out = forwarded(&incoming, 1);
        let mut names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "b3",
                "end-user",
                "traceparent",
                "tracestate",
                "user-agent",
                "x-b3-sampled",
                "x-b3-spanid",
                "x-b3-traceid",
                "x-echo-hops",
                "x-request-id",
            ]
        );
        assert_eq!(out["x-request-id"], "r1");
        assert_eq!(out["end-user"], "jason");
        assert_eq!(out[HOPS], "1");
    }

    #[test]
    fn split_cookies_are_joined() {
        let incoming = headers(&[("cookie", "a=1"), ("cookie", "b=2")]);
        let out = forwarded(&incoming, 1);
        assert_eq!(out.get_all(COOKIE).iter().count(), 1);
        assert_eq!(out[COOKIE], "a=1; b=2");
    }

    #[test]
    fn hops_count_up_from_zero() {
        assert_eq!(hops(&headers(&[])), 0);
        assert_eq!(hops(&headers(&[(HOPS, "3")])), 3);
        assert_eq!(hops(&headers(&[(HOPS, "many")])), 0);
        let out = forwarded(&headers(&[(HOPS, "3")]), 4);
        assert_eq!(out.get_all(HOPS).iter().count(), 1);
        assert_eq!(out[HOPS], "4");
    }

    #[test]
    fn only_plain_http_urls_with_a_host() {
        let url = |s: &str| check_url(&s.parse().unwrap());
        assert!(url("http://127.0.0.1:9080/details").is_ok());
        assert!(url("http://reviews.default.svc.cluster.local/").is_ok());
        for bad in ["https://reviews:9443/", "/details"] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--call {bad}")), "{e}");
        }
    }
}
