//! `DestinationRule`: policies for traffic to a host after routing, and
//! its named subsets.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_export_to, check_host, check_labels, is_dns1123_label, push, Validate,
};
use super::{FieldError, TrafficPolicy, WorkloadSelector};

/// `networking.istio.io` `DestinationRule`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DestinationRule {
    /// The service host the rule applies to.
    pub host: String,
    /// Policies for all of the host's traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named groups of endpoints, for routes to pick by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    /// Namespaces that see this resource: `.`, `*` or names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Client workloads the rule applies to; all when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

impl KindSpec for DestinationRule {
    const KIND: &'static str = "DestinationRule";
    const GROUP: Group = Group::Networking;
}

impl Validate for DestinationRule {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_host(errors, &format!("{path}.host"), &self.host);
        self.traffic_policy
            .validate_at(&format!("{path}.trafficPolicy"), errors);
        let mut names = BTreeSet::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            if !names.insert(subset.name.as_str()) {
                push(
                    errors,
                    &format!("{path}.subsets[{i}].name"),
                    format!("subset `{}` is defined more than once", subset.name),
                );
            }
        }
        self.subsets.validate_at(&format!("{path}.subsets"), errors);
        check_export_to(errors, &format!("{path}.exportTo"), &self.export_to);
        self.workload_selector
            .validate_at(&format!("{path}.workloadSelector"), errors);
    }
}

/// Endpoints of the host carrying `labels`, with their own policies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// Name routes refer to; a DNS-1123 label such as `v1`.
    pub name: String,
    /// Labels the endpoints carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Policies overriding the rule's for this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Validate for Subset {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if !is_dns1123_label(&self.name) {
            push(
                errors,
                &format!("{path}.name"),
                format!(
                    "subset name `{}` must be a DNS-1123 label (lowercase letters, digits, `-`)",
                    self.name
                ),
            );
        }
        check_labels(errors, &format!("{path}.labels"), &self.labels);
        self.traffic_policy
            .validate_at(&format!("{path}.trafficPolicy"), errors);
    }
}
