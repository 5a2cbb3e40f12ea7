//! The outbound HTTP pipeline, one step at a time, through a client agent
//! and a server agent over mTLS to a real application.
use std::time::Duration;

use super::*;

#[tokio::test]
async fn a_request_reaches_the_app_over_mtls_as_the_calling_workload() {
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    let got = send(p.upstream, get("/hello")).await;
    assert_eq!((got.status, got.body.as_str()), (200, "/hello"));
    let seen = &app.seen()[0];
    let xfcc = seen.headers["x-forwarded-client-cert"].to_str().unwrap();
    assert!(
        xfcc.ends_with(";URI=spiffe://td/ns/default/sa/client"),
        "{xfcc}"
    );
    assert!(
        !seen
            .headers
            .contains_key(super::super::inbound::PEER_METADATA),
        "the peer metadata header is the agents' own"
    );
    let source = [
        "reporter=\"source\"",
        "response_code=\"200\"",
        "destination_principal=\"spiffe://td/ns/default/sa/reviews\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert_eq!(
        series(&p.client.metrics(), "istio_requests_total", &source),
        1
    );
    let destination = [
        "reporter=\"destination\"",
        "source_workload=\"client\"",
        "source_principal=\"spiffe://td/ns/default/sa/client\"",
    ];
    assert_eq!(
        series(&p.server.metrics(), "istio_requests_total", &destination),
        1
    );
}

const ROUTES: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /fault}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {exact: /moved}}]
    redirect: {uri: /there, authority: elsewhere:8080}
  - match: [{uri: {prefix: /old/}}]
    rewrite: {uri: /new/}
    headers:
      request: {set: {x-route: old}}
      response: {add: {x-answered-by: route}}
    route: [{destination: {host: reviews}, headers: {request: {set: {x-dest: v1}}}}]
  - match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: 5xx, perTryTimeout: 2s}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.2s
    retries: {attempts: 0}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews}}]
"#;

async fn routed(app: &App) -> Pair {
    pair(app, &format!("{REVIEWS_SERVICE}{ROUTES}")).await
}

#[tokio::test]
async fn a_request_no_route_takes_is_a_404_nr() {
    let app = App::ok().await;
    let p = routed(&app).await;
    let got = send(p.upstream, get("/nowhere")).await;
    assert_eq!(got.status, 404);
    assert_eq!(app.requests(), 0);
    let nr = ["response_code=\"404\"", "response_flags=\"NR\""];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &nr), 1);
}

#[tokio::test]
async fn an_abort_fault_answers_without_reaching_the_app() {
    let app = App::ok().await;
    let p = routed(&app).await;
    let got = send(p.upstream, get("/fault")).await;
    assert_eq!((got.status, got.body.as_str()), (418, "fault filter abort"));
    assert_eq!(app.requests(), 0);
    let fi = ["response_code=\"418\"", "response_flags=\"FI\""];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &fi), 1);
}

#[tokio::test]
async fn a_redirect_is_answered_by_the_agent() {
    let app = App::ok().await;
    let p = routed(&app).await;
    let got = send(p.upstream, get("/moved?x=1")).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.headers["location"], "http://elsewhere:8080/there");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn rewrites_and_header_changes_apply_on_the_way_out_and_back() {
    let app = App::ok().await;
    let p = routed(&app).await;
    let got = send(p.upstream, get("/old/page?q=1")).await;
    assert_eq!((got.status, got.body.as_str()), (200, "/new/page"));
    assert_eq!(got.headers["x-answered-by"], "route");
    let seen = &app.seen()[0];
    assert_eq!(seen.headers["x-route"], "old");
    assert_eq!(seen.headers["x-dest"], "v1");
}

#[tokio::test]
async fn a_5xx_is_retried_and_the_retry_answers() {
    // The first request fails, the next succeeds.
    let app = App::start(|n, _| (if n == 0 { 503 } else { 200 }, Duration::ZERO)).await;
    let p = routed(&app).await;
    let got = send(p.upstream, get("/flaky")).await;
    assert_eq!(got.status, 200);
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn a_request_past_the_route_timeout_is_a_504_ut() {
    let app = App::start(|_, _| (200, Duration::from_secs(2))).await;
    let p = routed(&app).await;
    let got = send(p.upstream, get("/slow")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (504, "upstream request timeout")
    );
    let ut = ["response_code=\"504\"", "response_flags=\"UT\""];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &ut), 1);
}

#[tokio::test]
async fn requests_past_the_circuit_breaker_are_a_503_uo() {
    let limit = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {http2MaxRequests: 1}}}
