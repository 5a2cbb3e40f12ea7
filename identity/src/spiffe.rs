//! SPIFFE IDs (`spiffe://TRUST_DOMAIN/PATH`) and how Trellis names its
//! identities.
use std::fmt;

use crate::IdentityError;

/// A parsed SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// The namespace of Trellis's own workloads (the east-west gateways): VM
/// tokens cannot be made for it.
pub const GATEWAY_NAMESPACE: &str = "trellis-system";
/// The service account of an east-west gateway is this and its network.
const GATEWAY_SA_PREFIX: &str = "eastwest-gateway-";

impl SpiffeId {
    /// Parses `spiffe://TD/PATH`; the trust domain is lowercase letters,
    /// digits, `.`, `-` and `_`; the path is non-empty segments.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let bad = |reason: &str| IdentityError::BadSpiffeId {
            id: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("must start with spiffe://"))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| bad("missing path"))?;
        validate_trust_domain(td).map_err(|r| bad(&r))?;
        if path.is_empty()
            || path
                .split('/')
                .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(bad("path segments must be non-empty and not . or .."));
        }
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        {
            return Err(bad(
                "path may hold only letters, digits, '-', '.', '_' and '/'",
            ));
        }
        Ok(Self {
            trust_domain: td.to_string(),
            path: format!("/{path}"),
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `spiffe://TD/trellis/controlplane/NODE`: a control-plane node.
    pub fn controlplane(trust_domain: &str, node: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: format!("/trellis/controlplane/{node}"),
        }
    }

    /// `spiffe://TD/trellis/admin`: the administrator (the CLI).
    pub fn admin(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: "/trellis/admin".to_string(),
        }
    }

    /// `spiffe://TD/ns/NS/sa/SA`: a workload, as Istio names it.
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            path: format!("/ns/{namespace}/sa/{service_account}"),
        }
    }

    /// (namespace, service account) if this is a workload identity
    /// `spiffe://TD/ns/NS/sa/SA`.
    pub fn workload_parts(&self) -> Option<(&str, &str)> {
        let rest = self.path.strip_prefix("/ns/")?;
        let (ns, sa) = rest.split_once("/sa/")?;
        (!ns.is_empty() && !sa.is_empty() && !sa.contains('/')).then_some((ns, sa))
    }

    /// `spiffe://TD/ns/trellis-system/sa/eastwest-gateway-NETWORK`: the
    /// east-west gateway of `network`. It is a workload identity (it
    /// streams config as agents do), in a namespace workloads cannot be
    /// given ([`GATEWAY_NAMESPACE`]), and the network it names is the only
    /// one the gateway may register for.
    pub fn eastwest_gateway(trust_domain: &str, network: &str) -> Self {
        Self::workload(
            trust_domain,
            GATEWAY_NAMESPACE,
            &format!("{GATEWAY_SA_PREFIX}{network}"),
        )
    }

    /// The network, if this is an east-west gateway's identity.
    pub fn gateway_network(&self) -> Option<&str> {
        let (ns, sa) = self.workload_parts()?;
        let network = sa.strip_prefix(GATEWAY_SA_PREFIX)?;
        (ns == GATEWAY_NAMESPACE && !network.is_empty()).then_some(network)
    }

    /// The node name if this is a control-plane node's identity.
    pub fn controlplane_node(&self) -> Option<&str> {
        self.path.strip_prefix("/trellis/controlplane/")
    }

    /// Whether this is the admin identity.
    pub fn is_admin(&self) -> bool {
        self.path == "/trellis/admin"
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

/// Checks a trust domain name (`example.org`).
pub fn validate_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.len() > 255 {
        return Err("trust domain must be 1 to 255 characters".into());
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        return Err(format!(
            "trust domain `{td}` may hold only lowercase letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id, SpiffeId::workload("example.org", "default", "web"));
        assert_eq!(id.to_string(), "spiffe://example.org/ns/default/sa/web");
        let cp = SpiffeId::controlplane("example.org", "node-2");
        assert_eq!(
            SpiffeId::parse(&cp.to_string())
                .unwrap()
                .controlplane_node(),
            Some("node-2")
        );
        assert!(SpiffeId::admin("td").is_admin());
    }

    #[test]
    fn a_gateway_identity_names_its_network_and_nothing_else_does() {
        let gw = SpiffeId::eastwest_gateway("td", "net-b");
        assert_eq!(
            gw.to_string(),
            "spiffe://td/ns/trellis-system/sa/eastwest-gateway-net-b"
        );
        assert_eq!(gw.gateway_network(), Some("net-b"));
        for other in [
            SpiffeId::workload("td", "default", "eastwest-gateway-net-b"),
            SpiffeId::workload("td", "trellis-system", "eastwest-gateway-"),
            SpiffeId::workload("td", "trellis-system", "web"),
            SpiffeId::admin("td"),
        ] {
            assert_eq!(other.gateway_network(), None, "{other}");
        }
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "",
            "http://example.org/a",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://Example.org/a",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
