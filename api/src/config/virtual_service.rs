//! `VirtualService`: how requests to a host are routed. HTTP routes are in
//! [`super::http_route`]; this file holds the resource, the TCP and TLS
//! routes and what all routes share (destinations, weights).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_export_to, check_host, check_hosts, check_ip_or_cidr, check_labels, check_port,
    is_dns1123_label, push, Validate,
};
use super::{host_matches, FieldError, HttpRoute};

/// `networking.istio.io` `VirtualService`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualService {
    /// Hosts the routes apply to: service names, FQDNs, `*.` wildcards.
    pub hosts: Vec<String>,
    /// Gateways (`namespace/name`) and/or `mesh` the routes apply at;
    /// empty means `mesh`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// HTTP routes, first match wins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    /// TLS passthrough routes, on SNI.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    /// Opaque TCP routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces that see this resource: `.`, `*` or names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// The gateway name that stands for every sidecar (agent) of the mesh.
pub const MESH_GATEWAY: &str = "mesh";

/// Whether routes bound to `gateways` apply to the mesh's agents: when
/// none is named, or `mesh` is among them (Istio's semantics).
pub fn binds_mesh(gateways: &[String]) -> bool {
    gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY)
}

impl KindSpec for VirtualService {
    const KIND: &'static str = "VirtualService";
    const GROUP: Group = Group::Networking;
}

impl Validate for VirtualService {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_hosts(errors, &format!("{path}.hosts"), &self.hosts);
        let mesh = binds_mesh(&self.gateways);
        for (i, host) in self.hosts.iter().enumerate() {
            let at = format!("{path}.hosts[{i}]");
            if mesh && host == "*" {
                push(
                    errors,
                    &at,
                    "`*` is not allowed for a VirtualService bound to the mesh (no `gateways`, or `mesh` among them)",
                );
            }
            if self.hosts[..i].contains(host) {
                push(
                    errors,
                    &at,
                    format!("host `{host}` is given more than once"),
                );
            }
        }
        for (i, gateway) in self.gateways.iter().enumerate() {
            check_gateway_name(errors, &format!("{path}.gateways[{i}]"), gateway);
        }
        for (i, route) in self.tls.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                for (k, sni) in m.sni_hosts.iter().enumerate() {
                    if !sni.is_empty() && !self.hosts.iter().any(|h| host_matches(h, sni)) {
                        push(
                            errors,
                            &format!("{path}.tls[{i}].match[{j}].sniHosts[{k}]"),
                            format!("SNI host `{sni}` is not covered by any of the VirtualService's hosts"),
                        );
                    }
                }
            }
        }
        if self.http.is_empty() && self.tls.is_empty() && self.tcp.is_empty() {
            push(
                errors,
                path,
                "at least one of `http`, `tls`, `tcp` routes is required",
            );
        }
        self.http.validate_at(&format!("{path}.http"), errors);
        self.tls.validate_at(&format!("{path}.tls"), errors);
        self.tcp.validate_at(&format!("{path}.tcp"), errors);
        check_export_to(errors, &format!("{path}.exportTo"), &self.export_to);
    }
}

/// Where traffic goes: a service host, optionally a subset from its
/// DestinationRule and a port.
/// A gateway a VirtualService binds to: `mesh`, `namespace/name`, or a
/// name in the VirtualService's namespace, as Istio accepts them.
fn check_gateway_name(errors: &mut Vec<FieldError>, path: &str, gateway: &str) {
    if gateway == "mesh" {
        return;
    }
    let valid = match gateway.split_once('/') {
        Some((namespace, name)) => is_dns1123_label(namespace) && is_dns1123_label(name),
        // A bare name, or the legacy `name.namespace...` form.
        None => !gateway.is_empty() && gateway.split('.').all(is_dns1123_label),
    };
    if !valid {
        push(
            errors,
            path,
            format!("`{gateway}` is not `mesh` or a gateway name such as `istio-system/ingress` or `ingress`"),
        );
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Service host from the registry (Kubernetes or ServiceEntry).
    pub host: String,
    /// Subset name defined in the host's DestinationRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Port on the host; needed when the service has more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

impl Validate for Destination {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_host(errors, &format!("{path}.host"), &self.host);
        if self.host == "*" {
            push(
                errors,
                &format!("{path}.host"),
                "`*` is not a destination; name a service host",
            );
        }
        if let Some(subset) = &self.subset {
            if subset.is_empty() {
                push(
                    errors,
                    &format!("{path}.subset"),
                    "subset must not be empty",
                );
            } else if !is_dns1123_label(subset) {
                push(
                    errors,
                    &format!("{path}.subset"),
                    format!("subset name `{subset}` must be a DNS-1123 label (lowercase letters, digits, `-`)"),
                );
            }
        }
        self.port.validate_at(&format!("{path}.port"), errors);
    }
}

/// A port by number, `{number: 9080}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortSelector {
    /// Port number, 1..=65535.
    pub number: u32,
}

