//! Selectors of workloads by label.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::{check_labels, Validate};
use super::FieldError;

/// `istio.type.v1beta1.WorkloadSelector`, written `{matchLabels: {...}}`:
/// the workloads (in the resource's namespace) carrying all these labels.
/// Used by DestinationRule and PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadSelector {
    /// Labels a workload must carry, all of them.
    pub match_labels: BTreeMap<String, String>,
}

impl Validate for WorkloadSelector {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_labels(errors, &format!("{path}.matchLabels"), &self.match_labels);
    }

    /// Istio warns about a selector without labels: it selects every
    /// workload of the namespace.
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        if self.match_labels.is_empty() {
            warnings.push(FieldError::new(
                path,
                "a selector without labels selects every workload of the namespace",
            ));
        }
    }
}

/// `istio.networking.v1.WorkloadSelector`, written `{labels: {...}}`: the
/// same idea with a different field name. Used by ServiceEntry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadLabelSelector {
    /// Labels a workload must carry, all of them.
    pub labels: BTreeMap<String, String>,
}

impl Validate for WorkloadLabelSelector {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_labels(errors, &format!("{path}.labels"), &self.labels);
    }

    /// As for [`WorkloadSelector`].
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        if self.labels.is_empty() {
            warnings.push(FieldError::new(
                path,
                "a selector without labels selects every workload of the namespace",
            ));
        }
    }
}
