//! The DNS proxy on real sockets on loopback: the server with a mesh view,
//! a test upstream resolver ([`super::testing::Upstream`]) and a client.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;

use super::testing::{addresses, query, Upstream};
use super::*;
use trellis_dataplane::mesh::{self, Mesh, Settings};
use trellis_dataplane::Shared;
use trellis_transport::connect::ConnectOpts;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn mesh_of(yaml: &str) -> Mesh {
    let settings = Settings {
        trust_domain: "example.org".into(),
        domain: "cluster.local".into(),
        namespace: "default".into(),
        labels: Default::default(),
        addresses: Vec::new(),
        peer_inbound_port: 15006,
        cluster: String::new(),
        network: String::new(),
        locality: Default::default(),
        principal: "spiffe://example.org/ns/default/sa/client".into(),
        workload_name: None,
        workload_group: None,
    };
    let resources = trellis_api::config::parse_documents(yaml).unwrap();
    mesh::build(resources, &settings, None)
}

fn service_entry(name: &str, host: &str, address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\n\
         spec: {{hosts: [{host}], addresses: [{address}], resolution: STATIC, ports: [{{number: 80, name: http}}]}}\n"
    )
}

/// A running proxy whose mesh view can be replaced.
struct Proxy {
    addr: SocketAddr,
    view: Arc<Shared<Mesh>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn proxy(upstreams: Vec<SocketAddr>, timeout: Duration) -> Proxy {
    let view = Arc::new(Shared::new(mesh_of(&service_entry(
        "reviews",
        "reviews.default.svc.cluster.local",
        "240.0.0.1",
    ))));
    let v = view.clone();
    let names: Names = Arc::new(move || v.load().dns().clone());
    let forwarder = Forwarder::new(
        upstreams,
        ConnectOpts {
            timeout,
            mark: None,
            keepalive: None,
        },
    );
    let listeners = Listeners::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listeners.local_addr().unwrap();
    let task = tokio::spawn(serve(listeners, Arc::new(Server::new(names, forwarder))));
    Proxy {
        addr,
        view,
        _task: task,
    }
}

async fn upstream() -> Upstream {
    Upstream::start(
        LOCALHOST,
        &[
            ("example.com", Ipv4Addr::new(192, 0, 2, 1)),
            ("truncated.example.com", Ipv4Addr::new(192, 0, 2, 2)),
        ],
    )
    .await
    .unwrap()
}

/// An address where nothing listens, on UDP or TCP.
fn dead_address() -> SocketAddr {
    let s = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn mesh_names_are_answered_and_the_rest_forwarded_over_udp_and_tcp() {
    let up = upstream().await;
    let p = proxy(vec![up.addr()], Duration::from_secs(2)).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let before = up.queries();
        for name in [
            "reviews",
            "reviews.default",
            "Reviews.Default.Svc.Cluster.Local.",
        ] {
            let r = query(p.addr, name, RecordType::A, transport).await.unwrap();
            assert_eq!(
                addresses(&r),
                [IpAddr::from([240, 0, 0, 1])],
                "{name} {transport:?}"
            );
            assert!(r.metadata.authoritative);
        }
        let r = query(p.addr, "reviews", RecordType::AAAA, transport)
            .await
            .unwrap();
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(up.queries(), before, "mesh names never reach the upstream");

        let r = query(p.addr, "Example.com", RecordType::A, transport)
            .await
            .unwrap();
        assert_eq!(
            addresses(&r),
            [IpAddr::from([192, 0, 2, 1])],
            "{transport:?}"
        );
        assert!(
            !r.metadata.authoritative,
            "the upstream's answer, as it sent it"
        );
        let r = query(p.addr, "nowhere.example.org", RecordType::A, transport)
            .await
            .unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(up.queries(), before + 2);
    }
}

#[tokio::test]
async fn servfail_when_no_upstream_answers() {
    let p = proxy(vec![dead_address(), dead_address()], Duration::from_secs(2)).await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let r = query(p.addr, "example.com", RecordType::A, transport)
            .await
            .unwrap();
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::ServFail,
            "{transport:?}"
        );
        assert_eq!(r.queries[0].name().to_ascii(), "example.com.");
        // Mesh names do not need upstreams.
        let r = query(p.addr, "reviews", RecordType::A, transport)
            .await
            .unwrap();
        assert_eq!(addresses(&r), [IpAddr::from([240, 0, 0, 1])]);
    }
    let none = proxy(Vec::new(), Duration::from_secs(2)).await;
    let r = query(none.addr, "example.com", RecordType::A, Transport::Udp)
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn a_silent_upstream_is_given_up_for_the_next() {
    // Bound, so no ICMP error tells the proxy: only the timeout does.
    let silent = std::net::UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let up = upstream().await;
    let timeout = Duration::from_millis(300);
    let p = proxy(vec![silent.local_addr().unwrap(), up.addr()], timeout).await;
    let start = Instant::now();
    let r = query(p.addr, "example.com", RecordType::A, Transport::Udp)
        .await
        .unwrap();
    assert_eq!(addresses(&r), [IpAddr::from([192, 0, 2, 1])]);
    assert!(start.elapsed() >= timeout, "asked the silent one first");
    let mut buf = [0u8; 512];
    silent.set_nonblocking(true).unwrap();
    assert!(
        silent.recv(&mut buf).is_ok(),
        "the silent upstream got the query"
    );
}

