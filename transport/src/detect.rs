//! Waiting for a connection's first bytes and classifying them
//! ([`crate::sniff`]): without consuming them from a socket ([`detect`]),
//! or reading them from any connection, to be read again ([`read_detect`]).
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::rewind::Rewind;
use crate::sniff::{sniff, Sniffed};

/// How long to wait for a client to speak before treating the connection as
/// a server-first protocol (opaque TCP), as Istio's protocol detection does.
pub const DETECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Peeks at `stream` until its first bytes say what protocol it speaks.
pub async fn detect(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let verdict = peek_until(stream, DETECT_TIMEOUT, 16 * 1024, |bytes| {
        match sniff(bytes) {
            Sniffed::NeedMore => None,
            s => Some(s),
        }
    })
    .await?;
    Ok(verdict.unwrap_or(Sniffed::Opaque))
}

/// Peeks at `stream`, consuming nothing, until `classify` gives a verdict
/// on the bytes so far (up to `max` of them); `None` when the client
/// closes or goes quiet for `timeout` before that.
pub async fn peek_until<T>(
    stream: &TcpStream,
    timeout: Duration,
    max: usize,
    mut classify: impl FnMut(&[u8]) -> Option<T>,
) -> std::io::Result<Option<T>> {
    let mut buf = vec![0u8; max.min(1024)];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(None),
        };
        if n == 0 {
            return Ok(None);
        }
        if let Some(verdict) = classify(&buf[..n]) {
            return Ok(Some(verdict));
        }
        if n == buf.len() && buf.len() < max {
            buf.resize((buf.len() * 2).min(max), 0);
        }
        if n == seen {
            // peek returns at once while nothing new arrived; wait a little.
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
    }
}

/// [`detect`] for a connection that cannot be peeked at (one tunnelled
/// through another): reads its first bytes until they tell its protocol,
/// or [`DETECT_TIMEOUT`] passes (server-first: opaque), or it closes; the
/// bytes read are read again from the returned connection.
pub async fn read_detect<I: AsyncRead + Unpin>(mut io: I) -> std::io::Result<(Sniffed, Rewind<I>)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let verdict = loop {
        let s = sniff(&buf);
        if s != Sniffed::NeedMore {
            break s;
        }
        if buf.len() >= 16 * 1024 {
            break Sniffed::Opaque;
        }
        buf.reserve(1024);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break Sniffed::Opaque,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((verdict, Rewind::new(buf.freeze(), io)))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn read_detect_tells_the_protocol_and_gives_every_byte_back() {
        for (sent, want) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], Sniffed::Http1),
            (b"\x16\x03\x01\x00\x05hello", Sniffed::Tls),
            (b"*1\r\n$4\r\nPING\r\n", Sniffed::Opaque),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(sent).await.unwrap();
            let (s, mut io) = read_detect(server).await.unwrap();
            assert_eq!(s, want);
            drop(client);
            let mut again = Vec::new();
            io.read_to_end(&mut again).await.unwrap();
            assert_eq!(again, sent);
        }
        // A server-first protocol: the client says nothing.
        let (_client, server) = tokio::io::duplex(1024);
        let (s, _) = read_detect(server).await.unwrap();
        assert_eq!(s, Sniffed::Opaque);
    }
}
