//! Draining: the listeners stop taking connections, requests in flight
//! finish.
use super::*;

#[tokio::test]
async fn a_drain_lets_the_request_in_flight_finish_and_refuses_new_ones() {
    let app = App::start(|_, _| (200, Duration::from_millis(500))).await;
    let mut p = pair(&app, REVIEWS_SERVICE).await;
    let in_flight = tokio::spawn(send(p.upstream, get("/long")));
    trellis_testing::eventually("the request reaches the app", || app.requests() == 1).await;
    let signal = p.client.signal.take().unwrap();
    // The client agent's watches: its listeners and its connection.
    drop(p.client.watch);
    let drained = tokio::spawn(signal.drain(Duration::from_secs(10)));
    let got = in_flight.await.unwrap();
    assert_eq!((got.status, got.body.as_str()), (200, "/long"));
    assert!(
        drained.await.unwrap(),
        "the drain completes once the request is done"
    );
    assert!(
        TcpStream::connect(p.upstream).await.is_err(),
        "no new connections once drained"
    );
}

/// An HTTP/1.1 keep-alive connection to `addr`: its sender, and its
/// connection's task (which ends when the agent closes it).
async fn keep_alive(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    (
        sender,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

#[tokio::test]
async fn a_drain_answers_the_next_http1_request_with_connection_close() {
    let app = App::start(|_, _| (200, Duration::ZERO)).await;
    let mut p = pair(&app, REVIEWS_SERVICE).await;
    let (mut sender, conn) = keep_alive(p.upstream).await;
    let first = sender.send_request(get("/first")).await.unwrap();
    assert!(first.headers().get(http::header::CONNECTION).is_none());
    first.into_body().collect().await.unwrap();
    let signal = p.client.signal.take().unwrap();
    drop(p.client.watch);
    let drained = tokio::spawn(signal.drain(Duration::from_secs(10)));
    // Idle, it stays open: its client may be sending a request already.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!conn.is_finished(), "an idle connection closed at once");
    sender.ready().await.unwrap();
    let next = sender.send_request(get("/next")).await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(next.headers()[http::header::CONNECTION], "close");
    let body = next.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/next");
    // Closed after it, which ends the drain.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection closes after its response")
        .unwrap();
    assert!(drained.await.unwrap());
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_at_the_drain_deadline() {
    let app = App::start(|_, _| (200, Duration::ZERO)).await;
    let mut p = pair(&app, REVIEWS_SERVICE).await;
    let (mut sender, conn) = keep_alive(p.upstream).await;
    let first = sender.send_request(get("/first")).await.unwrap();
    first.into_body().collect().await.unwrap();
    let signal = p.client.signal.take().unwrap();
    drop(p.client.watch);
    let start = tokio::time::Instant::now();
    assert!(
        !signal.drain(Duration::from_millis(600)).await,
        "an idle keep-alive connection is held until the deadline"
    );
    assert!(start.elapsed() >= Duration::from_millis(600));
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("closed once the deadline passed")
        .unwrap();
}
