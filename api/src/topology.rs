//! Where things are in a mesh: every control-plane node, agent and
//! workload entry belongs to a **cluster** and a **network** and has a
//! [`Locality`] (`region/zone/subzone`). The names are Istio's: the labels
//! below, and WorkloadEntry's `network` and `locality` fields. The control
//! plane, the agent and the data plane take them from here.
use std::collections::BTreeMap;
use std::fmt;

/// The network label of a workload (Istio's `topology.istio.io/network`).
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// The cluster label of a workload (Istio's `topology.istio.io/cluster`).
pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
/// Kubernetes' region label, read when an entry has no `locality`.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Kubernetes' zone label, read when an entry has no `locality`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Istio's subzone label, read when an entry has no `locality`.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// The DNS domain of service names (`NAME.NS.svc.DOMAIN`) unless `init`
/// was given another.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// The name of the first cluster, unless `init` was given one.
pub const DEFAULT_CLUSTER: &str = "cluster-1";
/// The network of the first cluster, unless `init` was given one.
pub const DEFAULT_NETWORK: &str = "network-1";

/// Longest cluster or network name: a Kubernetes label value.
const MAX_NAME: usize = 63;

/// A name, domain or locality that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "{what} `{value}`: {reason}; use 1 to 63 letters, digits, `-`, `_` or `.`, \
         starting and ending with a letter or digit (a Kubernetes label value)"
    )]
    BadName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "locality `{value}`: {reason}; write REGION[/ZONE[/SUBZONE]], e.g. us-east1/us-east1-b"
    )]
    BadLocality { value: String, reason: String },
    #[error(
        "domain `{value}`: {reason}; write a DNS domain such as cluster.local \
         (lowercase letters, digits and `-`, labels separated by dots)"
    )]
    BadDomain { value: String, reason: &'static str },
}

/// Checks a cluster or network name (`what` names it in the error): it is
/// the value of the `topology.istio.io/cluster` or `/network` label.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), TopologyError> {
    let bad = |reason| TopologyError::BadName {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > MAX_NAME {
        return Err(bad("it is longer than 63 characters"));
    }
    label_value(value).map_err(bad)
}

/// The rules of a Kubernetes label value, for a non-empty value.
fn label_value(value: &str) -> Result<(), &'static str> {
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("it has a character other than a letter, digit, `-`, `_` or `.`");
    }
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !ends(value.chars().next()) || !ends(value.chars().last()) {
        return Err("it starts or ends with something other than a letter or digit");
    }
    Ok(())
}

/// Checks a DNS domain for service names (`cluster.local`).
pub fn validate_domain(value: &str) -> Result<(), TopologyError> {
    let bad = |reason| TopologyError::BadDomain {
        value: value.to_string(),
        reason,
    };
    if value.is_empty() || value.len() > 253 {
        return Err(bad("it must be 1 to 253 characters"));
    }
    for label in value.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label must be 1 to 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad("it has a label that is not a DNS label"));
        }
    }
    Ok(())
}

