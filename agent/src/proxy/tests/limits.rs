//! What the agents take and what they refuse: header sizes, answers the
//! agent cannot parse, malformed requests. Each refusal is made once, by
//! the agent that saw the problem, and is never retried.
use super::*;

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
