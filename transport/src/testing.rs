//! Test doubles for code that opens connections: a loopback server that
//! counts its connections, an address whose connects hang, and the first
//! bytes of a real TLS client. For tests of this crate and of the crates above it (the
//! `test-util` feature).
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// A server on loopback running `serve` on each connection it accepts,
/// and how many connections it has accepted and has open (`serve` not
/// returned yet).
pub struct Counting {
    pub addr: SocketAddr,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn counting_server<F, Fut>(serve: F) -> Counting
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::Ordering::SeqCst;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Counting {
        addr: l.local_addr().unwrap(),
        accepted: Default::default(),
        open: Default::default(),
    };
    let (a, o) = (server.accepted.clone(), server.open.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            a.fetch_add(1, SeqCst);
            o.fetch_add(1, SeqCst);
            let (o, served) = (o.clone(), serve(s));
            tokio::spawn(async move {
                served.await;
                o.fetch_sub(1, SeqCst);
            });
        }
    });
    server
}

/// A loopback address whose connects hang, as a blackholed one's do: a
/// listener with a backlog of 0 and one connection already queued, which
/// Linux answers by dropping further SYNs. Keep what it returns alive.
pub fn unanswered() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => queued.push(s),
            // The accept queue is full: from now on connects hang.
            Err(_) => return (l, queued, addr),
        }
    }
    panic!("connects to a listener that never accepts keep succeeding (not Linux?)");
}

/// The first flight of a real TLS client (rustls) offering `sni` and
/// `alpn`: its ClientHello.
pub fn client_hello(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}
