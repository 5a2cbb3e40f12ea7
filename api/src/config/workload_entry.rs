//! `WorkloadEntry`: a workload that is not a Kubernetes pod (a VM, a bare
//! metal host), and the endpoints of a `ServiceEntry`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_labels, check_port, check_port_name, check_unix_path, is_fqdn, push, Validate,
};
use super::FieldError;

/// `networking.istio.io` `WorkloadEntry`, also the type of
/// `ServiceEntry.endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadEntry {
    /// IP, hostname or `unix:///path`; may be empty only with `network`
    /// (reached through that network's gateway).
    pub address: String,
    /// Port names mapped to the workload's port numbers, overriding the
    /// service's.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    /// Labels, for selectors and subsets.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on, for multi-network meshes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load balancing weight; 1 when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account of the workload, for its identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// Prefix of Unix domain socket addresses.
pub const UNIX_ADDRESS_PREFIX: &str = "unix://";

impl WorkloadEntry {
    /// Whether `address` is an IP address or a Unix socket, as `STATIC`
    /// resolution needs.
    pub fn has_static_address(&self) -> bool {
        self.address.starts_with(UNIX_ADDRESS_PREFIX) || self.address.parse::<IpAddr>().is_ok()
    }
}

impl KindSpec for WorkloadEntry {
    const KIND: &'static str = "WorkloadEntry";
    const GROUP: Group = Group::Networking;
}

impl Validate for WorkloadEntry {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.validate_entry(path, errors, true);
    }

    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        if self.address.is_empty() {
            if let Some(network) = &self.network {
                push(
                    warnings,
                    &format!("{path}.address"),
                    format!("address is unset with network `{network}`: the workload is reached through that network's gateway"),
                );
            }
        }
    }
}

impl WorkloadEntry {
    /// Validates a `WorkloadGroup.template`: as an entry, except that the
    /// address may be left out (each workload's own is filled in when it
    /// registers).
    pub(crate) fn validate_template(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.validate_entry(path, errors, false);
    }

    fn validate_entry(&self, path: &str, errors: &mut Vec<FieldError>, address_required: bool) {
        let address_path = format!("{path}.address");
        if self.address.is_empty() {
            if address_required && self.network.is_none() {
                push(
                    errors,
                    &address_path,
                    "address is required unless `network` is set",
                );
            }
        } else if self.address == UNIX_ADDRESS_PREFIX {
            push(
                errors,
                &address_path,
                "a unix address needs a socket path, e.g. unix:///var/run/app.sock",
            );
        } else if self.address.starts_with(UNIX_ADDRESS_PREFIX) {
            // As Istio: an absolute path to a file, or an abstract socket.
            check_unix_path(errors, &address_path, &self.address);
            if !self.ports.is_empty() {
                push(
                    errors,
                    &format!("{path}.ports"),
                    format!("unix endpoint `{}` must not have ports", self.address),
                );
            }
        } else if self.address.parse::<IpAddr>().is_err() && !is_fqdn(&self.address) {
            push(
                errors,
                &address_path,
                format!(
                    "`{}` is not an address: write an IP address, a DNS name or unix:///path",
                    self.address
                ),
            );
        }
        for (name, port) in &self.ports {
            let at = format!("{path}.ports.{name}");
            check_port_name(errors, &at, name);
            check_port(errors, &at, *port);
        }
        check_labels(errors, &format!("{path}.labels"), &self.labels);
    }
}
