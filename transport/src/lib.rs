//! `trellis-transport`: the bottom layer of every Trellis data-plane
//! binary (the agent, the gateways). It moves bytes and knows nothing of
//! the mesh, HTTP routing or telemetry: listeners and the accept loop
//! ([`listen`]) with graceful [`drain`]ing, the original destination of a
//! captured connection ([`orig_dst`]), opening connections with marks,
//! keepalive and timeouts ([`connect`]), protocol detection ([`sniff`],
//! pure; [`detect`], peeking at a socket or reading what is then read
//! again, [`rewind`]), a TLS ClientHello's SNI and
//! ALPN read without terminating TLS ([`client_hello`]), Istio's
//! agent-to-agent SNI ([`sni`]), copying bytes both ways ([`splice`]) and write corking for
//! HTTP/2 connections ([`cork`]), and telling systemd it is ready,
//! alive and stopping ([`notify`]), and handing listening sockets to a
//! successor process ([`handoff`]).
//!
//! It must not depend on any other Trellis crate but `trellis-identity`
//! (for SPIFFE IDs in connect errors).
pub mod client_hello;
pub mod connect;
pub mod cork;
pub mod detect;
pub mod drain;
pub mod handoff;
pub mod listen;
pub mod notify;
pub mod orig_dst;
pub mod rewind;
pub mod sni;
pub mod sniff;
pub mod splice;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod unit;

use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Reads from `inner` into `buf`; the bytes this read added.
pub(crate) fn poll_read_new<'b, T: AsyncRead + Unpin>(
    inner: &mut T,
    cx: &mut Context<'_>,
    buf: &'b mut ReadBuf<'_>,
) -> Poll<std::io::Result<&'b [u8]>> {
    let before = buf.filled().len();
    std::task::ready!(std::pin::Pin::new(inner).poll_read(cx, buf))?;
    Poll::Ready(Ok(&buf.filled()[before..]))
}
