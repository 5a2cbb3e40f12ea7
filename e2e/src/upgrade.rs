//! An HTTP/1.1 upgrade through an agent's listener: after the 101, the
//! connection is a byte stream to the workload (`trellis-echo` echoes what
//! it gets), which tests keep open across config changes.
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Connects to `addr`, upgrades `GET /ws` for `host`, and returns the
/// stream after the `101` head.
pub fn open(addr: &str, host: &str) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: trellis-test\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(io::Error::other(format!(
            "not upgraded: {}",
            String::from_utf8_lossy(&head)
        )));
    }
    Ok(s)
}

/// Sends `msg` and reads it back.
pub fn ping(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf)?;
    if buf != msg {
        return Err(io::Error::other(format!(
            "echoed {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    Ok(())
}
