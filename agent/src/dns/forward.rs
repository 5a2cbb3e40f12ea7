//! [`Forwarder`]: what the mesh does not answer goes to the host's
//! resolvers, the query's bytes as they came (the client's id, flags and
//! EDNS options included), to each upstream in turn until one answers; over
//! TCP if the client asked over TCP. Each UDP query gets a socket of its
//! own (a fresh random source port, and replies filtered by the kernel to
//! the upstream's address), so ids never need rewriting. A UDP answer with
//! TC set is passed on as it is: the client then asks again over TCP.
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};

use trellis_transport::connect::{self, ConnectOpts};

use super::frame;

/// The DNS port, for upstreams named without one.
pub const DNS_PORT: u16 = 53;
/// The largest DNS message, over UDP or TCP.
const MAX_MESSAGE: usize = 65_535;

/// The upstream resolvers and how to reach them.
#[derive(Clone, Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    /// The capture mark for the agent's own sockets, and the time one
    /// upstream is given to answer before the next is tried.
    opts: ConnectOpts,
}

/// Why a forwarded query got no answer (the client gets SERVFAIL).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no DNS upstream: /etc/resolv.conf has no `nameserver` line the agent can use and no --dns-upstream was given")]
    NoUpstream,
    #[error("no DNS upstream answered; the last tried, {upstream}, failed: {reason}")]
    Failed {
        upstream: SocketAddr,
        reason: String,
    },
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, opts: ConnectOpts) -> Self {
        Self { upstreams, opts }
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream's answer to `query`, over UDP.
    pub async fn udp(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        self.each(|up| udp_exchange(up, query, &self.opts)).await
    }

    /// The upstream's answer to `query`, over TCP.
    pub async fn tcp(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        self.each(|up| tcp_exchange(up, query, &self.opts)).await
    }

    /// The first answer of `exchange` with the upstreams in turn, each
    /// given `opts.timeout`.
    async fn each<F, Fut>(&self, mut exchange: F) -> Result<Vec<u8>, ForwardError>
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<Vec<u8>>>,
    {
        let mut last = ForwardError::NoUpstream;
        for &upstream in &self.upstreams {
            let reason = match tokio::time::timeout(self.opts.timeout, exchange(upstream)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", self.opts.timeout),
            };
            tracing::debug!(%upstream, %reason, "DNS upstream failed; trying the next");
            last = ForwardError::Failed { upstream, reason };
        }
        Err(last)
    }
}

/// The `nameserver` addresses of a resolv.conf, on port 53. Link-local
/// IPv6 addresses with a zone (`fe80::1%eth0`) are skipped.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// Whether `reply` answers `query`: same id, and a response. Anything else
/// arriving on the query's socket is stale or forged, and skipped.
fn is_reply_to(query: &[u8], reply: &[u8]) -> bool {
    reply.len() >= 12 && query.get(..2) == reply.get(..2) && reply[2] & 0x80 != 0
}

async fn udp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    opts: &ConnectOpts,
) -> io::Result<Vec<u8>> {
    let socket = connect::udp(upstream, opts)?;
    socket.send(query).await?;
    let mut reply = Vec::with_capacity(MAX_MESSAGE);
    loop {
        reply.clear();
        socket.recv_buf(&mut reply).await?;
        if is_reply_to(query, &reply) {
            return Ok(reply);
        }
    }
}

async fn tcp_exchange(
    upstream: SocketAddr,
    query: &[u8],
    opts: &ConnectOpts,
) -> io::Result<Vec<u8>> {
    let mut stream = connect::tcp(upstream, opts)
        .await
        .map_err(io::Error::other)?;
    frame::write(&mut stream, query).await?;
    loop {
        let reply = frame::read(&mut stream).await?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering")
        })?;
        if is_reply_to(query, &reply) {
            return Ok(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_of_resolv_conf() {
        let conf = "# generated\nsearch example.org\nnameserver 10.0.0.2\nnameserver  ::1 \n\
                    ; nameserver 10.0.0.9\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            nameservers(conf),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(nameservers("").is_empty());
    }

    #[test]
    fn replies_match_the_query_id_and_are_responses() {
        let query = [0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let mut reply = query;
        reply[2] |= 0x80;
        assert!(is_reply_to(&query, &reply));
        assert!(!is_reply_to(&query, &query), "a query is no reply");
        let mut other = reply;
        other[1] = 0x35;
        assert!(!is_reply_to(&query, &other));
        assert!(!is_reply_to(&query, &reply[..11]));
    }
}
