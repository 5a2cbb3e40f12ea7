//! Handing listening sockets to a successor process (a hot restart, as
//! Envoy does it): the running process ([`Offer`]) listens on an abstract
//! Unix socket whose name it gives the successor in [`ENV`]; the successor
//! connects ([`Received::from_env`]), the running process checks that the
//! peer is the process it started (`SO_PEERCRED`) and sends it duplicates
//! of its listening sockets in one message (`SCM_RIGHTS`). The successor
//! takes each socket it would otherwise bind, by its local address
//! ([`Received::take_tcp`], [`Received::take_udp`]): the same socket, so
//! no connection is refused while the two processes overlap, and the
//! kernel queues what neither has accepted yet. Then a two-line
//! handshake on the same connection: the successor says `ready` once it
//! serves ([`Received::ready`]); the running process answers `ok` once it
//! has given up its place (to systemd, say) and starts its drain
//! ([`Handoff::wait_ready`], [`Handoff::confirm`]).
//!
//! Sockets rather than inherited descriptors (systemd's `LISTEN_FDS`):
//! taking an inherited descriptor number as a socket needs `unsafe`
//! (`from_raw_fd`, and setting `LISTEN_PID` between `fork` and `exec`),
//! which the workspace forbids; `SCM_RIGHTS` is safe Rust with rustix.
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The variable that names the socket to take the sockets from: `@NAME`,
/// an abstract Unix socket.
pub const ENV: &str = "TRELLIS_HANDOFF";

/// The most sockets one handoff carries.
pub const MAX_SOCKETS: usize = 64;

const READY: &str = "ready";
const OK: &str = "ok";

/// Why a handoff failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{0}: {1}")]
    Io(&'static str, io::Error),
    #[error("the successor did not connect within {0:?}")]
    NoConnection(Duration),
    #[error("process {0} connected to the handoff socket; only the successor {1} may")]
    NotTheSuccessor(u32, u32),
    #[error("the successor was not ready within {0:?}")]
    NotReady(Duration),
    #[error("the successor closed the handoff before it was ready")]
    Closed,
    #[error("{0} sockets to hand over; at most {MAX_SOCKETS}")]
    TooMany(usize),
    #[error("unexpected handoff message {0:?}")]
    Unexpected(String),
}

/// The running process's side: an abstract Unix socket for one
/// successor.
pub struct Offer {
    listener: tokio::net::UnixListener,
    name: String,
}

impl Offer {
    /// A new, randomly named socket to hand over on.
    pub fn new() -> Result<Offer, HandoffError> {
        let io = |e| HandoffError::Io("the handoff socket", e);
        let name = format!(
            "trellis-handoff-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        );
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
        let std = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(io)?;
        std.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::UnixListener::from_std(std).map_err(io)?;
        Ok(Offer { listener, name })
    }

    /// The value of [`ENV`] for the successor.
    pub fn address(&self) -> String {
        format!("@{}", self.name)
    }

    /// Waits up to `timeout` for process `successor` to connect, then
    /// sends it `sockets`.
    pub async fn send(
        self,
        successor: u32,
        sockets: &[BorrowedFd<'_>],
        timeout: Duration,
    ) -> Result<Handoff, HandoffError> {
        if sockets.len() > MAX_SOCKETS {
            return Err(HandoffError::TooMany(sockets.len()));
        }
        let (stream, _) = tokio::time::timeout(timeout, self.listener.accept())
            .await
            .map_err(|_| HandoffError::NoConnection(timeout))?
            .map_err(|e| HandoffError::Io("accepting the successor", e))?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)
            .map_err(|e| HandoffError::Io("the successor's credentials", e.into()))?;
        let pid = peer.pid.as_raw_nonzero().get() as u32;
        if pid != successor {
            return Err(HandoffError::NotTheSuccessor(pid, successor));
        }
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(sockets.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(sockets));
        // A connected stream socket with nothing queued yet: the one
        // message fits in its buffer at once.
        let count = sockets.len().to_string();
        rustix::net::sendmsg(
            &stream,
            &[IoSlice::new(count.as_bytes())],
            &mut control,
            SendFlags::empty(),
        )
        .map_err(|e| HandoffError::Io("sending the sockets", e.into()))?;
        Ok(Handoff {
            stream: BufReader::new(stream),
        })
    }
}

/// A handoff under way, on the running process's side.
pub struct Handoff {
    stream: BufReader<UnixStream>,
}

impl Handoff {
    /// Waits up to `timeout` for the successor to say it serves.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), HandoffError> {
        match tokio::time::timeout(timeout, read_line(&mut self.stream)).await {
            Err(_) => Err(HandoffError::NotReady(timeout)),
            Ok(Ok(Some(l))) if l == READY => Ok(()),
            Ok(Ok(Some(l))) => Err(HandoffError::Unexpected(l)),
            Ok(Ok(None)) => Err(HandoffError::Closed),
            Ok(Err(e)) => Err(HandoffError::Io("reading from the successor", e)),
        }
    }

