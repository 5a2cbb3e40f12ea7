//! The SNI one agent sends another: Istio's `outbound_.PORT_.SUBSET_.HOST`.
//! It tells the receiving agent which service port the connection is for
//! (so it knows the local port to forward to without iptables on its side),
//! and lets an east-west gateway route the connection without terminating
//! TLS.

/// The parts of an agent-to-agent SNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sni<'a> {
    pub port: u16,
    /// Empty when the destination is not a subset.
    pub subset: &'a str,
    pub host: &'a str,
}

impl Sni<'_> {
    /// `outbound_.9080_.v1_.reviews.default.svc.cluster.local`, and for no
    /// subset `outbound_.9080_._.reviews.default.svc.cluster.local`, as
    /// Istio writes them (its `BuildDNSSrvSubsetKey`).
    pub fn encode(port: u16, subset: &str, host: &str) -> String {
        format!("outbound_.{port}_.{subset}_.{host}")
    }

    /// The parts of `sni`, or `None` if it is not in the agent format.
    /// A subset of `_` is read as none too: agents before Istio's form
    /// wrote `outbound_.9080_.__.HOST`.
    pub fn parse(sni: &str) -> Option<Sni<'_>> {
        let rest = sni.strip_prefix("outbound_.")?;
        let (port, rest) = rest.split_once("_.")?;
        let (subset, host) = rest.split_once("_.")?;
        let port = port.parse().ok().filter(|p| *p != 0)?;
        if host.is_empty() {
            return None;
        }
        Some(Sni {
            port,
            subset: if subset == "_" { "" } else { subset },
            host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_names() {
        let s = Sni::encode(9080, "v1", "reviews.default.svc.cluster.local");
        assert_eq!(s, "outbound_.9080_.v1_.reviews.default.svc.cluster.local");
        assert_eq!(
            Sni::parse(&s),
            Some(Sni {
                port: 9080,
                subset: "v1",
                host: "reviews.default.svc.cluster.local"
            })
        );
        let none = Sni::encode(80, "", "a.b");
        assert_eq!(none, "outbound_.80_._.a.b", "Istio's form");
        for none in [&*none, "outbound_.80_.__.a.b"] {
            assert_eq!(
                Sni::parse(none).map(|s| (s.port, s.subset, s.host)),
                Some((80, "", "a.b")),
                "{none}"
            );
        }
        for bad in [
            "reviews.default.svc",
            "outbound_.0_._.a",
            "outbound_.x_._.a",
            "outbound_.80_._.",
            "outbound_.99999_._.a",
            "outbound_.80_.a",
        ] {
            assert_eq!(Sni::parse(bad), None, "{bad}");
        }
    }
}