"#;
    let app = App::start(|n, _| (200, Duration::from_millis(if n == 0 { 800 } else { 0 }))).await;
    let p = pair(&app, &format!("{REVIEWS_SERVICE}{limit}")).await;
    let first = tokio::spawn(send(p.upstream, get("/api/first")));
    trellis_testing::eventually("the first request is in flight", || app.requests() == 1).await;
    let second = send(p.upstream, get("/api/second")).await;
    assert_eq!(second.status, 503);
    assert_eq!(first.await.unwrap().status, 200);
    let uo = ["response_code=\"503\"", "response_flags=\"UO\""];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &uo), 1);
}

#[tokio::test]
async fn a_mirrored_copy_reaches_the_mirror_with_a_shadow_host() {
    let mirror = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    mirror: {host: reviews}
"#;
    let app = App::ok().await;
    let p = pair(&app, &format!("{REVIEWS_SERVICE}{mirror}")).await;
    let got = send(p.upstream, get("/copied")).await;
    assert_eq!(got.status, 200);
    trellis_testing::eventually("the mirrored copy arrives", || app.requests() == 2).await;
    let hosts: Vec<String> = app
        .seen()
        .iter()
        .map(|s| s.headers["host"].to_str().unwrap().to_string())
        .collect();
    assert!(
        hosts.contains(&"reviews-shadow:9080".to_string()),
        "{hosts:?}"
    );
    assert!(hosts.contains(&"reviews:9080".to_string()), "{hosts:?}");
}

/// `legacy`: port 9090 served by a workload without an agent at `{LEGACY}`.
const LEGACY_SERVICE: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9090, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, labels: {security.istio.io/tlsMode: disabled}, ports: {http: {LEGACY}}}
"#;

/// A server that reads each request's head and body (a `Content-Length`
/// one) and closes the connection without an answer; how many it read.
async fn hang_up_server() -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_post_whose_connection_breaks_after_it_was_sent_is_not_sent_again_by_default() {
    let app = App::ok().await;
    let (legacy, tries) = hang_up_server().await;
    let config = format!(
        "{REVIEWS_SERVICE}{}",
        LEGACY_SERVICE.replace("{LEGACY}", &legacy.port().to_string())
    );
    let p = pair(&app, &config).await;
    let upstream = p
        .client
        .upstream("legacy.default.svc.cluster.local", 9090)
        .await;
    let req = Request::post("/once")
        .header(http::header::HOST, "legacy:9090")
        .body(Full::new(Bytes::from_static(b"pay")))
        .unwrap();
    let got = send(upstream, req).await;
    assert_eq!(got.status, 503);
    assert_eq!(
        tries.load(Ordering::SeqCst),
        1,
        "Istio's default retries refused streams, not requests that may have been processed"
    );
    let uc = ["response_code=\"503\"", "response_flags=\"UC\""];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &uc), 1);
}

/// WorkloadGroups of both workloads, without labels of their own.
const GROUPS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews-v2, namespace: default}
spec:
  metadata: {labels: {app: reviews, version: v2}}
  template: {serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: frontend, namespace: default}
spec:
  metadata: {labels: {app: frontend, version: v7}}
  template: {serviceAccount: client}
"#;

#[tokio::test]
async fn workloads_registered_through_a_group_report_its_labels_on_both_sides() {
    let app = App::ok().await;
    let ca = TestCa::new();
    let config = yaml(&format!("{REVIEWS_SERVICE}{GROUPS}"), app.addr.port());
    let in_group = |g: &str| Setup {
        group: Some(g.into()),
        ..Setup::default()
    };
    let server = Agent::start_with(&ca, "reviews", &config, 0, in_group("reviews-v2")).await;
    let port = server.inbound.port();
    let client = Agent::start_with(&ca, "client", &config, port, in_group("frontend")).await;
    let upstream = client.upstream(REVIEWS, 9080).await;
    assert_eq!(send(upstream, get("/grouped")).await.status, 200);
    let destination = [
        "reporter=\"destination\"",
        "source_workload=\"frontend\"",
        "source_app=\"frontend\"",
        "source_version=\"v7\"",
        "destination_workload=\"reviews\"",
        "destination_app=\"reviews\"",
        "destination_version=\"v2\"",
    ];
    trellis_testing::eventually("the server's agent reports with its group's labels", || {
        series(&server.metrics(), "istio_requests_total", &destination) == 1
    })
    .await;
    let source = [
        "reporter=\"source\"",
        "source_app=\"frontend\"",
        "source_version=\"v7\"",
    ];
    assert_eq!(
        series(&client.metrics(), "istio_requests_total", &source),
        1
    );
}
