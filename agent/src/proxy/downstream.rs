//! A downstream connection before hyper serves it: which HTTP version it
//! speaks, read from its first bytes (HTTP/2's connection preface, or
//! not), which are then read again by the server ([`Rewind`]).
//!
//! The agent picks hyper's HTTP/1.1 or HTTP/2 server itself rather than
//! hyper-util's `auto` one, whose HTTP/1.1 side cannot be given a limit on
//! the request head (only on its read buffer, which a head larger than the
//! limit can pass when it arrives in one read).
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What an HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads from `io` until its first bytes are HTTP/2's preface (`true`), or
/// cannot be (`false`: HTTP/1.x, or whatever the HTTP/1.1 server will
/// refuse); the bytes read are read again from the returned connection.
pub async fn read_version<I: AsyncRead + Unpin>(mut io: I) -> io::Result<(bool, Rewind<I>)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    while filled < buf.len() {
        let n = io.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
        if buf[..filled] != H2_PREFACE[..filled] {
            break;
        }
    }
    let h2 = filled == H2_PREFACE.len() && buf == *H2_PREFACE;
    Ok((
        h2,
        Rewind {
            prefix: buf,
            at: 0,
            len: filled,
            io,
        },
    ))
}

/// A connection whose first bytes, already read, are read again.
#[derive(Debug)]
pub struct Rewind<I> {
    prefix: [u8; H2_PREFACE.len()],
    at: usize,
    len: usize,
    io: I,
}

impl<I> Rewind<I> {
    /// `io` with nothing read yet.
    pub fn none(io: I) -> Self {
        Self {
            prefix: [0; H2_PREFACE.len()],
            at: 0,
            len: 0,
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.len {
            let n = (me.len - me.at).min(buf.remaining());
            buf.put_slice(&me.prefix[me.at..me.at + n]);
            me.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn version_of(sent: &[u8]) -> (bool, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(sent).await.unwrap();
        drop(client);
        let (h2, mut io) = read_version(server).await.unwrap();
        let mut again = Vec::new();
        io.read_to_end(&mut again).await.unwrap();
        (h2, again)
    }

    #[tokio::test]
    async fn the_preface_says_http2_and_every_byte_is_read_again() {
        let h2 = [&H2_PREFACE[..], b"\x00\x00\x00\x04"].concat();
        assert_eq!(version_of(&h2).await, (true, h2.clone()));
        let h1 = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(version_of(h1).await, (false, h1.to_vec()));
        // Cut short, or a prefix of the preface only: not HTTP/2.
        assert_eq!(version_of(b"PRI * HT").await, (false, b"PRI * HT".to_vec()));
        assert_eq!(version_of(b"").await, (false, Vec::new()));
    }
}
