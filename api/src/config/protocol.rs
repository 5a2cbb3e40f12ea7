//! The application protocol of a port, as Istio decides it.

use std::fmt;

/// A port's protocol. Decides which proxy path (HTTP routing, TLS
/// passthrough, opaque TCP) traffic to the port takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP over TLS that the application terminates.
    Https,
    /// HTTP/2 without TLS (h2c).
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// gRPC-Web (HTTP/1.1 or HTTP/2).
    GrpcWeb,
    /// Opaque TCP.
    Tcp,
    /// TLS that is passed through, routed on SNI.
    Tls,
    /// MongoDB.
    Mongo,
    /// Redis.
    Redis,
    /// MySQL.
    Mysql,
    /// UDP.
    Udp,
    /// Not declared: the proxy sniffs the first bytes.
    Unknown,
}

impl Protocol {
    /// Every declared protocol, with its spelling in config.
    const NAMES: [(&'static str, Protocol); 11] = [
        ("HTTP", Protocol::Http),
        ("HTTPS", Protocol::Https),
        ("HTTP2", Protocol::Http2),
        ("GRPC", Protocol::Grpc),
        ("GRPC-WEB", Protocol::GrpcWeb),
        ("TCP", Protocol::Tcp),
        ("TLS", Protocol::Tls),
        ("MONGO", Protocol::Mongo),
        ("REDIS", Protocol::Redis),
        ("MYSQL", Protocol::Mysql),
        ("UDP", Protocol::Udp),
    ];

    /// A declared protocol name, case-insensitive (`HTTP`, `grpc-web`, ...);
    /// `None` when unrecognized.
    pub fn parse(name: &str) -> Option<Protocol> {
        Self::NAMES
            .iter()
            .find(|(spelling, _)| spelling.eq_ignore_ascii_case(name))
            .map(|(_, protocol)| *protocol)
    }

    /// Istio's rules for a port: a recognized explicit protocol
    /// (ServiceEntry `protocol`, Kubernetes `appProtocol`) wins; otherwise
    /// the port name's prefix before the first `-` (`http-web`, `tcp-db`),
    /// case-insensitive, with `grpc-web` checked first since it contains a
    /// `-`; otherwise [`Protocol::Unknown`], to be sniffed.
    pub fn from_port(name: Option<&str>, declared_protocol: Option<&str>) -> Protocol {
        if let Some(protocol) = declared_protocol.and_then(Protocol::parse) {
            return protocol;
        }
        let Some(name) = name else {
            return Protocol::Unknown;
        };
        // Like Istio, any name starting with `grpc-web` is gRPC-Web.
        if name
            .get(..8)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("grpc-web"))
        {
            return Protocol::GrpcWeb;
        }
        let prefix = name.split('-').next().unwrap_or(name);
        Protocol::parse(prefix).unwrap_or(Protocol::Unknown)
    }

    /// The spelling in config (`HTTP`, `GRPC-WEB`, ...), `UNKNOWN` for
    /// [`Protocol::Unknown`].
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, protocol)| *protocol == self)
            .map_or("UNKNOWN", |(spelling, _)| spelling)
    }

    /// Whether the proxy parses the traffic as HTTP and applies HTTP routes.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_port() {
        use Protocol::*;
        for (name, declared, expected) in [
            (Some("http"), None, Http),
            (Some("http-web"), None, Http),
            (Some("HTTP-web"), None, Http),
            (Some("http2-x"), None, Http2),
            (Some("grpc"), None, Grpc),
            (Some("grpc-x"), None, Grpc),
            (Some("grpc-web"), None, GrpcWeb),
            (Some("grpc-web-x"), None, GrpcWeb),
            (Some("GRPC-Web"), None, GrpcWeb),
            (Some("tcp-db"), None, Tcp),
            (Some("tls"), None, Tls),
            (Some("https"), None, Https),
            (Some("mongo"), None, Mongo),
            (Some("redis-cache"), None, Redis),
            (Some("mysql"), None, Mysql),
            (Some("udp-dns"), None, Udp),
            (Some("web"), None, Unknown),
            (Some("httpx"), None, Unknown),
            (Some(""), None, Unknown),
            (None, None, Unknown),
            (Some("http"), Some("TCP"), Tcp),
            (Some("tcp"), Some("grpc-web"), GrpcWeb),
            (None, Some("HTTP2"), Http2),
            (Some("http"), Some("bogus"), Http),
        ] {
            assert_eq!(
                Protocol::from_port(name, declared),
                expected,
                "{name:?} {declared:?}"
            );
        }
    }

    #[test]
    fn spelling_round_trips() {
        for (spelling, protocol) in Protocol::NAMES {
            assert_eq!(protocol.as_str(), spelling);
            assert_eq!(Protocol::parse(&spelling.to_lowercase()), Some(protocol));
        }
        assert_eq!(Protocol::Unknown.as_str(), "UNKNOWN");
        assert!(Protocol::Grpc.is_http() && !Protocol::Https.is_http());
        assert_eq!(Protocol::parse("UNKNOWN"), None);
    }
}
