//! Waiting for a connection's first bytes and classifying them
//! ([`crate::sniff`]), without consuming them.
use std::time::Duration;

use tokio::net::TcpStream;

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
