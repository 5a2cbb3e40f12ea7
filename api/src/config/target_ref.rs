//! `PolicyTargetReference`: a security policy attached to a resource
//! (a Kubernetes Gateway, a Service, a ServiceEntry) instead of selecting
//! workloads by label.

use serde::{Deserialize, Serialize};

use super::validate::{check_one_of, push, Validate};
use super::{FieldError, WorkloadSelector};

/// `istio.type.v1beta1.PolicyTargetReference`, as in Gateway API GEP-713.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyTargetReference {
    /// API group of the target; empty for core (`Service`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kind of the target: `Gateway`, `GatewayClass`, `Service` or
    /// `ServiceEntry`. Required.
    pub kind: String,
    /// Name of the target, in the policy's namespace. Required.
    pub name: String,
    /// Accepted for compatibility but refused when set: Istio does not
    /// support cross-namespace targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The `(group, kind)`s a policy may target; `""` is the core group.
const TARGET_KINDS: [(&str, &str); 5] = [
    ("", "Service"),
    ("core", "Service"),
    ("networking.istio.io", "ServiceEntry"),
    ("gateway.networking.k8s.io", "Gateway"),
    ("gateway.networking.k8s.io", "GatewayClass"),
];

impl Validate for PolicyTargetReference {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.name.is_empty() {
            push(errors, &format!("{path}.name"), "name is required");
        }
        if self.kind.is_empty() {
            push(errors, &format!("{path}.kind"), "kind is required");
        } else if !TARGET_KINDS.contains(&(self.group.as_str(), self.kind.as_str())) {
            push(
                errors,
                &format!("{path}.kind"),
                format!(
                    "cannot target `{}` in group `{}`; targets are Gateway and GatewayClass (gateway.networking.k8s.io), Service (core) and ServiceEntry (networking.istio.io)",
                    self.kind, self.group
                ),
            );
        }
        if self.namespace.is_some() {
            push(
                errors,
                &format!("{path}.namespace"),
                "cross-namespace targets are not supported; leave `namespace` out",
            );
        }
    }
}

/// Checks how a security policy picks what it applies to: at most one of
/// `selector`, `targetRef`, `targetRefs`, each valid.
pub(crate) fn check_policy_target(
    errors: &mut Vec<FieldError>,
    path: &str,
    selector: &Option<WorkloadSelector>,
    target_ref: &Option<PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    check_one_of(
        errors,
        path,
        &[
            ("selector", selector.is_some()),
            ("targetRef", target_ref.is_some()),
            ("targetRefs", !target_refs.is_empty()),
        ],
        false,
    );
    selector.validate_at(&format!("{path}.selector"), errors);
    target_ref.validate_at(&format!("{path}.targetRef"), errors);
    target_refs.validate_at(&format!("{path}.targetRefs"), errors);
}
