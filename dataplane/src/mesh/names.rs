//! [`NameTable`]: the mesh's hostnames and the addresses the DNS proxy
//! answers them with. Built with each view of the mesh from its services
//! (pure), looked up once per query.
//!
//! A service `NAME.NS.svc.DOMAIN` is also found by the short forms a
//! Kubernetes pod's search path would complete (`NAME.NS`, `NAME.NS.svc`,
//! and bare `NAME` in the agent's own namespace), as Istio's DNS proxy does,
//! so that clients without those search domains (VMs) resolve them too. A
//! wildcard host `*.example.com` answers every name under `example.com`.
//! Names are matched without regard to ASCII case or a trailing dot.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::Service;

/// What a mesh name answers with, by record type (A, AAAA).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Addresses {
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
}

impl Addresses {
    /// `None` when there are none: such a name is not the mesh's to answer.
    fn of(ips: &[IpAddr]) -> Option<Arc<Self>> {
        let mut a = Self::default();
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => a.v4.push(*v4),
                IpAddr::V6(v6) => a.v6.push(*v6),
            }
        }
        (!ips.is_empty()).then(|| Arc::new(a))
    }
}

/// The names the mesh answers for.
#[derive(Clone, Debug, Default)]
pub struct NameTable {
    /// Hosts and their short forms: lowercase, no trailing dot.
    names: HashMap<String, Arc<Addresses>>,
    /// Wildcard hosts `*.PARENT`, by `PARENT`.
    wildcards: HashMap<String, Arc<Addresses>>,
}

impl NameTable {
    /// The table of `services` (those without addresses are left out), with
    /// short forms for `NAME.NS.svc.DOMAIN` hosts; bare names for those in
    /// `namespace`, the agent's own.
    pub fn new<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        namespace: &str,
        domain: &str,
    ) -> Self {
        let suffix = format!(".svc.{}", normalize(domain));
        let mut table = Self::default();
        let mut short = Vec::new();
        for svc in services {
            let Some(addrs) = Addresses::of(&svc.addresses) else {
                continue;
            };
            let host = normalize(&svc.host).into_owned();
            if let Some(parent) = host.strip_prefix("*.") {
                table.wildcards.insert(parent.to_string(), addrs);
                continue;
            }
            // A bare `*` would answer every name on the host.
            if host.is_empty() || host == "*" {
                continue;
            }
            for name in short_forms(&host, &suffix, namespace) {
                short.push((name, addrs.clone()));
            }
            table.names.insert(host, addrs);
        }
        // A short form never shadows a host of its own.
        for (name, addrs) in short {
            table.names.entry(name).or_insert(addrs);
        }
        table
    }

    /// The addresses of `name`: a host or short form of it, else the most
    /// specific wildcard over it (`*.b.example.com` before `*.example.com`).
    pub fn lookup(&self, name: &str) -> Option<&Addresses> {
        let name = normalize(name);
        if let Some(a) = self.names.get(name.as_ref()) {
            return Some(a);
        }
        if self.wildcards.is_empty() {
            return None;
        }
        let mut rest = name.as_ref();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(a) = self.wildcards.get(parent) {
                return Some(a);
            }
            rest = parent;
        }
        None
    }
}

/// Sorted, wildcards as `*.PARENT` (for `/config_dump`).
impl serde::Serialize for NameTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wildcards = self
            .wildcards
            .iter()
            .map(|(p, a)| (format!("*.{p}"), a.as_ref()));
        let all: BTreeMap<String, &Addresses> = self
            .names
            .iter()
            .map(|(n, a)| (n.clone(), a.as_ref()))
            .chain(wildcards)
            .collect();
        all.serialize(s)
    }
}

