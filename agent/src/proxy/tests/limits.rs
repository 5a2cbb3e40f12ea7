//! What the agents take and what they refuse: header sizes, answers the
//! agent cannot parse, malformed requests. Each refusal is made once, by
//! the agent that saw the problem, and is never retried.
use super::*;

/// A header value of `n` bytes.
fn bytes(n: usize) -> String {
    "a".repeat(n)
}

/// A POST of `body` to `path` with `Host: reviews:9080`.
fn post(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(http::header::HOST, "reviews:9080")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_response_with_20_kb_of_headers_is_carried_to_the_client() {
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    let mut req = post("/big", "x");
    req.headers_mut()
        .insert(HEADER_BYTES, http::HeaderValue::from_static("20000"));
    let got = send(p.upstream, req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["x-big"].len(), 20_000);
    assert_eq!(app.requests(), 1);
}

#[tokio::test]
async fn a_response_head_past_the_limit_is_a_502_upe_and_the_post_is_not_sent_again() {
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    let mut req = post("/huge", "x");
    req.headers_mut()
        .insert(HEADER_BYTES, http::HeaderValue::from_static("70000"));
    let got = send(p.upstream, req).await;
    assert_eq!(got.status, 502, "{}", got.body);
    assert_eq!(app.requests(), 1, "the POST reached the application once");
    // The server's agent could not take the application's answer.
    let upe = ["response_code=\"502\"", "response_flags=\"UPE\""];
    trellis_testing::eventually("the server's agent reports UPE", || {
        series(&p.server.metrics(), "istio_requests_total", &upe) == 1
    })
    .await;
    let client = ["reporter=\"source\"", "response_code=\"502\""];
    assert_eq!(
        series(&p.client.metrics(), "istio_requests_total", &client),
        1
    );
}

#[tokio::test]
async fn request_headers_under_60_kb_reach_the_app_and_larger_ones_get_431_from_the_calling_agent()
{
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    let mut req = get("/20k");
    req.headers_mut()
        .insert("x-big", bytes(20_000).parse().unwrap());
    assert_eq!(send(p.upstream, req).await.status, 200);
    // Over the limit: refused at once by the client's agent, so the
    // server's agent never sees it.
    let raw = format!(
        "GET /70k HTTP/1.1\r\nHost: reviews:9080\r\nx-big: {}\r\n\r\n",
        bytes(70_000)
    );
    let got = raw_exchange(p.upstream, raw.as_bytes()).await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    assert_eq!(app.requests(), 1);
    // Refused by the client's agent itself, and counted there.
    let too_large = [
        "reporter=\"source\"",
        "response_code=\"431\"",
        "response_flags=\"DPE\"",
    ];
    assert_eq!(
        series(&p.client.metrics(), "istio_requests_total", &too_large),
        1
    );
    trellis_testing::eventually("the first request reported", || {
        series(&p.server.metrics(), "istio_requests_total", &[]) == 1
    })
    .await;
    let server_431 = ["response_code=\"431\""];
    assert_eq!(
        series(&p.server.metrics(), "istio_requests_total", &server_431),
        0
    );
}

#[tokio::test]
async fn an_http2_client_with_headers_past_the_limit_gets_431_not_a_refused_stream() {
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    for (n, want) in [(20_000, 200), (70_000, 431)] {
        let req = Request::get("http://reviews:9080/h2")
            .header("x-big", bytes(n))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap_or_else(|e| panic!("{n} bytes: {e}"));
        assert_eq!(resp.status(), want, "{n} bytes");
        client = client.ready().await.unwrap();
    }
    // Past 4 times the limit h2 stops decoding and closes the connection:
    // a connection error, not a stream a client would send again.
    let req = Request::get("http://reviews:9080/h2")
        .header("x-big", bytes(300_000))
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let err = resp.await.unwrap_err();
    assert_ne!(err.reason(), Some(h2::Reason::REFUSED_STREAM), "{err}");
    assert!(err.is_go_away(), "{err}");
    assert_eq!(app.requests(), 1);
}

/// Writes `raw` on a new connection to `addr` and reads what comes back
/// until the connection closes (or 5 s pass).
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The agent may answer and close before it has read all of it.
    let _ = s.write_all(raw).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn requests_without_a_host_get_400_dpe_from_the_calling_agent() {
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    for version in ["HTTP/1.1", "HTTP/1.0"] {
        let raw = format!("GET /no-host {version}\r\n\r\n");
        let got = raw_exchange(p.upstream, raw.as_bytes()).await;
        assert!(got.contains(" 400 Bad Request\r\n"), "{version}: {got}");
        assert!(got.ends_with("missing required header: host"), "{got}");
    }
    let got = raw_exchange(p.upstream, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    // A head that does not parse: hyper's 400, counted as the agent's.
    let got = raw_exchange(p.upstream, b"GET / HTTP/1.1\r\nbroken header\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert_eq!(app.requests(), 0);
    let dpe = ["response_code=\"400\"", "response_flags=\"DPE\""];
    assert_eq!(series(&p.client.metrics(), "istio_requests_total", &dpe), 4);
    assert_eq!(series(&p.server.metrics(), "istio_requests_total", &[]), 0);
}

#[tokio::test]
async fn an_invalid_chunk_size_is_the_clients_fault_400_dpe_not_an_upstream_failure() {
    let app = App::ok().await;
    let p = pair(&app, REVIEWS_SERVICE).await;
    let raw = b"POST /chunks HTTP/1.1\r\nHost: reviews:9080\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let got = raw_exchange(p.upstream, raw).await;
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    let dpe = ["response_code=\"400\"", "response_flags=\"DPE\""];
    trellis_testing::eventually("the client's agent reports DPE", || {
        series(&p.client.metrics(), "istio_requests_total", &dpe) == 1
    })
    .await;
    let upstream_failures = ["reporter=\"source\"", "response_code=\"503\""];
    assert_eq!(
        series(
            &p.client.metrics(),
            "istio_requests_total",
            &upstream_failures
        ),
        0
    );
    assert!(
        series(&p.server.metrics(), "istio_requests_total", &[]) <= 1,
        "not sent again"
    );
}