#[tokio::test]
async fn truncated_udp_answers_are_passed_on_and_tcp_gets_the_whole() {
    let up = upstream().await;
    let p = proxy(vec![up.addr()], Duration::from_secs(2)).await;
    let r = query(
        p.addr,
        "truncated.example.com",
        RecordType::A,
        Transport::Udp,
    )
    .await
    .unwrap();
    assert!(r.metadata.truncation && r.answers.is_empty(), "{r:?}");
    let r = query(
        p.addr,
        "truncated.example.com",
        RecordType::A,
        Transport::Tcp,
    )
    .await
    .unwrap();
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r), [IpAddr::from([192, 0, 2, 2])]);
}

#[tokio::test]
async fn names_follow_the_mesh_view_in_force() {
    let up = upstream().await;
    let p = proxy(vec![up.addr()], Duration::from_secs(2)).await;
    let r = query(p.addr, "ratings", RecordType::A, Transport::Udp)
        .await
        .unwrap();
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "forwarded before"
    );
    p.view.store(mesh_of(&service_entry(
        "ratings",
        "ratings.default.svc.cluster.local",
        "240.0.0.2",
    )));
    let r = query(p.addr, "ratings", RecordType::A, Transport::Udp)
        .await
        .unwrap();
    assert_eq!(addresses(&r), [IpAddr::from([240, 0, 0, 2])]);
    let r = query(p.addr, "reviews", RecordType::A, Transport::Udp)
        .await
        .unwrap();
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "gone from the view"
    );
}

#[tokio::test]
async fn garbage_gets_formerr_or_nothing_and_the_server_carries_on() {
    let up = upstream().await;
    let p = proxy(vec![up.addr()], Duration::from_secs(2)).await;
    let client = tokio::net::UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    client.connect(p.addr).await.unwrap();
    // Too short for a header: dropped. A header and nonsense: FORMERR.
    client.send(&[1, 2, 3]).await.unwrap();
    client
        .send(&[0xab, 0xcd, 0x01, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0xff])
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = hickory_proto::op::Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (0xabcd, ResponseCode::FormErr)
    );
    // A TCP client that sends half a message and leaves.
    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(&[0, 40, 1, 2]).await.unwrap();
    drop(tcp);
    for transport in [Transport::Udp, Transport::Tcp] {
        let r = query(p.addr, "reviews", RecordType::A, transport)
            .await
            .unwrap();
        assert_eq!(addresses(&r), [IpAddr::from([240, 0, 0, 1])]);
    }
}
