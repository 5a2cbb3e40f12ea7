//! Where a captured connection was going: the destination iptables or
//! nftables redirected it from.

use tokio::net::TcpStream;

/// The address a captured connection was sent to before iptables redirected
/// it (`SO_ORIGINAL_DST`), or `None` when it was not redirected.
pub fn original_dst(stream: &TcpStream) -> Option<std::net::SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    }
    .ok()?
    .as_socket()?;
    (orig != local).then_some(orig)
}
