//! The echo server in-process on loopback, spoken to by real clients:
//! hyper for HTTP/1.1, h2c and Upgrade, tonic for gRPC, a socket for TCP.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trellis_echo::v1::echo_client::EchoClient;
use trellis_echo::v1::EchoRequest;
use trellis_echo::{serve, Config, Error, Report, Server, Stats, Workload};

async fn start() -> Server {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    serve(Config {
        http: vec![any],
        grpc: vec![any],
        tcp: vec![any],
        workload: Workload {
            service: "reviews".into(),
            version: "v2".into(),
            identity: "spiffe://example.org/ns/default/sa/reviews".into(),
        },
        ..Config::default()
    })
    .await
    .unwrap()
}

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
        workload: Workload {
            service: "new\nline".into(),
            ..Workload::default()
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
