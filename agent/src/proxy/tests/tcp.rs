//! Opaque TCP through a client agent and a server agent: one mTLS
//! connection per connection, bytes both ways, reported when it closes.
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A TCP service: `db.default.svc.cluster.local:5432`, its application on
/// `{APP}`.
const DB: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints:
  - {address: 127.0.0.1, labels: {app: db}, serviceAccount: db, ports: {tcp: {APP}}}
"#;

/// An application that sends back what it reads, upper-cased, until the
/// client closes.
async fn shouting_echo() -> SocketAddr {
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if s.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_is_carried_both_ways_and_reported_on_both_sides() {
    let app = shouting_echo().await;
    let ca = TestCa::new();
    let config = yaml(DB, app.port());
    let server = Agent::start(&ca, "db", &config, 0).await;
    let client = Agent::start(&ca, "client", &config, server.inbound.port()).await;
    let upstream = client.upstream("db.default.svc.cluster.local", 5432).await;

    let mut c = TcpStream::connect(upstream).await.unwrap();
    c.write_all(b"select 1").await.unwrap();
    let mut got = [0u8; 8];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"SELECT 1");
    drop(c);

    let sent = [
        "reporter=\"source\"",
        "destination_principal=\"spiffe://td/ns/default/sa/db\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    trellis_testing::eventually("the client agent reports the closed connection", || {
        series(
            &client.metrics(),
            "istio_tcp_connections_closed_total",
            &sent,
        ) == 1
    })
    .await;
    assert_eq!(
        series(&client.metrics(), "istio_tcp_sent_bytes_total", &sent),
        8
    );
    assert_eq!(
        series(&client.metrics(), "istio_tcp_received_bytes_total", &sent),
        8
    );
    let received = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://td/ns/default/sa/client\"",
    ];
    trellis_testing::eventually("the server agent reports the closed connection", || {
        series(
            &server.metrics(),
            "istio_tcp_connections_closed_total",
            &received,
        ) == 1
    })
    .await;
}

#[tokio::test]
async fn a_tcp_service_with_no_endpoint_is_closed_and_reported() {
    let ca = TestCa::new();
    let config = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp, protocol: TCP}]
"#;
    let client = Agent::start(&ca, "client", config, 15006).await;
    let upstream = client.upstream("db.default.svc.cluster.local", 5432).await;
    let mut c = TcpStream::connect(upstream).await.unwrap();
    let mut buf = Vec::new();
    // The agent closes the connection without carrying it anywhere.
    c.read_to_end(&mut buf).await.unwrap();
    assert!(buf.is_empty());
    let db = [
        "reporter=\"source\"",
        "destination_service=\"db.default.svc.cluster.local\"",
    ];
    let m = client.metrics();
    assert_eq!(series(&m, "istio_tcp_connections_closed_total", &db), 1);
    assert_eq!(series(&m, "istio_tcp_sent_bytes_total", &db), 0);
}

#[tokio::test]
async fn a_captured_connection_outside_the_mesh_is_closed_under_registry_only() {
    let registry_only = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;
    let outside = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let orig = outside.local_addr().unwrap();
    let ca = TestCa::new();
    let agent = Agent::start(&ca, "client", registry_only, 0).await;
    // As if capture had brought a connection for `orig` to the agent.
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let app = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (tcp, remote) = l.accept().await.unwrap();
    let refused = crate::proxy::outbound::tcp::passthrough(&agent.px, tcp, remote, orig).await;
    assert!(
        matches!(&refused, Err(crate::proxy::ConnError::Refused { cluster, .. }) if cluster == "BlackHoleCluster"),
        "{refused:?}"
    );
    let nothing = tokio::time::timeout(Duration::from_millis(200), outside.accept()).await;
    assert!(nothing.is_err(), "no connection to the outside");
    drop(app);
    // Reported (the access log has the flag; TCP metrics have none).
    let refused = ["destination_service=\"127.0.0.1\""];
    assert_eq!(
        series(
            &agent.metrics(),
            "istio_tcp_connections_closed_total",
            &refused
        ),
        1
    );
}
