//! Reading a TLS ClientHello without terminating TLS: the server name
//! (SNI) and the ALPN protocols a client asks for, from bytes peeked at
//! on the socket, so that a gateway can route the connection by SNI and
//! pass its bytes on untouched (mTLS stays end to end).
//!
//! [`parse`] is pure and fuzzed (`fuzz/fuzz_targets/client_hello.rs`): it
//! looks only at the bytes the ClientHello's own lengths cover, so a
//! verdict on a prefix never changes as more bytes arrive. [`peek`] waits
//! on a socket until there is a verdict.
use std::time::Duration;

use tokio::net::TcpStream;

use crate::detect::peek_until;

/// Largest ClientHello read (a handshake message may span records; real
/// ones, post-quantum key shares included, are a few KB).
pub const MAX_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peeked {
    /// Too few bytes to tell yet.
    NeedMore,
    /// Not a TLS ClientHello, or a malformed one: why.
    Invalid(&'static str),
    Hello(ClientHello),
}

/// What a ClientHello asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's host name, if there is one.
    pub sni: Option<String>,
    /// The `application_layer_protocol_negotiation` extension's
    /// protocols, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_ALPN: u16 = 0x0010;
const NAME_TYPE_HOST: u8 = 0;

/// Reads the ClientHello at the start of `buf`, the first bytes a client
/// sent.
pub fn parse(buf: &[u8]) -> Peeked {
    match handshake_message(buf) {
        Ok(msg) => hello(&msg),
        Err(p) => p,
    }
}

/// The first handshake message, reassembled from the handshake records
/// it spans.
fn handshake_message(mut buf: &[u8]) -> Result<Vec<u8>, Peeked> {
    let mut msg: Vec<u8> = Vec::new();
    loop {
        let Some(header) = buf.get(..5) else {
            return Err(if buf.first().is_some_and(|&t| t != RECORD_HANDSHAKE) {
                Peeked::Invalid("not a TLS handshake record")
            } else {
                Peeked::NeedMore
            });
        };
        if header[0] != RECORD_HANDSHAKE {
            return Err(Peeked::Invalid("not a TLS handshake record"));
        }
        if header[1] != 3 {
            return Err(Peeked::Invalid("not a TLS record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(Peeked::Invalid("an empty handshake record"));
        }
        let Some(fragment) = buf.get(5..5 + len) else {
            return Err(Peeked::NeedMore);
        };
        msg.extend_from_slice(fragment);
        buf = &buf[5 + len..];
        if msg.len() >= 4 {
            if msg[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(Peeked::Invalid(
                    "the first handshake message is not a ClientHello",
                ));
            }
            let body =
                (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
            if body + 4 > MAX_HELLO {
                return Err(Peeked::Invalid("a ClientHello larger than 64 KiB"));
            }
            if msg.len() >= body + 4 {
                msg.truncate(body + 4);
                return Ok(msg.split_off(4));
            }
        }
        if msg.len() > MAX_HELLO {
            return Err(Peeked::Invalid("a ClientHello larger than 64 KiB"));
        }
    }
}

/// A cursor over a ClientHello's bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A length-prefixed block: `width` bytes of length, then the block.
    fn block(&mut self, width: usize) -> Option<Reader<'a>> {
        let len = match width {
            1 => usize::from(self.u8()?),
            _ => usize::from(self.u16()?),
        };
        self.take(len).map(Reader)
    }
}

fn hello(msg: &[u8]) -> Peeked {
    let mut r = Reader(msg);
    let fixed = r.take(2 + 32); // legacy_version, random
    let (Some(_), Some(_), Some(_), Some(_)) = (fixed, r.block(1), r.block(2), r.block(1)) else {
        return Peeked::Invalid("a truncated ClientHello");
    };
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        // No extensions (TLS 1.2 and earlier allow that).
        return Peeked::Hello(hello);
    }
    let Some(mut exts) = r.block(2) else {
        return Peeked::Invalid("truncated ClientHello extensions");
    };
    while !exts.0.is_empty() {
        let (Some(kind), Some(mut data)) = (exts.u16(), exts.block(2)) else {
            return Peeked::Invalid("a truncated ClientHello extension");
        };
        let parsed = match kind {
            EXT_SERVER_NAME => server_name(&mut data).map(|n| hello.sni = n),
            EXT_ALPN => alpn(&mut data).map(|a| hello.alpn = a),
            _ => Some(()),
        };
        if parsed.is_none() {
            return Peeked::Invalid(match kind {
                EXT_SERVER_NAME => "a malformed server_name extension",
                _ => "a malformed ALPN extension",
            });
        }
    }
    Peeked::Hello(hello)
}

/// The host name of a `server_name` extension (RFC 6066): ASCII, at most
/// one.
fn server_name(data: &mut Reader) -> Option<Option<String>> {
    let mut list = data.block(2)?;
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.block(2)?.0;
        if kind == NAME_TYPE_HOST {
            if host.is_some() || name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                return None;
            }
            host = Some(String::from_utf8(name.to_vec()).ok()?);
        }
    }
    Some(host)
}

/// The protocols of an ALPN extension (RFC 7301): none of them empty.
fn alpn(data: &mut Reader) -> Option<Vec<Vec<u8>>> {
    let mut list = data.block(2)?;
    let mut protocols = Vec::new();
    while !list.0.is_empty() {
        let p = list.block(1)?.0;
        if p.is_empty() {
            return None;
        }
        protocols.push(p.to_vec());
    }
    Some(protocols)
}

