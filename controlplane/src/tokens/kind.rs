//! [`TokenKind`]: what a join token admits (a control-plane node or one VM identity).

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
}

impl TokenKind {
    /// A VM token kind, with `identity` validated by [`parse_vm_identity`].
    pub fn vm(identity: &str) -> Result<TokenKind, TokenParseError> {
        let (ns, sa) = parse_vm_identity(identity)?;
        Ok(TokenKind::Vm {
            identity: format!("{ns}/{sa}"),
        })
    }

    /// The kind of join this token admits, without the VM identity.
    pub fn required(&self) -> KindRequired {
        match self {
            TokenKind::ControlPlane => KindRequired::ControlPlane,
            TokenKind::Vm { .. } => KindRequired::Vm,
            TokenKind::Cluster { .. } => KindRequired::Cluster,
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
}

impl fmt::Display for KindRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KindRequired::ControlPlane => "control-plane node",
            KindRequired::Vm => "VM",
            KindRequired::Cluster => "cluster's control-plane node",
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