/// A failure domain: `region/zone/subzone`, each part possibly empty (an
/// empty part, and every part after it, is unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Parses `REGION[/ZONE[/SUBZONE]]` as an operator gives it (a flag):
    /// strict, every part a label value. The empty string is no locality.
    pub fn parse(value: &str) -> Result<Locality, TopologyError> {
        if value.is_empty() {
            return Ok(Locality::default());
        }
        let parts: Vec<&str> = value.split('/').collect();
        if parts.len() > 3 {
            return Err(TopologyError::BadLocality {
                value: value.to_string(),
                reason: "it has more than three parts".into(),
            });
        }
        for (part, name) in parts.iter().zip(["region", "zone", "subzone"]) {
            if part.is_empty() || part.len() > MAX_NAME {
                return Err(TopologyError::BadLocality {
                    value: value.to_string(),
                    reason: format!("its {name} must be 1 to 63 characters"),
                });
            }
            label_value(part).map_err(|reason| TopologyError::BadLocality {
                value: value.to_string(),
                reason: format!("its {name}: {reason}"),
            })?;
        }
        Ok(Self::split(value))
    }

    /// The locality of a workload entry, as Istio reads it: its `locality`
    /// field split on `/` (parts past the third ignored), else the
    /// region, zone and subzone labels.
    pub fn of_entry(locality: Option<&str>, labels: &BTreeMap<String, String>) -> Locality {
        match locality.filter(|l| !l.is_empty()) {
            Some(l) => Self::split(l),
            None => {
                let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
                Locality {
                    region: label(REGION_LABEL),
                    zone: label(ZONE_LABEL),
                    subzone: label(SUBZONE_LABEL),
                }
            }
        }
    }

    fn split(value: &str) -> Locality {
        let mut parts = value.splitn(4, '/').map(str::to_string);
        Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

/// `region/zone/subzone`, without trailing empty parts.
impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [&self.region, &self.zone, &self.subzone];
        let n = parts
            .iter()
            .rposition(|p| !p.is_empty())
            .map_or(0, |i| i + 1);
        for (i, p) in parts[..n].iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

/// The network of a workload entry: its `network` field, else its
/// `topology.istio.io/network` label; empty when neither says (Istio takes
/// such an endpoint to be on every caller's network).
pub fn network_of<'a>(network: Option<&'a str>, labels: &'a BTreeMap<String, String>) -> &'a str {
    network
        .filter(|n| !n.is_empty())
        .or_else(|| labels.get(NETWORK_LABEL).map(String::as_str))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_label_values() {
        for ok in ["cluster-1", "east", "a", "net_2.eu", "A9"] {
            validate_name("cluster", ok).unwrap();
        }
        let cases = [
            ("", "empty"),
            ("-east", "starts or ends"),
            ("east.", "starts or ends"),
            ("east west", "character"),
            ("east/1", "character"),
            (&"x".repeat(64), "longer than 63"),
        ];
        for (bad, why) in cases {
            let e = validate_name("--cluster", bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--cluster `{bad}`: ")), "{e}");
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn domains_are_dns_names() {
        for ok in ["cluster.local", "mesh", "corp-1.example"] {
            validate_domain(ok).unwrap();
        }
        for bad in [
            "",
            "Cluster.local",
            "cluster..local",
            "-a.local",
            "a_b.local",
            "a.local.",
        ] {
            let e = validate_domain(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("domain `{bad}`")), "{e}");
        }
    }

    #[test]
    fn locality_flags_are_parsed_strictly() {
        let l = Locality::parse("us-east1/us-east1-b/rack-4").unwrap();
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.subzone.as_str()),
            ("us-east1", "us-east1-b", "rack-4")
        );
        assert_eq!(l.to_string(), "us-east1/us-east1-b/rack-4");
        let region = Locality::parse("eu").unwrap();
        assert_eq!(
            (region.zone.as_str(), region.to_string().as_str()),
            ("", "eu")
        );
        assert!(Locality::parse("").unwrap().is_empty());
        for (bad, why) in [
            ("a/b/c/d", "more than three parts"),
            ("a//c", "zone must be"),
            ("a/b c", "zone: it has a character"),
            ("/b", "region must be"),
        ] {
            let e = Locality::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn an_entrys_locality_is_its_field_else_its_labels() {
        let labels: BTreeMap<String, String> = [
            (REGION_LABEL, "us-west"),
            (ZONE_LABEL, "us-west-2a"),
            (SUBZONE_LABEL, "rack-1"),
            (NETWORK_LABEL, "net-b"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let from_field = Locality::of_entry(Some("eu/eu-1"), &labels);
        assert_eq!(from_field.to_string(), "eu/eu-1");
        assert_eq!(from_field.subzone, "");
        let from_labels = Locality::of_entry(None, &labels);
        assert_eq!(from_labels.to_string(), "us-west/us-west-2a/rack-1");
        assert_eq!(Locality::of_entry(Some(""), &labels), from_labels);
        // Leniently read: parts past the third are not ours to judge.
        assert_eq!(Locality::of_entry(Some("a/b/c/d"), &labels).subzone, "c");
        assert!(Locality::of_entry(None, &BTreeMap::new()).is_empty());

        assert_eq!(network_of(Some("net-a"), &labels), "net-a");
        assert_eq!(network_of(None, &labels), "net-b");
        assert_eq!(network_of(Some(""), &labels), "net-b");
        assert_eq!(network_of(None, &BTreeMap::new()), "");
    }
}