/// Lowercase, without a trailing dot; borrowed when it already is.
fn normalize(name: &str) -> Cow<'_, str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `NAME.NS` and `NAME.NS.svc` of `NAME.NS` + `suffix` (`.svc.DOMAIN`),
/// and `NAME` when `NS` is `own_namespace`.
fn short_forms(host: &str, suffix: &str, own_namespace: &str) -> Vec<String> {
    let Some((name, ns)) = host.strip_suffix(suffix).and_then(|p| p.split_once('.')) else {
        return Vec::new();
    };
    if name.is_empty() || ns.is_empty() || ns.contains('.') {
        return Vec::new();
    }
    let mut v = vec![format!("{name}.{ns}"), format!("{name}.{ns}.svc")];
    if ns == own_namespace {
        v.push(name.to_string());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(host: &str, addresses: &[&str]) -> Service {
        Service {
            host: host.into(),
            namespace: "default".into(),
            ports: Vec::new(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn table(services: &[Service]) -> NameTable {
        NameTable::new(services, "default", "cluster.local")
    }

    fn v4(t: &NameTable, name: &str) -> Option<Vec<String>> {
        t.lookup(name)
            .map(|a| a.v4.iter().map(|ip| ip.to_string()).collect())
    }

    #[test]
    fn kubernetes_short_forms_and_bare_names_in_the_own_namespace() {
        let t = table(&[
            svc("reviews.default.svc.cluster.local", &["240.0.0.1"]),
            svc("ratings.prod.svc.cluster.local", &["240.0.0.2"]),
        ]);
        let one = Some(vec!["240.0.0.1".to_string()]);
        let two = Some(vec!["240.0.0.2".to_string()]);
        for (name, want) in [
            ("reviews.default.svc.cluster.local", &one),
            ("reviews.default.svc", &one),
            ("reviews.default", &one),
            ("reviews", &one),
            ("ratings.prod.svc.cluster.local", &two),
            ("ratings.prod.svc", &two),
            ("ratings.prod", &two),
            // Another namespace's service is not a bare name here.
            ("ratings", &None),
            ("reviews.default.svc.cluster", &None),
            ("reviews.other", &None),
            ("svc.cluster.local", &None),
        ] {
            assert_eq!(&v4(&t, name), want, "{name}");
        }
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        let t = table(&[svc("Reviews.default.svc.cluster.local.", &["240.0.0.1"])]);
        for name in [
            "reviews.default.svc.cluster.local",
            "REVIEWS.Default.SVC.cluster.LOCAL.",
            "Reviews.Default.",
            "reviews.",
        ] {
            assert!(t.lookup(name).is_some(), "{name}");
        }
    }

    #[test]
    fn wildcards_answer_names_under_them_most_specific_first() {
        let t = table(&[
            svc("*.example.com", &["240.0.1.1"]),
            svc("*.eu.example.com", &["240.0.1.2"]),
            svc("api.example.com", &["240.0.1.3"]),
        ]);
        for (name, want) in [
            ("www.example.com", Some("240.0.1.1")),
            ("a.b.example.com", Some("240.0.1.1")),
            ("www.eu.example.com", Some("240.0.1.2")),
            ("API.example.com.", Some("240.0.1.3")),
            ("example.com", None),
            ("www.example.org", None),
            ("notexample.com", None),
        ] {
            assert_eq!(v4(&t, name), want.map(|w| vec![w.to_string()]), "{name}");
        }
    }

    #[test]
    fn hosts_without_addresses_and_catch_alls_are_not_answered() {
        let t = table(&[
            svc("db.default.svc.cluster.local", &[]),
            svc("*", &["240.0.0.9"]),
        ]);
        assert!(t.lookup("db.default.svc.cluster.local").is_none());
        assert!(t.lookup("db").is_none());
        assert!(t.lookup("anything.at.all").is_none());
    }

    #[test]
    fn a_host_of_its_own_wins_over_a_short_form() {
        // `reviews.default` is also the short form of the first host.
        let t = table(&[
            svc("reviews.default.svc.cluster.local", &["240.0.0.1"]),
            svc("reviews.default", &["240.0.0.7"]),
        ]);
        assert_eq!(v4(&t, "reviews.default"), Some(vec!["240.0.0.7".into()]));
        assert_eq!(v4(&t, "reviews"), Some(vec!["240.0.0.1".into()]));
    }

    #[test]
    fn both_families_and_the_dump() {
        let t = table(&[
            svc("dual.default.svc.cluster.local", &["240.0.0.1", "fd00::1"]),
            svc("*.example.com", &["240.0.1.1"]),
        ]);
        let a = t.lookup("dual").unwrap();
        assert_eq!(a.v4, ["240.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(a.v6, ["fd00::1".parse::<Ipv6Addr>().unwrap()]);
        let dump = serde_json::to_value(&t).unwrap();
        let names: Vec<&String> = dump.as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            [
                "*.example.com",
                "dual",
                "dual.default",
                "dual.default.svc",
                "dual.default.svc.cluster.local"
            ]
        );
        assert_eq!(dump["dual"]["v6"][0], "fd00::1");
    }
}
