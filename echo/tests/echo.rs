//! The echo server in-process on loopback, spoken to by real clients:
//! hyper for HTTP/1.1, h2c and Upgrade, tonic for gRPC, a socket for TCP;
//! and chains of echo servers that call each other (`--call`).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trellis_echo::v1::echo_client::EchoClient;
use trellis_echo::v1::EchoRequest;
use trellis_echo::{serve, Call, Callees, Config, Error, Report, Responder, Server, Stats};

async fn start() -> Server {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    serve(Config {
        http: vec![any],
        grpc: vec![any],
        tcp: vec![any],
        workload: Responder {
            service: "reviews".into(),
            version: "v2".into(),
            identity: "spiffe://example.org/ns/default/sa/reviews".into(),
            cluster: "cluster-2".into(),
        },
        ..Config::default()
    })
    .await
    .unwrap()
}

/// An HTTP echo server `service` `version` that calls `urls` with
/// `timeout`.
async fn start_calling(service: &str, version: &str, urls: &[String], timeout: Duration) -> Server {
    serve(Config {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        workload: Responder {
            service: service.into(),
            version: version.into(),
            identity: String::new(),
            cluster: String::new(),
        },
        callees: Callees {
            urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
            timeout,
        },
        ..Config::default()
    })
    .await
    .unwrap()
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

const TIMEOUT: Duration = Duration::from_secs(2);

/// One request over a new HTTP/1.1 connection.
async fn http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    let (head, body) = resp.into_parts();
    (
        Response::from_parts(head, ()),
        body.collect().await.unwrap().to_bytes(),
    )
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

fn report(body: &[u8]) -> Report {
    serde_json::from_slice(body).unwrap()
}

fn report_json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[tokio::test]
async fn http1_reports_who_answered_and_what_arrived() {
    let s = start().await;
    let req = Request::post("/upload?x=1")
        .header("host", "reviews.default:9080")
        .header("x-test", "a")
        .header("x-Test", "b")
        .body(Full::from(vec![7u8; 100_000]))
        .unwrap();
    let (resp, body) = http1(s.http[0], req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-echo-service"], "reviews");
    assert_eq!(resp.headers()["x-echo-version"], "v2");
    let r = report(&body);
    assert_eq!(r.workload.service, "reviews");
    assert_eq!(r.workload.version, "v2");
    assert_eq!(
        r.workload.identity,
        "spiffe://example.org/ns/default/sa/reviews"
    );
    assert_eq!(r.workload.cluster, "cluster-2");
    assert_eq!(report_json(&body)["cluster"], "cluster-2");
    assert_eq!(r.host, "reviews.default:9080");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/upload?x=1");
    assert_eq!(r.proto, "HTTP/1.1");
    assert_eq!(r.headers["x-test"], "a, b");
    assert_eq!(r.body_bytes, 100_000);
}

#[tokio::test]
async fn h2c_with_prior_knowledge_on_the_same_port() {
    let s = start().await;
    let io = TokioIo::new(TcpStream::connect(s.http[0]).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/one", "/two"] {
        let req = get(&format!("http://ratings.test:8080{path}"));
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let r = report(&resp.into_body().collect().await.unwrap().to_bytes());
        assert_eq!(r.proto, "HTTP/2");
        assert_eq!(r.host, "ratings.test:8080");
        assert_eq!(r.path, path);
    }
}

#[tokio::test]
async fn controls_from_headers_and_query() {
    let s = start().await;
    let addr = s.http[0];

    let req = Request::get("/").header("x-echo-status", "503");
    let (resp, body) = http1(addr, req.body(Full::default()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(report(&body).workload.service, "reviews");

    let (resp, _) = http1(addr, get("/?status=418")).await;
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);

    let (resp, _) = http1(addr, get("/?fail-rate=1")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (resp, _) = http1(addr, get("/?fail-rate=0")).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let req = Request::get("/").header("x-echo-body-bytes", "200000");
    let (resp, body) = http1(addr, req.body(Full::default()).unwrap()).await;
    assert_eq!(resp.headers()["content-length"], "200000");
    assert_eq!(body.len(), 200_000);

    let start = Instant::now();
    let (resp, _) = http1(addr, get("/?delay-ms=200")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(200));

    let (resp, body) = http1(addr, get("/?status=abc")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("x-echo-status"));
}

#[tokio::test]
async fn stats_count_http_connections_accepted_and_open() {
    let s = start().await;
    let addr = s.http[0];
    let stats = || async {
        serde_json::from_slice::<Stats>(&http1(addr, get("/echo/stats")).await.1).unwrap()
    };
    let first = stats().await;
    assert_eq!(
        (first.http_connections, first.open_http_connections),
        (1, 1)
    );
    let held = TcpStream::connect(addr).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // Each stats request comes on a connection of its own, closed after.
    loop {
        let now = stats().await;
        if now.open_http_connections == 2 {
            assert!(now.http_connections >= 3, "{now:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    loop {
        if stats().await.open_http_connections == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the held connection closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn plain_and_stats_count_requests_but_not_themselves() {
    let s = start().await;
    let addr = s.http[0];
    let stats = || async {
        serde_json::from_slice::<Stats>(&http1(addr, get("/echo/stats")).await.1).unwrap()
    };
    assert_eq!(stats().await.requests, 0);
    let (resp, body) = http1(addr, get("/plain")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&body[..], b"ok");
    http1(addr, get("/other")).await;
    let mut client = EchoClient::connect(format!("http://{}", s.grpc[0]))
        .await
        .unwrap();
    client.echo(EchoRequest::default()).await.unwrap();
    assert_eq!(stats().await.requests, 3);
}

#[tokio::test]
async fn upgrade_echoes_bytes() {
    let s = start().await;
    let io = TokioIo::new(TcpStream::connect(s.http[0]).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::get("/chat")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"hello through the upgrade").await.unwrap();
    io.shutdown().await.unwrap();
    let mut back = Vec::new();
    io.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello through the upgrade");
}

#[tokio::test]
async fn grpc_unary_and_streaming() {
    let s = start().await;
    let mut client = EchoClient::connect(format!("http://{}", s.grpc[0]))
        .await
        .unwrap();

    let mut req = tonic::Request::new(EchoRequest {
        message: "hi".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "r1".parse().unwrap());
    let r = client.echo(req).await.unwrap().into_inner();
    assert_eq!(r.message, "hi");
    assert_eq!(r.service, "reviews");
    assert_eq!(r.version, "v2");
    assert_eq!(r.identity, "spiffe://example.org/ns/default/sa/reviews");
    assert_eq!(r.metadata["x-request-id"], "r1");

    let messages = ["a", "b", "c"].map(|m| EchoRequest { message: m.into() });
    let mut replies = client
        .stream(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = replies.message().await.unwrap() {
        assert_eq!(r.service, "reviews");
        got.push(r.message);
    }
    assert_eq!(got, ["a", "b", "c"]);
}

#[tokio::test]
async fn tcp_echo() {
    let s = start().await;
    let mut conn = TcpStream::connect(s.tcp[0]).await.unwrap();
    let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    let (mut rd, mut wr) = conn.split();
    let send = async {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let (_, read) = tokio::join!(send, rd.read_to_end(&mut back));
    read.unwrap();
    assert_eq!(back, data);
}

#[tokio::test]
async fn start_up_errors_name_what_to_fix() {
    let e = serve(Config::default()).await.err().unwrap();
    assert!(matches!(e, Error::NothingToServe), "{e}");

    let s = start().await;
    let taken = Config {
        http: s.http.clone(),
        ..Config::default()
    };
    let e = serve(taken).await.err().unwrap();
    assert!(e.to_string().contains(&s.http[0].to_string()), "{e}");

    let bad = Config {
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        workload: Responder {
            service: "new\nline".into(),
            ..Responder::default()
        },
        ..Config::default()
    };
    let e = serve(bad).await.err().unwrap();
    assert!(e.to_string().contains("--name"), "{e}");
}

#[tokio::test]
async fn dropping_the_server_stops_accepting() {
    let s = start().await;
    let addr = s.tcp[0];
    drop(s);
    // The accept loops are aborted, which closes the listeners.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting on {addr}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Who answered a call, as (service, version), and the report.
fn answered(call: &Call) -> (&str, &str, &Report) {
    assert_eq!(call.status, Some(200), "{call:?}");
    assert_eq!(call.error, None, "{call:?}");
    let r = call.report.as_ref().expect("the callee's report");
    (&r.workload.service, &r.workload.version, r)
}

#[tokio::test]
async fn calls_go_down_the_chain_and_the_reports_nest() {
    // productpage -> reviews v2 -> ratings, then productpage -> details.
    let ratings = start_calling("ratings", "v1", &[], TIMEOUT).await;
    let to_ratings = url(ratings.http[0], "/ratings/0");
    let reviews = start_calling("reviews", "v2", std::slice::from_ref(&to_ratings), TIMEOUT).await;
    let details = start_calling("details", "v1", &[], TIMEOUT).await;
    let to_reviews = url(reviews.http[0], "/reviews/0");
    let to_details = url(details.http[0], "/details/0");
    let productpage = start_calling(
        "productpage",
        "v1",
        &[to_reviews.clone(), to_details.clone()],
        TIMEOUT,
    )
    .await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("/productpage")
        .header("x-request-id", "req-1")
        .header("traceparent", traceparent)
        .header("x-b3-traceid", "4bf92f3577b34da6")
        .header("end-user", "jason")
        .header("cookie", "session=1")
        .header("x-private", "stays here")
        // Steers productpage only: its callees answer 200.
        .header("x-echo-status", "201")
        .body(Full::default())
        .unwrap();
    let (resp, body) = http1(productpage.http[0], req).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let r = report(&body);
    assert_eq!(r.workload.service, "productpage");
    // Without --cluster the report keeps the shape it had before it.
    assert!(report_json(&body).get("cluster").is_none());
    assert_eq!(r.headers["x-request-id"], "req-1");
    let [reviews_call, details_call] = &r.calls[..] else {
        panic!("two calls, in order: {:?}", r.calls);
    };

    assert_eq!(reviews_call.url, to_reviews);
    let (service, version, rv) = answered(reviews_call);
    assert_eq!((service, version), ("reviews", "v2"));
    assert_eq!(rv.path, "/reviews/0");
    assert_eq!(rv.proto, "HTTP/1.1");
    assert_eq!(rv.host, reviews.http[0].to_string());
    for (name, value) in [
        ("x-request-id", "req-1"),
        ("traceparent", traceparent),
        ("x-b3-traceid", "4bf92f3577b34da6"),
        ("end-user", "jason"),
        ("cookie", "session=1"),
        ("x-echo-hops", "1"),
    ] {
        assert_eq!(
            rv.headers.get(name).map(String::as_str),
            Some(value),
            "{name}"
        );
    }
    assert!(!rv.headers.contains_key("x-private"), "{:?}", rv.headers);
    assert!(
        !rv.headers.contains_key("x-echo-status"),
        "{:?}",
        rv.headers
    );

    let [ratings_call] = &rv.calls[..] else {
        panic!("reviews v2 calls ratings: {:?}", rv.calls);
    };
    assert_eq!(ratings_call.url, to_ratings);
    let (service, version, ra) = answered(ratings_call);
    assert_eq!((service, version), ("ratings", "v1"));
    assert_eq!(ra.headers["x-request-id"], "req-1");
    assert_eq!(ra.headers["traceparent"], traceparent);
    assert_eq!(ra.headers["x-echo-hops"], "2");
    assert!(ra.calls.is_empty());

    assert_eq!(details_call.url, to_details);
    let (service, version, de) = answered(details_call);
    assert_eq!((service, version), ("details", "v1"));
    assert_eq!(de.headers["x-request-id"], "req-1");
    assert!(de.calls.is_empty());

    // A server without --call answers with the report as before: no
    // `calls` field at all.
    let (_, body) = http1(details.http[0], get("/details/0")).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json.get("calls").is_none(), "{json}");
}

#[tokio::test]
async fn failed_calls_are_recorded_and_the_caller_still_answers() {
    // Bound but not listening: the connection is refused, and the port
    // stays ours (a listener dropped at once could hand its port to the
    // next bind, `silent`'s below, say, and the call would time out).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let refused = reserved.local_addr().unwrap();
    // Connections complete in the backlog, but nobody ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let details = start_calling("details", "v1", &[], TIMEOUT).await;
    let timeout = Duration::from_millis(300);
    let productpage = start_calling(
        "productpage",
        "v1",
        &[
            url(refused, "/reviews"),
            url(silent.local_addr().unwrap(), "/ratings"),
            url(details.http[0], "/details"),
            // The query, unlike x-echo-* headers, steers the callee.
            url(details.http[0], "/details?status=500"),
        ],
        timeout,
    )
    .await;

    let (resp, body) = http1(productpage.http[0], get("/")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let r = report(&body);
    assert_eq!(r.workload.service, "productpage");
    let [to_refused, to_silent, to_details, to_failing] = &r.calls[..] else {
        panic!("four calls: {:?}", r.calls);
    };
    assert_eq!(to_refused.url, url(refused, "/reviews"));
    assert_eq!((to_refused.status, &to_refused.report), (None, &None));
    let e = to_refused.error.as_deref().unwrap();
    assert!(e.contains("connect"), "{e}");
    assert_eq!((to_silent.status, &to_silent.report), (None, &None));
    let e = to_silent.error.as_deref().unwrap();
    assert!(e.contains("within 300ms"), "{e}");
    // The failures do not stop the calls after them.
    assert_eq!(answered(to_details).0, "details");
    assert_eq!(to_failing.status, Some(500));
    assert_eq!(to_failing.error, None);
    let failing = to_failing.report.as_ref().unwrap();
    assert_eq!(failing.workload.service, "details");
}

#[tokio::test]
async fn calls_reuse_a_pooled_connection_and_take_any_answer() {
    // A callee that is not an echo server, counting its connections.
    let callee = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = callee.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = callee.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let svc = service_fn(|_| async {
                let mut resp = Response::new(Full::<Bytes>::from("no healthy upstream"));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Ok::<_, Infallible>(resp)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::spawn(conn);
        }
    });
    let productpage = start_calling("productpage", "v1", &[url(addr, "/")], TIMEOUT).await;
    for _ in 0..3 {
        let (resp, body) = http1(productpage.http[0], get("/")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let r = report(&body);
        let [call] = &r.calls[..] else {
            panic!("one call: {:?}", r.calls);
        };
        assert_eq!(call.status, Some(503));
        assert_eq!((&call.report, &call.error), (&None, &None));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_too_many_calls_deep_makes_no_calls() {
    let details = start_calling("details", "v1", &[], TIMEOUT).await;
    let to_details = url(details.http[0], "/details");
    let productpage = start_calling("productpage", "v1", &[to_details], TIMEOUT).await;
    let req = Request::get("/").header("x-echo-hops", "10");
    let (resp, body) = http1(productpage.http[0], req.body(Full::default()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let r = report(&body);
    let e = r.calls[0].error.as_deref().unwrap();
    assert!(e.contains("loop"), "{e}");
    let stats = http1(details.http[0], get("/echo/stats")).await.1;
    assert_eq!(serde_json::from_slice::<Stats>(&stats).unwrap().requests, 0);
}

#[tokio::test]
async fn call_urls_must_be_plain_http() {
    let e = serve(Config {
        http: vec!["127.0.0.1:0".parse().unwrap()],
        callees: Callees {
            urls: vec!["https://reviews:9443/".parse().unwrap()],
            ..Callees::default()
        },
        ..Config::default()
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(e, Error::CallUrl { .. }), "{e}");
    assert!(
        e.to_string().contains("--call https://reviews:9443/"),
        "{e}"
    );
}
