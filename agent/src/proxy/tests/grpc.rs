//! gRPC clients get the agent's local replies as gRPC answers them:
//! trailers-only (HTTP 200, `grpc-status` and `grpc-message` in the
//! headers, no body), the HTTP status mapped as Envoy maps it.
use std::time::Duration;

use super::*;

const ROUTES: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.2s
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /unhealthy}}]
    route: [{destination: {host: reviews, subset: missing}}]
  - match: [{uri: {prefix: /held}}]
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1}}}
"#;

/// What a gRPC client got: the HTTP status, `grpc-status`,
/// `grpc-message`, and whether the headers ended the stream.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
    trailers_only: bool,
}

/// A unary gRPC call to `path` over HTTP/2 to `addr`.
async fn call(addr: SocketAddr, path: &str) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::post(format!("http://reviews:9080{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut body) = client.send_request(req, false).unwrap();
    // An empty message: five bytes of gRPC framing.
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    Answer {
        status: resp.status().as_u16(),
        grpc_status: header("grpc-status"),
        grpc_message: header("grpc-message"),
        trailers_only: resp.body().is_end_stream(),
    }
}

fn answer(code: &str, message: Option<&str>) -> Answer {
    Answer {
        status: 200,
        grpc_status: Some(code.into()),
        grpc_message: message.map(str::to_string),
        trailers_only: true,
    }
}

#[tokio::test]
async fn local_replies_to_grpc_clients_are_trailers_only_with_envoys_grpc_status() {
    let app = App::start(|_, parts| match parts.uri.path() {
        "/slow" => (200, Duration::from_secs(2)),
        "/held" => (200, Duration::from_millis(800)),
        _ => (200, Duration::ZERO),
    })
    .await;
    let p = pair(&app, &format!("{REVIEWS_SERVICE}{ROUTES}")).await;
    let cases = [
        ("/slow", answer("14", Some("upstream request timeout"))),
        ("/abort", answer("14", Some("fault filter abort"))),
        ("/unhealthy", answer("14", Some("no healthy upstream"))),
        ("/nowhere", answer("12", None)),
    ];
    for (path, want) in cases {
        assert_eq!(call(p.upstream, path).await, want, "{path}");
    }
    // Overflow: one request in flight at most.
    let first = tokio::spawn(call(p.upstream, "/held"));
    trellis_testing::eventually("the first request is in flight", || {
        app.seen().iter().any(|s| s.path == "/held")
    })
    .await;
    let overflow = call(p.upstream, "/held").await;
    let reason =
        "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    assert_eq!(overflow, answer("14", Some(reason)));
    assert_eq!(first.await.unwrap().status, 200);
    // As in Envoy, the metrics have the gRPC status, beside the flag.
    let ut = [
        "response_flags=\"UT\"",
        "grpc_response_status=\"14\"",
        "request_protocol=\"grpc\"",
    ];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &ut), 1);
}