    /// Tells the successor it has taken over.
    pub async fn confirm(mut self) -> Result<(), HandoffError> {
        self.stream
            .get_mut()
            .write_all(format!("{OK}\n").as_bytes())
            .await
            .map_err(|e| HandoffError::Io("confirming the handoff", e))
    }
}

/// The successor's side: the sockets its predecessor sent, and the
/// connection to say when it serves.
pub struct Received {
    sockets: Vec<OwnedFd>,
    stream: std::os::unix::net::UnixStream,
}

impl Received {
    /// The sockets of the process that started this one, if it named a
    /// handoff socket in [`ENV`] (removed from the environment, so that
    /// processes this one starts do not see it).
    pub fn from_env() -> Result<Option<Received>, HandoffError> {
        let Some(at) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        std::env::remove_var(ENV);
        Received::connect(&at.to_string_lossy()).map(Some)
    }

    /// The sockets sent on handoff socket `at` (`@NAME`).
    pub fn connect(at: &str) -> Result<Received, HandoffError> {
        let io = |what| move |e: io::Error| HandoffError::Io(what, e);
        let name = at.strip_prefix('@').unwrap_or(at);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(io("the handoff socket"))?;
        let stream = std::os::unix::net::UnixStream::connect_addr(&addr)
            .map_err(io("connecting to the handoff socket"))?;
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut count = [0u8; 8];
        rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut count)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| HandoffError::Io("receiving the sockets", e.into()))?;
        let mut sockets = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                sockets.extend(fds);
            }
        }
        Ok(Received { sockets, stream })
    }

    /// How many sockets are left to take.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether every socket has been taken.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The TCP listener on `addr`, if one was handed over.
    pub fn take_tcp(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let fd = self.take(SocketType::STREAM, addr)?;
        Some(std::net::TcpListener::from(fd))
    }

    /// The UDP socket on `addr`, if one was handed over.
    pub fn take_udp(&mut self, addr: SocketAddr) -> Option<std::net::UdpSocket> {
        let fd = self.take(SocketType::DGRAM, addr)?;
        Some(std::net::UdpSocket::from(fd))
    }

    fn take(&mut self, kind: SocketType, addr: SocketAddr) -> Option<OwnedFd> {
        let i = self.sockets.iter().position(|fd| {
            rustix::net::sockopt::socket_type(fd).ok() == Some(kind)
                && local_addr(fd.as_fd()) == Some(addr)
        })?;
        Some(self.sockets.swap_remove(i))
    }

    /// Tells the predecessor this process serves, and waits for its
    /// answer: it has given up its place and drains. What is left
    /// untaken is closed here (the predecessor's listeners the new
    /// configuration no longer has).
    pub async fn ready(self) -> Result<(), HandoffError> {
        let io = |what| move |e: io::Error| HandoffError::Io(what, e);
        self.stream
            .set_nonblocking(true)
            .map_err(io("the handoff socket"))?;
        let mut stream =
            BufReader::new(UnixStream::from_std(self.stream).map_err(io("the handoff socket"))?);
        stream
            .get_mut()
            .write_all(format!("{READY}\n").as_bytes())
            .await
            .map_err(io("telling the predecessor"))?;
        match read_line(&mut stream)
            .await
            .map_err(io("reading from the predecessor"))?
        {
            Some(l) if l == OK => Ok(()),
            Some(l) => Err(HandoffError::Unexpected(l)),
            None => Err(HandoffError::Closed),
        }
    }
}

