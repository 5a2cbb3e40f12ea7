//! [`TokenKind`]: what a join token admits (a control-plane node, a
//! cluster's node, one VM identity, or the east-west gateway of a network).

use std::fmt;

use serde::{Deserialize, Serialize};
use trellis_identity::join_token::{parse_vm_identity, TokenParseError};

/// What a token may be used for, fixed when the token is created.
///
/// Serialised externally tagged (`"control_plane"` or
/// `{"vm":{"identity":"ns/sa"}}`): records travel through the Raft log in
/// bincode, which cannot read internally tagged enums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Admits a new control-plane node (a Raft voter).
    ControlPlane,
    /// Admits a VM, which will receive certificates for `identity`
    /// (`namespace/serviceaccount`).
    Vm { identity: String },
    /// Admits the control-plane node of a cluster: it joins as a learner
    /// (a voter only if it also holds the CA key) and records `cluster`
    /// on `network`.
    Cluster { cluster: String, network: String },
    /// Admits an east-west gateway of `network`, which will receive
    /// certificates for `spiffe://TD/ns/trellis-system/sa/eastwest-gateway-NETWORK`.
    Gateway { network: String },
}

impl TokenKind {
    /// A VM token kind, with `identity` validated by [`parse_vm_identity`].
    pub fn vm(identity: &str) -> Result<TokenKind, TokenParseError> {
        let (ns, sa) = parse_vm_identity(identity)?;
        Ok(TokenKind::Vm {
            identity: format!("{ns}/{sa}"),
        })
    }

    /// A gateway token kind, with `network` validated as a topology name.
    pub fn gateway(network: &str) -> Result<TokenKind, trellis_api::topology::TopologyError> {
        trellis_api::topology::validate_name("network", network)?;
        Ok(TokenKind::Gateway {
            network: network.to_string(),
        })
    }

    /// The kind of join this token admits, without the VM identity.
    pub fn required(&self) -> KindRequired {
        match self {
            TokenKind::ControlPlane => KindRequired::ControlPlane,
            TokenKind::Vm { .. } => KindRequired::Vm,
            TokenKind::Cluster { .. } => KindRequired::Cluster,
            TokenKind::Gateway { .. } => KindRequired::Gateway,
        }
    }
}

/// The kind of join being attempted, as known by the endpoint that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindRequired {
    ControlPlane,
    Vm,
    Cluster,
    Gateway,
    /// A workload certificate: a VM or an east-west gateway token, as its
    /// record says. What a node asks for when its replica does not have
    /// the token yet (made through another node a moment ago).
    Workload,
}

impl KindRequired {
    /// Whether a token of `kind` may be used for this join.
    pub fn admits(self, kind: KindRequired) -> bool {
        kind == self
            || (self == KindRequired::Workload
                && matches!(kind, KindRequired::Vm | KindRequired::Gateway))
    }
}

impl fmt::Display for KindRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KindRequired::ControlPlane => "control-plane node",
            KindRequired::Vm => "VM",
            KindRequired::Cluster => "cluster's control-plane node",
            KindRequired::Gateway => "east-west gateway",
            KindRequired::Workload => "VM or east-west gateway",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_kind_constructor_validates() {
        assert_eq!(
            TokenKind::vm("default/web").unwrap(),
            TokenKind::Vm {
                identity: "default/web".into()
            }
        );
        let err = TokenKind::vm("default").unwrap_err();
        assert!(
            matches!(err, TokenParseError::BadVmIdentity { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("exactly one `/`"), "{err}");
    }

    #[test]
    fn serde_shape() {
        let cp = serde_json::to_string(&TokenKind::ControlPlane).unwrap();
        assert_eq!(cp, r#""control_plane""#);
        let vm = TokenKind::Vm {
            identity: "default/web".into(),
        };
        let json = serde_json::to_string(&vm).unwrap();
        assert_eq!(json, r#"{"vm":{"identity":"default/web"}}"#);
        assert_eq!(serde_json::from_str::<TokenKind>(&json).unwrap(), vm);
        assert_eq!(vm.required(), KindRequired::Vm);
        let gw = TokenKind::gateway("net-b").unwrap();
        let json = serde_json::to_string(&gw).unwrap();
        assert_eq!(json, r#"{"gateway":{"network":"net-b"}}"#);
        assert_eq!(serde_json::from_str::<TokenKind>(&json).unwrap(), gw);
        assert_eq!(gw.required(), KindRequired::Gateway);
        assert!(TokenKind::gateway("bad/net").is_err());
        assert_eq!(
            TokenKind::ControlPlane.required(),
            KindRequired::ControlPlane
        );
        let cluster = TokenKind::Cluster {
            cluster: "west".into(),
            network: "net-west".into(),
        };
        let json = serde_json::to_string(&cluster).unwrap();
        assert_eq!(
            json,
            r#"{"cluster":{"cluster":"west","network":"net-west"}}"#
        );
        assert_eq!(cluster.required(), KindRequired::Cluster);
        // The Raft log carries kinds in bincode.
        let b = bincode::serialize(&cluster).unwrap();
        assert_eq!(bincode::deserialize::<TokenKind>(&b).unwrap(), cluster);
    }
}
