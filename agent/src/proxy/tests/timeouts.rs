//! How long a client may take and stay: a request head must arrive within
//! the request-headers timeout, a connection with no request open is
//! closed after the idle timeout, and neither touches an upgraded
//! connection.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const HEADERS: Duration = Duration::from_millis(300);
const IDLE: Duration = Duration::from_millis(900);

/// A pair whose client agent has short timeouts, in front of the
/// application on `app_port`.
async fn impatient(app_port: u16) -> Pair {
    let ca = TestCa::new();
    let config = yaml(REVIEWS_SERVICE, app_port);
    let server = Agent::start(&ca, "reviews", &config, 0).await;
    let mut setup = Setup::default();
    setup.downstream.timeouts = crate::proxy::downstream::Timeouts {
        request_headers: Some(HEADERS),
        idle: Some(IDLE),
    };
    let port = server.inbound.port();
    let client = Agent::start_with(&ca, "client", &config, port, setup).await;
    let upstream = client.upstream(REVIEWS, 9080).await;
    Pair {
        client,
        server,
        upstream,
    }
}

/// How long `s` stays open (reading and dropping whatever comes), up to
/// `most`.
async fn open_for(s: &mut TcpStream, most: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(most, async {
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    t.elapsed()
}

#[tokio::test]
async fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_request_headers_timeout() {
    let app = App::ok().await;
    let p = impatient(app.addr.port()).await;
    let mut s = TcpStream::connect(p.upstream).await.unwrap();
    let started = Instant::now();
    let head =
        b"GET /slowloris HTTP/1.1\r\nHost: reviews:9080\r\nx-filler: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = if closed {
        started.elapsed()
    } else {
        started.elapsed() + open_for(&mut s, Duration::from_secs(5)).await
    };
    assert!(open < Duration::from_secs(2), "open for {open:?}");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_request_headers_timeout() {
    let app = App::ok().await;
    let p = impatient(app.addr.port()).await;
    let mut s = TcpStream::connect(p.upstream).await.unwrap();
    let open = open_for(&mut s, Duration::from_secs(5)).await;
    assert!(open >= HEADERS && open < HEADERS * 4, "open for {open:?}");
}

#[tokio::test]
async fn a_keep_alive_connection_waits_the_idle_timeout_for_its_next_request() {
    let app = App::ok().await;
    let p = impatient(app.addr.port()).await;
    let mut s = TcpStream::connect(p.upstream).await.unwrap();
    let req = b"GET /first HTTP/1.1\r\nHost: reviews:9080\r\n\r\n";
    s.write_all(req).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle past the request-headers timeout: still open, and served.
    tokio::time::sleep(HEADERS * 2).await;
    s.write_all(b"GET /second HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let open = open_for(&mut s, Duration::from_secs(5)).await;
    assert!(open >= IDLE && open < IDLE * 3, "idle for {open:?}");
    assert_eq!(app.requests(), 2);
}

#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_at_the_idle_timeout() {
    let app = App::ok().await;
    let p = impatient(app.addr.port()).await;
    let tcp = TcpStream::connect(p.upstream).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::get("http://reviews:9080/h2").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let t = Instant::now();
    // The connection ends (GOAWAY, then close) once idle that long.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "still open");
    assert!(t.elapsed() >= IDLE * 2 / 3, "{:?}", t.elapsed());
}

/// An application that answers an upgrade with 101 and then echoes.
async fn upgrade_echo() -> SocketAddr {
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
                if s.write_all(switched).await.is_err() {
                    return;
                }
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upgraded_connection_outlives_both_timeouts() {
    let echo = upgrade_echo().await;
    let p = impatient(echo.port()).await;
    let mut s = TcpStream::connect(p.upstream).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: reviews:9080\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Quiet for longer than either timeout, then a byte now and then
    // (a head would have been cut off by now).
    tokio::time::sleep(IDLE + HEADERS).await;
    for msg in [&b"ping"[..], b"p", b"o", b"ng"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
        tokio::time::sleep(HEADERS).await;
    }
}
