//! Test support (feature `test-util`): a tiny upstream resolver and a
//! client, for the DNS proxy's tests here and in `trellis-e2e`. Written
//! with hickory-proto directly, so that the proxy is checked against code
//! other than its own.
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::answer::Transport;
use super::frame;

/// Over UDP, names whose first label is this are answered with TC set and
/// no records, so the client retries over TCP, where they are answered.
pub const TRUNCATED_LABEL: &str = "truncated";

/// An upstream resolver on UDP and TCP: A records for its names, NXDOMAIN
/// for the rest. Stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    _tasks: JoinSet<()>,
}

type Records = Arc<HashMap<String, Ipv4Addr>>;

impl Upstream {
    /// Serves `records` (names without the trailing dot) on `ip`, on a port
    /// the system picks, free for both UDP and TCP.
    pub async fn start(ip: IpAddr, records: &[(&str, Ipv4Addr)]) -> io::Result<Self> {
        Self::start_at(SocketAddr::new(ip, 0), records).await
    }

    /// Serves `records` on `addr` (port 53, say, for a resolver that
    /// /etc/resolv.conf can name).
    pub async fn start_at(addr: SocketAddr, records: &[(&str, Ipv4Addr)]) -> io::Result<Self> {
        let records: Records = Arc::new(
            records
                .iter()
                .map(|(n, a)| (n.to_ascii_lowercase(), *a))
                .collect(),
        );
        let listeners = super::Listeners::bind(addr).await?;
        let addr = listeners.local_addr()?;
        let queries = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(listeners.udp, records.clone(), queries.clone()));
        tasks.spawn(serve_tcp(listeners.tcp, records, queries.clone()));
        Ok(Self {
            addr,
            queries,
            _tasks: tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far, over both transports.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

async fn serve_udp(udp: UdpSocket, records: Records, queries: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; 65_535];
    while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
        queries.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = respond(&records, &buf[..len], Transport::Udp) {
            let _ = udp.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(tcp: TcpListener, records: Records, queries: Arc<AtomicUsize>) {
    while let Ok((mut stream, _)) = tcp.accept().await {
        let (records, queries) = (records.clone(), queries.clone());
        tokio::spawn(async move {
            while let Ok(Some(q)) = frame::read(&mut stream).await {
                queries.fetch_add(1, Ordering::Relaxed);
                let Some(reply) = respond(&records, &q, Transport::Tcp) else {
                    return;
                };
                if frame::write(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn respond(records: &Records, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let truncate = transport == Transport::Udp && name.split('.').next() == Some(TRUNCATED_LABEL);
    match records.get(name) {
        _ if truncate => r.metadata.truncation = true,
        Some(ip) if question.query_type() == RecordType::A => {
            r.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A(*ip)),
            ));
        }
        Some(_) => {}
        None => r.metadata.response_code = ResponseCode::NXDomain,
    }
    r.to_vec().ok()
}

/// Asks `server` for `name`'s `rtype` records over `transport` and returns
/// the answer (waiting at most 5 s).
pub async fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    transport: Transport,
) -> io::Result<Message> {
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    let name =
        Name::from_ascii(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    q.add_query(Query::query(name, rtype));
    let bytes = q.to_vec().map_err(io::Error::other)?;
    let exchange = async {
        let reply = match transport {
            Transport::Udp => {
                let local: SocketAddr = if server.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(server).await?;
                socket.send(&bytes).await?;
                let mut buf = vec![0u8; 65_535];
                let n = socket.recv(&mut buf).await?;
                buf.truncate(n);
                buf
            }
            Transport::Tcp => {
                let mut s = TcpStream::connect(server).await?;
                frame::write(&mut s, &bytes).await?;
                frame::read(&mut s)
                    .await?
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?
            }
        };
        let m =
            Message::from_vec(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if m.metadata.id != q.metadata.id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "answer to another query",
            ));
        }
        Ok(m)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {server} within 5 s"),
            )
        })?
}

/// The addresses of the answer records of `m`.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers.iter().filter_map(|r| r.data.ip_addr()).collect()
}