/// Peeks at `stream` until its first bytes are a whole ClientHello (or
/// are not one), without consuming them; [`Peeked::NeedMore`] when the
/// client sent no whole ClientHello within `timeout` or closed.
pub async fn peek(stream: &TcpStream, timeout: Duration) -> std::io::Result<Peeked> {
    // The records' headers come on top of the hello itself.
    let max = MAX_HELLO + 5 * 16;
    let verdict = peek_until(stream, timeout, max, |bytes| match parse(bytes) {
        Peeked::NeedMore => None,
        verdict => Some(verdict),
    })
    .await?;
    Ok(verdict.unwrap_or(Peeked::NeedMore))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::client_hello;

    fn hello(sni: Option<&str>, alpn: &[&[u8]]) -> Peeked {
        Peeked::Hello(ClientHello {
            sni: sni.map(str::to_string),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        })
    }

    #[test]
    fn a_real_clients_hello_gives_its_sni_and_alpn() {
        let sni = "outbound_.9080_.v1_.reviews.default.svc.cluster.local";
        let bytes = client_hello(sni, &[b"h2", b"http/1.1"]);
        assert_eq!(parse(&bytes), hello(Some(sni), &[b"h2", b"http/1.1"]));
        // Trailing bytes (the client's next records) change nothing.
        let mut more = bytes.clone();
        more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
        assert_eq!(parse(&more), parse(&bytes));
    }

    #[test]
    fn openssls_hello_gives_its_sni_and_alpn() {
        // `openssl s_client -servername ... -alpn h2,http/1.1`, as captured.
        let bytes = include_bytes!("../../fuzz/seeds/client_hello/openssl_sni_alpn");
        assert_eq!(
            parse(bytes),
            hello(
                Some("outbound_.9080_.v1_.reviews.default.svc.cluster.local"),
                &[b"h2", b"http/1.1"]
            )
        );
    }

    #[test]
    fn every_prefix_of_a_hello_needs_more() {
        let bytes = client_hello("db.default.svc.cluster.local", &[b"trellis-tcp"]);
        for n in 0..bytes.len() {
            assert_eq!(parse(&bytes[..n]), Peeked::NeedMore, "{n} bytes");
        }
    }

    #[test]
    fn a_hello_split_across_records_is_reassembled() {
        let bytes = client_hello("split.example", &[]);
        let msg = &bytes[5..];
        let (a, b) = msg.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(parse(&split), hello(Some("split.example"), &[]));
    }

    #[test]
    fn what_is_not_a_client_hello_is_invalid_at_once() {
        for (bytes, why) in [
            (&b"GET / HTTP/1.1\r\n"[..], "not a TLS handshake record"),
            (b"\x16\x02\x00\x00\x04", "not a TLS record version"),
            (b"\x16\x03\x01\x00\x00", "an empty handshake record"),
            (
                b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
                "the first handshake message is not a ClientHello",
            ),
            (
                b"\x16\x03\x01\x00\x04\x01\x01\x00\x00",
                "a ClientHello larger than 64 KiB",
            ),
            // A ClientHello of 2 bytes: no room for version and random.
            (
                b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03",
                "a truncated ClientHello",
            ),
        ] {
            assert_eq!(parse(bytes), Peeked::Invalid(why), "{bytes:?}");
        }
        assert_eq!(parse(b"G"), Peeked::Invalid("not a TLS handshake record"));
    }

    #[test]
    fn a_server_name_must_be_one_ascii_host() {
        let with_sni = |name: &[u8]| {
            // server_name extension: list of one host_name entry.
            let mut ext = vec![0, 0];
            let entry_len = (name.len() + 3) as u16;
            let ext_len = entry_len + 2;
            ext.extend_from_slice(&ext_len.to_be_bytes());
            ext.extend_from_slice(&entry_len.to_be_bytes());
            ext.push(NAME_TYPE_HOST);
            ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
            ext.extend_from_slice(name);
            let mut body = vec![3, 3];
            body.extend_from_slice(&[0; 32]);
            body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
            body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            body.extend_from_slice(&ext);
            let mut msg = vec![HANDSHAKE_CLIENT_HELLO, 0];
            msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
            msg.extend_from_slice(&body);
            let mut rec = vec![0x16, 3, 1];
            rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            rec.extend_from_slice(&msg);
            parse(&rec)
        };
        assert_eq!(with_sni(b"a.b"), hello(Some("a.b"), &[]));
        assert_eq!(
            with_sni(b"a b"),
            Peeked::Invalid("a malformed server_name extension")
        );
        assert_eq!(
            with_sni("é".as_bytes()),
            Peeked::Invalid("a malformed server_name extension")
        );
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_for_the_tls_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bytes = client_hello("peeked.example", &[b"h2"]);
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // The hello in two writes, as a slow client would send it.
        let (a, b) = bytes.split_at(30);
        c.write_all(a).await.unwrap();
        let writer = {
            let b = b.to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.write_all(&b).await.unwrap();
                c
            })
        };
        let got = peek(&s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, hello(Some("peeked.example"), &[b"h2"]));
        let mut s = s;
        let mut all = vec![0u8; bytes.len()];
        s.read_exact(&mut all).await.unwrap();
        assert_eq!(all, bytes, "nothing was consumed");
        drop(writer.await.unwrap());
    }
}