/// The local address of socket `fd`, if it is an IP socket.
fn local_addr(fd: BorrowedFd<'_>) -> Option<SocketAddr> {
    let addr = rustix::net::getsockname(fd).ok()?;
    SocketAddr::try_from(addr).ok()
}

async fn read_line(r: &mut BufReader<UnixStream>) -> io::Result<Option<String>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The successor's side, run in this process: a process may be its
    /// own successor.
    #[tokio::test]
    async fn listeners_reach_the_successor_which_takes_them_by_address() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tcp_at, udp_at) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
        let offer = Offer::new().unwrap();
        let at = offer.address();
        let me = std::process::id();
        let sender = tokio::spawn(async move {
            let fds = [tcp.as_fd(), udp.as_fd()];
            let mut h = offer.send(me, &fds, Duration::from_secs(5)).await?;
            // The predecessor's copies may close once sent.
            drop((tcp, udp));
            h.wait_ready(Duration::from_secs(5)).await?;
            h.confirm().await
        });
        let mut got = tokio::task::spawn_blocking(move || Received::connect(&at))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.take_udp(tcp_at).is_none(), "a TCP socket is not UDP");
        let taken = got.take_tcp(tcp_at).expect("the TCP listener");
        assert_eq!(taken.local_addr().unwrap(), tcp_at);
        let u = got.take_udp(udp_at).expect("the UDP socket");
        assert!(got.is_empty());
        got.ready().await.unwrap();
        sender.await.unwrap().unwrap();
        // The same sockets: a connection to the old address is accepted
        // by the taken listener, a datagram read from the taken socket.
        let _c = std::net::TcpStream::connect(tcp_at).unwrap();
        taken.accept().unwrap();
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"hi", udp_at)
            .unwrap();
        let mut buf = [0u8; 2];
        u.recv(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[tokio::test]
    async fn only_the_successor_may_take_the_sockets() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let offer = Offer::new().unwrap();
        let at = offer.address();
        let connect = tokio::task::spawn_blocking(move || {
            let addr =
                std::os::unix::net::SocketAddr::from_abstract_name(&at.as_bytes()[1..]).unwrap();
            std::os::unix::net::UnixStream::connect_addr(&addr).unwrap()
        });
        // Expecting another process than this one.
        let sent = offer.send(1, &[tcp.as_fd()], Duration::from_secs(5)).await;
        let _conn = connect.await.unwrap();
        assert!(
            matches!(sent, Err(HandoffError::NotTheSuccessor(p, 1)) if p == std::process::id()),
            "{:?}",
            sent.err()
        );
    }

    #[tokio::test]
    async fn a_successor_that_closes_before_ready_fails_the_handoff() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let offer = Offer::new().unwrap();
        let at = offer.address();
        let me = std::process::id();
        let sender = tokio::spawn(async move {
            let mut h = offer
                .send(me, &[tcp.as_fd()], Duration::from_secs(5))
                .await?;
            h.wait_ready(Duration::from_secs(5)).await
        });
        let got = tokio::task::spawn_blocking(move || Received::connect(&at))
            .await
            .unwrap()
            .unwrap();
        drop(got);
        assert!(matches!(sender.await.unwrap(), Err(HandoffError::Closed)));
    }
}