impl Validate for PortSelector {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_port(errors, &format!("{path}.number"), self.number);
    }
}

/// Checks the weights of a route's destinations (`path` is the `route`
/// list): each in 0..=100, and with more than one destination each given
/// and summing to 100. A single destination takes all traffic, so its
/// weight may be left out.
pub(crate) fn check_weights(errors: &mut Vec<FieldError>, path: &str, weights: &[Option<i32>]) {
    if weights.is_empty() {
        push(errors, path, "at least one destination is required");
        return;
    }
    let several = weights.len() > 1;
    for (i, weight) in weights.iter().enumerate() {
        let at = format!("{path}[{i}].weight");
        match weight {
            Some(w) if !(0..=100).contains(w) => {
                push(errors, &at, format!("weight {w} is out of range 0..=100"));
            }
            None if several => push(
                errors,
                &at,
                "weight is required when a route has more than one destination",
            ),
            _ => {}
        }
    }
    if several && weights.iter().all(Option::is_some) {
        let sum: i64 = weights.iter().flatten().map(|w| i64::from(*w)).sum();
        if sum != 100 {
            push(
                errors,
                path,
                format!("destination weights sum to {sum}, they must sum to 100"),
            );
        }
    }
}

/// A weighted destination of a TCP or TLS route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Share of connections, 0..=100; required when the route has more
    /// than one destination, and then they sum to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

impl Validate for RouteDestination {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.destination
            .validate_at(&format!("{path}.destination"), errors);
    }
}

fn check_routes(errors: &mut Vec<FieldError>, path: &str, route: &[RouteDestination]) {
    route.validate_at(path, errors);
    let weights: Vec<Option<i32>> = route.iter().map(|r| r.weight).collect();
    check_weights(errors, path, &weights);
}

fn check_subnets(errors: &mut Vec<FieldError>, path: &str, subnets: &[String]) {
    for (i, subnet) in subnets.iter().enumerate() {
        check_ip_or_cidr(errors, &format!("{path}[{i}]"), subnet);
    }
}

/// An opaque TCP route: the first rule whose match fits the connection
/// picks the destinations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    /// Conditions, any of which selects this route; empty matches all.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

impl Validate for TcpRoute {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.matches.validate_at(&format!("{path}.match"), errors);
        check_routes(errors, &format!("{path}.route"), &self.route);
    }
}

/// Connection attributes a TCP route can match on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4MatchAttributes {
    /// Destination IPs or CIDR blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels of the client workload.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the client workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

impl Validate for L4MatchAttributes {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_subnets(
            errors,
            &format!("{path}.destinationSubnets"),
            &self.destination_subnets,
        );
        if let Some(port) = self.port {
            check_port(errors, &format!("{path}.port"), port);
        }
        check_labels(errors, &format!("{path}.sourceLabels"), &self.source_labels);
    }
}

/// A TLS passthrough route, chosen on SNI without terminating TLS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsRoute {
    /// Conditions, any of which selects this route; at least one.
    #[serde(rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    pub route: Vec<RouteDestination>,
}

impl Validate for TlsRoute {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.matches.is_empty() {
            push(
                errors,
                &format!("{path}.match"),
                "a TLS route needs at least one match",
            );
        }
        self.matches.validate_at(&format!("{path}.match"), errors);
        check_routes(errors, &format!("{path}.route"), &self.route);
    }
}

/// Connection attributes a TLS route can match on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsMatchAttributes {
    /// SNI values to match; `*.` wildcards allowed. Required.
    pub sni_hosts: Vec<String>,
    /// Destination IPs or CIDR blocks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels of the client workload.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Namespace of the client workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
}

impl Validate for TlsMatchAttributes {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_hosts(errors, &format!("{path}.sniHosts"), &self.sni_hosts);
        check_subnets(
            errors,
            &format!("{path}.destinationSubnets"),
            &self.destination_subnets,
        );
        if let Some(port) = self.port {
            check_port(errors, &format!("{path}.port"), port);
        }
        check_labels(errors, &format!("{path}.sourceLabels"), &self.source_labels);
    }
}
