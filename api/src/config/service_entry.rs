//! `ServiceEntry`: a service added to the mesh's registry by hand, usually
//! one outside the mesh.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_export_to, check_hosts, check_ip_or_cidr, check_one_of, check_port, check_port_name,
    is_fqdn, push, Validate,
};
use super::{FieldError, Protocol, WorkloadEntry, WorkloadLabelSelector};

/// `networking.istio.io` `ServiceEntry`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceEntry {
    /// Host names of the service; `*.` wildcards allowed.
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDR blocks of the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The service's ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Inside or outside the mesh; `MESH_EXTERNAL` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Endpoints; not with `workloadSelector`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    /// Pods and WorkloadEntries that are the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,
    /// Namespaces that see this resource: `.`, `*` or names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Identities the endpoints' certificates may carry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

/// A port of a ServiceEntry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    /// Port number, 1..=65535.
    pub number: u32,
    /// Protocol (`HTTP`, `TLS`, `TCP`, ... see [`Protocol`]); taken from the
    /// name when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port name, a DNS-1123 label unique in the ServiceEntry.
    pub name: String,
    /// Port on the endpoints, when it differs from `number`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

impl ServicePort {
    /// The port's protocol by Istio's rules.
    pub fn protocol(&self) -> Protocol {
        Protocol::from_port(Some(&self.name), self.protocol.as_deref())
    }
}

/// Whether a ServiceEntry's service is part of the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    /// Outside the mesh: no mTLS, no mesh identity.
    MeshExternal,
    /// Part of the mesh (e.g. VMs added by hand).
    MeshInternal,
}

/// How a ServiceEntry's endpoints are found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// Forward to the address the client connected to.
    #[default]
    None,
    /// The endpoints' IP addresses.
    Static,
    /// Resolve the hosts or endpoint names in DNS, using all addresses.
    Dns,
    /// Resolve in DNS, using the first address only.
    DnsRoundRobin,
    /// Resolve the host the client asked for, per request (wildcard
    /// hosts); accepted, not acted on.
    DynamicDns,
}

impl Resolution {
    /// The spelling in config, e.g. `DNS_ROUND_ROBIN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::None => "NONE",
            Resolution::Static => "STATIC",
            Resolution::Dns => "DNS",
            Resolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
            Resolution::DynamicDns => "DYNAMIC_DNS",
        }
    }
}

impl KindSpec for ServiceEntry {
    const KIND: &'static str = "ServiceEntry";
    const GROUP: Group = Group::Networking;
}

impl Validate for ServiceEntry {
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.warnings(path, warnings);
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let hosts_path = format!("{path}.hosts");
        // Istio only warns about a partial wildcard (`*x.com`) here.
        let mut host_errors = Vec::new();
        check_hosts(&mut host_errors, &hosts_path, &self.hosts);
        errors.extend(host_errors.into_iter().filter(|e| {
            !self
                .hosts
                .iter()
                .enumerate()
                .any(|(i, h)| is_partial_wildcard(h) && e.path == format!("{hosts_path}[{i}]"))
        }));
        for (i, host) in self.hosts.iter().enumerate() {
            if host == "*" {
                push(
                    errors,
                    &format!("{hosts_path}[{i}]"),
                    "`*` is not allowed as a ServiceEntry host",
                );
            }
        }
        for (i, address) in self.addresses.iter().enumerate() {
            let at = format!("{path}.addresses[{i}]");
            check_ip_or_cidr(errors, &at, address);
            if address.contains('/')
                && matches!(
                    self.resolution,
                    Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns
                )
            {
                push(
                    errors,
                    &at,
                    "CIDR addresses are allowed only with resolution NONE or STATIC",
                );
            }
        }
        self.validate_ports(path, errors);
        self.validate_endpoints(path, errors);
        self.validate_resolution(path, errors);
        self.workload_selector
            .validate_at(&format!("{path}.workloadSelector"), errors);
        check_export_to(errors, &format!("{path}.exportTo"), &self.export_to);
        for (i, san) in self.subject_alt_names.iter().enumerate() {
            if san.is_empty() {
                push(
                    errors,
                    &format!("{path}.subjectAltNames[{i}]"),
                    "must not be empty",
                );
            }
        }
    }
}

/// `*x.com`: a wildcard that is not a whole leading label.
fn is_partial_wildcard(host: &str) -> bool {
    host.starts_with('*')
        && host != "*"
        && !host.starts_with("*.")
        && host.matches('*').count() == 1
        && !host.contains(['/', ' '])
}

/// A port's declared protocol as Istio's rules for ServiceEntries read it:
/// the `protocol` field alone (the name does not count).
fn declared(port: &ServicePort) -> Option<Protocol> {
    port.protocol.as_deref().and_then(Protocol::parse)
}

