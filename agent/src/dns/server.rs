//! The DNS listeners: UDP and TCP on one address (127.0.0.1:15053 by
//! default). Each query is decided by [`answer`] against the name table of
//! the mesh view in force; what is not the mesh's goes to the
//! [`Forwarder`], and SERVFAIL comes back when no upstream answers.
//!
//! Bounded: at most [`MAX_FORWARDS`] UDP queries wait on upstreams at once
//! (more are dropped, and the client retries), at most
//! [`MAX_CONNECTIONS`] TCP clients are served at once (more are closed),
//! and a TCP client that sends nothing for [`TCP_IDLE`] is closed.
//! Local answers over UDP are made on the receiving task itself, with no
//! task or allocation per query beyond the answer.
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::answer::{self, Action, Transport};
use super::forward::Forwarder;
use super::frame;
use trellis_dataplane::mesh::names::NameTable;

/// UDP queries forwarded and not yet answered, at most.
pub const MAX_FORWARDS: usize = 1024;
/// TCP clients served at once, at most.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a TCP client may take to send its next query.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// The largest datagram: a DNS message over UDP fits in it.
const MAX_DATAGRAM: usize = 65_535;

/// The name table of the mesh view in force.
pub type Names = Arc<dyn Fn() -> Arc<NameTable> + Send + Sync>;

/// What the listeners share.
pub struct Server {
    names: Names,
    forwarder: Forwarder,
    forwards: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

impl Server {
    pub fn new(names: Names, forwarder: Forwarder) -> Self {
        Self {
            names,
            forwarder,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }

    fn decide(&self, query: &[u8], transport: Transport) -> Action {
        answer::answer(&(self.names)(), query, transport)
    }

    /// An upstream's answer to `query`, else SERVFAIL.
    async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let answered = match transport {
            Transport::Udp => self.forwarder.udp(query).await,
            Transport::Tcp => self.forwarder.tcp(query).await,
        };
        answered
            .inspect_err(|e| tracing::debug!(error = %e, "answering SERVFAIL"))
            .ok()
            .or_else(|| answer::servfail(query))
    }

    /// Queries on one TCP connection, one after the other, until the
    /// client closes it, goes quiet or sends what cannot be answered.
    async fn serve_connection(&self, mut stream: TcpStream) {
        loop {
            let query = match tokio::time::timeout(TCP_IDLE, frame::read(&mut stream)).await {
                Ok(Ok(Some(q))) => q,
                _ => return,
            };
            let reply = match self.decide(&query, Transport::Tcp) {
                Action::Reply(r) => r,
                Action::Forward => match self.forward(&query, Transport::Tcp).await {
                    Some(r) => r,
                    None => return,
                },
                Action::Drop => return,
            };
            match tokio::time::timeout(TCP_IDLE, frame::write(&mut stream, &reply)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }
}

/// The UDP socket and the TCP listener, on the same address.
pub struct Listeners {
    pub(super) udp: UdpSocket,
    pub(super) tcp: TcpListener,
}

impl Listeners {
    /// Binds both on `addr`; with port 0, on one port free for both.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        // With port 0 the TCP port is taken from the UDP one, which
        // another process may hold: try a few.
        let tries = if addr.port() == 0 { 10 } else { 1 };
        let mut last = None;
        for _ in 0..tries {
            let udp = UdpSocket::bind(addr).await?;
            match TcpListener::bind(udp.local_addr()?).await {
                Ok(tcp) => return Ok(Self { udp, tcp }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no port")))
    }

    /// Both, from sockets bound already (handed over by the agent that
    /// ran before).
    pub fn from_std(udp: std::net::UdpSocket, tcp: std::net::TcpListener) -> io::Result<Self> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok(Self {
            udp: UdpSocket::from_std(udp)?,
            tcp: TcpListener::from_std(tcp)?,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Copies of both sockets, to hand over to a successor.
    pub fn sockets(&self) -> io::Result<[std::os::fd::OwnedFd; 2]> {
        use std::os::fd::AsFd;
        Ok([
            self.udp.as_fd().try_clone_to_owned()?,
            self.tcp.as_fd().try_clone_to_owned()?,
        ])
    }
}

/// Serves both listeners until the task is dropped.
pub async fn serve(listeners: Listeners, server: Arc<Server>) {
    tokio::join!(
        serve_udp(listeners.udp, server.clone()),
        serve_tcp(listeners.tcp, server)
    );
}

async fn serve_udp(socket: UdpSocket, server: Arc<Server>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = &buf[..n];
        match server.decide(query, Transport::Udp) {
            Action::Reply(reply) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            Action::Drop => {}
            Action::Forward => {
                let Ok(permit) = server.forwards.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "{MAX_FORWARDS} DNS queries in flight; dropping one");
                    continue;
                };
                let (server, socket, query) = (server.clone(), socket.clone(), query.to_vec());
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(reply) = server.forward(&query, Transport::Udp).await {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, server: Arc<Server>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = server.connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "{MAX_CONNECTIONS} DNS clients over TCP; closing one");
            continue;
        };
        let server = server.clone();
        tokio::spawn(async move {
            let _permit = permit;
            server.serve_connection(stream).await;
        });
    }
}
