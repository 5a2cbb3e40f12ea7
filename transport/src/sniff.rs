//! Protocol detection from a connection's first bytes, for ports whose
//! protocol is not declared: TLS, HTTP/2 with prior knowledge, HTTP/1.x, or
//! anything else (opaque TCP). Pure, and fuzzed (`fuzz/fuzz_targets/sniff.rs`).

/// What the first bytes of a connection look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A TLS handshake record.
    Tls,
    /// The HTTP/2 connection preface.
    Http2,
    /// An HTTP/1.x request line.
    Http1,
    /// Something else: carried as opaque TCP.
    Opaque,
    /// Too few bytes to tell yet.
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Methods Envoy's HTTP inspector recognises, plus the WebDAV ones it knows.
const METHODS: [&[u8]; 15] = [
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
];
/// Longest request line looked at before deciding it is not HTTP/1.
const MAX_LINE: usize = 8192;

/// Classifies `buf`, the first bytes a client sent.
pub fn sniff(buf: &[u8]) -> Sniffed {
    if buf.is_empty() {
        return Sniffed::NeedMore;
    }
    if buf[0] == 0x16 {
        return if buf.len() >= 3 {
            if buf[1] == 3 {
                Sniffed::Tls
            } else {
                Sniffed::Opaque
            }
        } else {
            Sniffed::NeedMore
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::Http2
        } else {
            Sniffed::NeedMore
        };
    }
    http1(buf)
}

fn http1(buf: &[u8]) -> Sniffed {
    let method_end = match buf.iter().position(|&b| b == b' ') {
        Some(i) => i,
        None if buf.len() < 10 && METHODS.iter().any(|m| m.starts_with(buf)) => {
            return Sniffed::NeedMore
        }
        None => return Sniffed::Opaque,
    };
    if !METHODS.contains(&&buf[..method_end]) {
        return Sniffed::Opaque;
    }
    // Only the first MAX_LINE bytes count, so that a verdict, once given,
    // never changes as more bytes arrive.
    let head = &buf[..buf.len().min(MAX_LINE)];
    let line = match head.windows(2).position(|w| w == b"\r\n") {
        Some(e) => &head[..e],
        None if buf.len() < MAX_LINE => return Sniffed::NeedMore,
        None => return Sniffed::Opaque,
    };
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/1.") && version.len() == 8 {
        Sniffed::Http1
    } else {
        Sniffed::Opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Sniffed)] = &[
            (b"", Sniffed::NeedMore),
            (b"\x16\x03\x01\x02\x00", Sniffed::Tls),
            (b"\x16", Sniffed::NeedMore),
            (b"\x16\x09\x01", Sniffed::Opaque),
            (H2_PREFACE, Sniffed::Http2),
            (b"PRI * HTTP/2.0\r\n", Sniffed::NeedMore),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Sniffed::Http1),
            (b"POST /x HTTP/1.0\r\n", Sniffed::Http1),
            (b"GET / HTTP/1.1", Sniffed::NeedMore),
            (b"GE", Sniffed::NeedMore),
            (b"GET / FOO/1.1\r\n", Sniffed::Opaque),
            (b"HELLO world\r\n", Sniffed::Opaque),
            (b"*1\r\n$4\r\nPING\r\n", Sniffed::Opaque),
            (b"\x00\x00\x00\x01", Sniffed::Opaque),
        ];
        for (input, want) in cases {
            assert_eq!(sniff(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn a_long_line_without_end_is_opaque_for_good() {
        let mut v = b"GET /".to_vec();
        v.extend(std::iter::repeat_n(b'a', MAX_LINE));
        assert_eq!(sniff(&v), Sniffed::Opaque);
        v.extend(b" HTTP/1.1\r\n");
        assert_eq!(
            sniff(&v),
            Sniffed::Opaque,
            "the verdict does not change with more bytes"
        );
    }
}
