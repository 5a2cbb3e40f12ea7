//! The inbound listener on its own: who may connect, and how.
use tokio::io::AsyncReadExt;
use trellis_dataplane::tls::ALPN_H2;

use super::*;

#[tokio::test]
async fn a_plaintext_connection_straight_to_inbound_is_closed_unserved() {
    let app = App::ok().await;
    let ca = TestCa::new();
    let server = Agent::start(&ca, "reviews", &yaml(REVIEWS_SERVICE, app.addr.port()), 0).await;
    // No capture, so no original destination: no port to forward to.
    let mut c = TcpStream::connect(server.inbound).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Closed (or reset, the request unread) with no answer.
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf).await;
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let app = App::ok().await;
    let server = Agent::start(
        &TestCa::new(),
        "reviews",
        &yaml(REVIEWS_SERVICE, app.addr.port()),
        0,
    )
    .await;
    // A client of another mesh: its own CA, which it also trusts for the server.
    let other = TestCa::new();
    let stranger = Agent::start(&other, "client", "", 0).await;
    let expect = SpiffeId::parse("spiffe://td/ns/default/sa/reviews").unwrap();
    let sni = trellis_transport::sni::Sni::encode(app.addr.port(), "", REVIEWS);
    let refused = stranger
        .px
        .tls
        .connect(server.inbound, &sni, &expect, ALPN_H2, &stranger.px.opts)
        .await;
    assert!(refused.is_err(), "the handshake must fail");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn the_sni_names_the_application_port() {
    let app = App::ok().await;
    let ca = TestCa::new();
    let server = Agent::start(&ca, "reviews", &yaml(REVIEWS_SERVICE, app.addr.port()), 0).await;
    let client = Agent::start(&ca, "client", "", 0).await;
    let expect = SpiffeId::parse("spiffe://td/ns/default/sa/reviews").unwrap();
    let sni = trellis_transport::sni::Sni::encode(app.addr.port(), "", REVIEWS);
    let tls = client
        .px
        .tls
        .connect(server.inbound, &sni, &expect, ALPN_H2, &client.px.opts)
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://reviews:9080/by-sni").body(()).unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.seen()[0].path, "/by-sni");
}