impl ServiceEntry {
    /// Istio's rules that depend on the resolution.
    fn validate_resolution(&self, path: &str, errors: &mut Vec<FieldError>) {
        let dns = matches!(self.resolution, Resolution::Dns | Resolution::DnsRoundRobin);
        if dns {
            for (i, endpoint) in self.endpoints.iter().enumerate() {
                let address = &endpoint.address;
                if !address.is_empty()
                    && address.parse::<std::net::IpAddr>().is_err()
                    && !is_fqdn(address)
                {
                    push(
                        errors,
                        &format!("{path}.endpoints[{i}].address"),
                        format!("`{address}` is not an IP address or a DNS name, as resolution {} needs", self.resolution.as_str()),
                    );
                }
            }
        }
        if self.resolution == Resolution::DynamicDns {
            for (i, host) in self.hosts.iter().enumerate() {
                if !host.starts_with('*') {
                    push(
                        errors,
                        &format!("{path}.hosts[{i}]"),
                        "resolution DYNAMIC_DNS needs wildcard hosts such as `*.example.com`",
                    );
                }
            }
            if !self.addresses.is_empty() {
                push(errors, &format!("{path}.addresses"), "addresses cannot be set with resolution DYNAMIC_DNS: the destination is the host the client asked for");
            }
            if !self.endpoints.is_empty() {
                push(errors, &format!("{path}.endpoints"), "endpoints cannot be set with resolution DYNAMIC_DNS: the destination is the host the client asked for");
            }
            for (i, port) in self.ports.iter().enumerate() {
                if !matches!(
                    declared(port),
                    Some(Protocol::Http | Protocol::Tls | Protocol::Grpc | Protocol::Http2)
                ) {
                    push(
                        errors,
                        &format!("{path}.ports[{i}].protocol"),
                        "resolution DYNAMIC_DNS supports only the protocols HTTP, TLS, GRPC and HTTP2",
                    );
                }
            }
        }
        // Plain TCP cannot tell several hosts apart (HTTP has the
        // authority, TLS the SNI), unless the hosts are not used (NONE).
        if self.resolution != Resolution::None && self.hosts.len() > 1 {
            if let Some(i) = self.ports.iter().position(|p| {
                !matches!(declared(p), Some(p) if p.is_http() || matches!(p, Protocol::Tls | Protocol::Https))
            }) {
                push(
                    errors,
                    &format!("{path}.ports[{i}].protocol"),
                    "several hosts with a port that is not HTTP or TLS (declared in `protocol`): only resolution NONE allows it",
                );
            }
        }
    }

    /// What Istio accepts with a warning.
    fn warnings(&self, path: &str, warnings: &mut Vec<FieldError>) {
        for (i, host) in self.hosts.iter().enumerate() {
            if is_partial_wildcard(host) && self.resolution != Resolution::DynamicDns {
                push(
                    warnings,
                    &format!("{path}.hosts[{i}]"),
                    format!("partial wildcard `{host}` is not matched as a wildcard; write `*.{}` to match subdomains", host.trim_start_matches('*').trim_start_matches('.')),
                );
            }
        }
        self.workload_selector
            .warn_at(&format!("{path}.workloadSelector"), warnings);
        let tcp_port = self
            .ports
            .iter()
            .any(|p| !matches!(declared(p), Some(p) if p.is_http()));
        if self.resolution == Resolution::Dns
            && !self.addresses.is_empty()
            && self.hosts.len() > 1
            && tcp_port
        {
            push(
                warnings,
                &format!("{path}.hosts"),
                "several hosts with addresses and a TCP port: the addresses cannot tell the hosts apart",
            );
        }
        if self.resolution == Resolution::None && self.workload_selector.is_some() {
            push(
                warnings,
                &format!("{path}.workloadSelector"),
                "workloadSelector should not be set when resolution is NONE",
            );
        }
    }

    fn validate_ports(&self, path: &str, errors: &mut Vec<FieldError>) {
        let mut numbers = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let at = format!("{path}.ports[{i}]");
            check_port(errors, &format!("{at}.number"), port.number);
            if !numbers.insert(port.number) {
                push(
                    errors,
                    &format!("{at}.number"),
                    format!("port {} is declared more than once", port.number),
                );
            }
            check_port_name(errors, &format!("{at}.name"), &port.name);
            if !names.insert(port.name.as_str()) {
                push(
                    errors,
                    &format!("{at}.name"),
                    format!("port name `{}` is declared more than once", port.name),
                );
            }
            if let Some(protocol) = &port.protocol {
                if Protocol::parse(protocol).is_none() {
                    push(
                        errors,
                        &format!("{at}.protocol"),
                        format!("unknown protocol `{protocol}`"),
                    );
                }
            }
            if let Some(target) = port.target_port {
                check_port(errors, &format!("{at}.targetPort"), target);
            }
        }
    }

    fn validate_endpoints(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("endpoints", !self.endpoints.is_empty()),
                ("workloadSelector", self.workload_selector.is_some()),
            ],
            false,
        );
        let endpoints_path = format!("{path}.endpoints");
        self.endpoints.validate_at(&endpoints_path, errors);
        match self.resolution {
            Resolution::None if !self.endpoints.is_empty() => push(
                errors,
                &endpoints_path,
                "resolution NONE forwards to the original destination; remove `endpoints` or pick STATIC or DNS",
            ),
            Resolution::Dns | Resolution::DnsRoundRobin if self.endpoints.is_empty() => {
                for (i, host) in self.hosts.iter().enumerate() {
                    if host.contains('*') {
                        push(
                            errors,
                            &format!("{path}.hosts[{i}]"),
                            "a wildcard host cannot be resolved in DNS; add `endpoints`",
                        );
                    }
                }
            }
            _ => {}
        }
        if self.resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
            push(
                errors,
                &endpoints_path,
                "resolution DNS_ROUND_ROBIN allows at most one endpoint",
            );
        }
        let names: BTreeSet<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let at = format!("{endpoints_path}[{i}]");
            if self.resolution == Resolution::Static && !endpoint.has_static_address() {
                push(
                    errors,
                    &format!("{at}.address"),
                    format!(
                        "`{}` is not an IP address or unix:// path, as STATIC resolution needs",
                        endpoint.address
                    ),
                );
            }
            for name in endpoint.ports.keys() {
                if !names.contains(name.as_str()) {
                    push(
                        errors,
                        &format!("{at}.ports.{name}"),
                        format!("port `{name}` is not declared in `ports`"),
                    );
                }
            }
        }
    }
}
