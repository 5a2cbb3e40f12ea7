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
    let mut buf = vec![0u8; 1024];
    let deadline = tokio::time::Instant::now() + DETECT_TIMEOUT;
    let mut seen = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Sniffed::Opaque),
        };
        if n == 0 {
            return Ok(Sniffed::Opaque);
        }
        match sniff(&buf[..n]) {
            Sniffed::NeedMore => {}
            s => return Ok(s),
        }
        if n == buf.len() && buf.len() < 16 * 1024 {
            buf.resize(buf.len() * 2, 0);
        }
        if n == seen {
            // peek returns at once while nothing new arrived; wait a little.
            if tokio::time::Instant::now() >= deadline {
                return Ok(Sniffed::Opaque);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen = n;
    }
}
