//! `CONNECT` in HTTP proxy mode: a tunnel through the mesh to a service
//! (HTTP carried request by request, anything else over mTLS), straight
//! through to a host outside it, or refused under REGISTRY_ONLY.
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Sends `CONNECT authority` to the proxy at `proxy`: the status line,
/// and the connection (the tunnel, if it was opened).
async fn connect(proxy: SocketAddr, authority: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    (head.lines().next().unwrap_or_default().to_string(), s)
}

/// A TCP server that upper-cases what it reads.
async fn shouting() -> SocketAddr {
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `db`: opaque TCP, served by the workload with an agent at `{DB}`.
const DB: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints:
  - {address: 127.0.0.1, serviceAccount: reviews, ports: {tcp: {DB}}}
"#;

async fn with_db(app: &App, db: SocketAddr, extra: &str) -> Pair {
    let config = format!(
        "{REVIEWS_SERVICE}{}{extra}",
        DB.replace("{DB}", &db.port().to_string())
    );
    pair(app, &config).await
}

#[tokio::test]
async fn a_tunnel_to_a_mesh_service_carries_http_through_the_mesh() {
    let app = App::ok().await;
    let p = with_db(&app, shouting().await, "").await;
    let proxy = p.client.proxy().await;
    let (status, mut t) = connect(proxy, "reviews.default.svc.cluster.local:9080").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    t.write_all(b"GET /tunnelled HTTP/1.1\r\nHost: reviews:9080\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = t.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("/tunnelled"), "{answer}");
    // Over mTLS, as the calling workload.
    let seen = &app.seen()[0];
    let xfcc = seen.headers["x-forwarded-client-cert"].to_str().unwrap();
    assert!(xfcc.ends_with("sa/client"), "{xfcc}");
}

#[tokio::test]
async fn a_tunnel_to_a_tcp_service_carries_its_bytes_over_mtls() {
    let app = App::ok().await;
    let p = with_db(&app, shouting().await, "").await;
    let proxy = p.client.proxy().await;
    // By its short name, as an application would.
    let (status, mut t) = connect(proxy, "db.default:5432").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    t.write_all(b"select 1").await.unwrap();
    let mut got = [0u8; 8];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"SELECT 1");
    let mtls = ["connection_security_policy=\"mutual_tls\""];
    drop(t);
    trellis_testing::eventually("the server's agent saw the connection", || {
        series(
            &p.server.metrics(),
            "istio_tcp_connections_opened_total",
            &mtls,
        ) == 1
    })
    .await;
}

#[tokio::test]
async fn a_tunnel_to_a_host_outside_the_mesh_passes_through_under_allow_any() {
    let app = App::ok().await;
    let outside = shouting().await;
    let p = with_db(&app, shouting().await, "").await;
    let proxy = p.client.proxy().await;
    let (status, mut t) = connect(proxy, &outside.to_string()).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    t.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    t.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"HELLO");
    // Nothing listens there: a 503 (UF), at once.
    let closed = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let (status, _) = connect(proxy, &gone.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
}

#[tokio::test]
async fn a_tunnel_the_mesh_cannot_carry_is_refused_with_a_reason() {
    let registry_only = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: default}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;
    let app = App::ok().await;
    let outside = shouting().await;
    let p = with_db(&app, shouting().await, registry_only).await;
    let proxy = p.client.proxy().await;
    let (status, mut t) = connect(proxy, &outside.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let mut body = String::new();
    let _ = t.read_to_string(&mut body).await;
    assert!(body.contains("REGISTRY_ONLY"), "{body}");
    // A service of the mesh, on a port it does not have.
    let (status, _) = connect(proxy, "reviews.default.svc.cluster.local:1234").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    // The mesh's own services are still reachable.
    let (status, _) = connect(proxy, "db.default.svc.cluster.local:5432").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}
