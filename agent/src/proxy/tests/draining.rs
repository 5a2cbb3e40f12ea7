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
