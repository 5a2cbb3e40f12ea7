//! [`TokenKind`]: what a join token admits (a control-plane node or one VM identity).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::{sanitize, TokenError};

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
}

impl TokenKind {
    /// A VM token kind, with `identity` validated by [`parse_vm_identity`].
    pub fn vm(identity: &str) -> Result<TokenKind, TokenError> {
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
        }
    }
}

/// The kind of join being attempted, as known by the endpoint that received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindRequired {
    ControlPlane,
    Vm,
}

impl fmt::Display for KindRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KindRequired::ControlPlane => "control-plane node",
            KindRequired::Vm => "VM",
        })
    }
}

/// Splits and validates a VM identity `namespace/serviceaccount`.
///
/// The namespace must be an RFC 1123 DNS label (as Kubernetes requires); the
/// service account an RFC 1123 subdomain, because Kubernetes allows dots in
/// service-account names. Both end up in a SPIFFE ID, so nothing else (no
/// upper case, `/`, `%`, spaces) is let through.
pub fn parse_vm_identity(identity: &str) -> Result<(String, String), TokenError> {
    let bad = |reason| TokenError::BadVmIdentity {
        identity: sanitize(identity, 64),
        reason,
    };
    let (ns, sa) = identity
        .split_once('/')
        .ok_or_else(|| bad("expected exactly one `/`"))?;
    if sa.contains('/') {
        return Err(bad("expected exactly one `/`"));
    }
    check_label(ns).map_err(|r| bad(ns_reason(r)))?;
    if sa.is_empty() {
        return Err(bad("the service account is empty"));
    }
    if sa.len() > 253 {
        return Err(bad("the service account is longer than 253 characters"));
    }
    for label in sa.split('.') {
        check_label(label).map_err(|r| bad(sa_reason(r)))?;
    }
    Ok((ns.to_owned(), sa.to_owned()))
}

#[derive(Debug, Clone, Copy)]
enum LabelProblem {
    Empty,
    TooLong,
    BadChar,
    BadEdge,
}

fn check_label(label: &str) -> Result<(), LabelProblem> {
    let bytes = label.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(LabelProblem::Empty);
    };
    if bytes.len() > 63 {
        return Err(LabelProblem::TooLong);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(LabelProblem::BadChar);
    }
    if *first == b'-' || *last == b'-' {
        return Err(LabelProblem::BadEdge);
    }
    Ok(())
}

fn ns_reason(p: LabelProblem) -> &'static str {
    match p {
        LabelProblem::Empty => "the namespace is empty",
        LabelProblem::TooLong => "the namespace is longer than 63 characters",
        LabelProblem::BadChar => "the namespace has a character other than a-z, 0-9 or `-`",
        LabelProblem::BadEdge => "the namespace starts or ends with `-`",
    }
}

fn sa_reason(p: LabelProblem) -> &'static str {
    match p {
        LabelProblem::Empty => "the service account has an empty part between dots",
        LabelProblem::TooLong => {
            "a dot-separated part of the service account exceeds 63 characters"
        }
        LabelProblem::BadChar => {
            "the service account has a character other than a-z, 0-9, `-` or `.`"
        }
        LabelProblem::BadEdge => "a part of the service account starts or ends with `-`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_identities() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
        let ok: &[&str] = &[
            "default/web",
            "a/b",
            "ns-1/sa-2",
            "0ns/0sa",
            "kube-system/coredns.v2",
        ];
        for id in ok {
            let (ns, sa) = parse_vm_identity(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(format!("{ns}/{sa}"), *id);
        }
        assert!(parse_vm_identity(&format!("{long63}/{long63}")).is_ok());

        let bad: Vec<(String, &str)> = vec![
            ("".into(), "exactly one `/`"),
            ("default".into(), "exactly one `/`"),
            ("a/b/c".into(), "exactly one `/`"),
            ("/web".into(), "namespace is empty"),
            ("default/".into(), "service account is empty"),
            ("Default/web".into(), "namespace has a character"),
            ("default/Web".into(), "service account has a character"),
            ("de fault/web".into(), "namespace has a character"),
            ("default/we b".into(), "service account has a character"),
            ("default/web%2f".into(), "service account has a character"),
            ("-ns/web".into(), "namespace starts or ends"),
            ("ns-/web".into(), "namespace starts or ends"),
            ("ns/-web".into(), "starts or ends with `-`"),
            ("ns/web..x".into(), "empty part between dots"),
            ("ns/.web".into(), "empty part between dots"),
            (format!("{long64}/web"), "namespace is longer"),
            (format!("ns/{long64}"), "exceeds 63"),
            (
                format!("ns/{}", [long63.as_str(); 5].join(".")),
                "longer than 253",
            ),
            ("ns/wéb".into(), "service account has a character"),
        ];
        for (id, want) in &bad {
            match parse_vm_identity(id) {
                Err(e @ TokenError::BadVmIdentity { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{id:?}: {msg}");
                    assert!(msg.contains("namespace/serviceaccount"), "{msg}");
                }
                other => panic!("{id:?}: expected BadVmIdentity, got {other:?}"),
            }
        }
    }

    #[test]
    fn vm_kind_constructor_validates() {
        assert_eq!(
            TokenKind::vm("default/web").unwrap(),
            TokenKind::Vm {
                identity: "default/web".into()
            }
        );
        assert!(TokenKind::vm("default").is_err());
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
    }
}
