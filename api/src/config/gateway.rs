//! `Gateway`: the ports, hosts and TLS of a proxy at the edge of the mesh
//! (ingress or egress); VirtualServices bind to it by name.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_ip, check_labels, check_namespaced_host, check_port, check_unix_path, push,
    HostNamespaces, Validate,
};
use super::{FieldError, Protocol, ServerTlsSettings, UNIX_ADDRESS_PREFIX};

/// `networking.istio.io` `Gateway`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Gateway {
    /// What the gateway listens on, at least one.
    pub servers: Vec<Server>,
    /// Labels of the gateway workloads this applies to; all when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// One listening port of a gateway and the hosts served on it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Server {
    /// The port. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<GatewayPort>,
    /// IP or `unix://` socket to listen on instead of all addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Hosts exposed, `[namespace/]dnsName`: `*.example.com`,
    /// `prod/*`, `./reviews.example.com`. At least one.
    pub hosts: Vec<String>,
    /// TLS termination, passthrough or redirect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Loopback address or socket to forward to by default (not
    /// implemented by Istio either).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// Name for stats; unique among the gateway's servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Istio's `Port` of a gateway server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayPort {
    /// Port number, 1..=65535; 0 with a `unix://` bind.
    pub number: u32,
    /// `HTTP`, `HTTPS`, `HTTP2`, `GRPC`, `GRPC-WEB`, `TCP`, `TLS`,
    /// `MONGO`, `REDIS`, `MYSQL`. Required.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Port name, unique among the gateway's servers. Required.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Deprecated and without effect on gateways; refused when non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

impl GatewayPort {
    /// The declared protocol; `None` when missing or unknown.
    pub fn protocol(&self) -> Option<Protocol> {
        Protocol::parse(&self.protocol)
    }
}

impl KindSpec for Gateway {
    const KIND: &'static str = "Gateway";
    const GROUP: Group = Group::Networking;
}

impl Validate for Gateway {
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.servers.warn_at(&format!("{path}.servers"), warnings);
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let servers_path = format!("{path}.servers");
        if self.servers.is_empty() {
            push(errors, &servers_path, "a gateway needs at least one server");
        }
        self.servers.validate_at(&servers_path, errors);
        let mut port_names = BTreeSet::new();
        let mut server_names = BTreeSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let at = format!("{servers_path}[{i}]");
            if let Some(port) = &server.port {
                if !port.name.is_empty() && !port_names.insert(port.name.as_str()) {
                    push(
                        errors,
                        &format!("{at}.port.name"),
                        format!(
                            "port name `{}` is used by another server; each server's port needs its own name",
                            port.name
                        ),
                    );
                }
            }
            if let Some(name) = &server.name {
                if !server_names.insert(name.as_str()) {
                    push(
                        errors,
                        &format!("{at}.name"),
                        format!("server name `{name}` is used by another server"),
                    );
                }
            }
        }
        check_labels(errors, &format!("{path}.selector"), &self.selector);
    }
}

impl Validate for Server {
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.tls.warn_at(&format!("{path}.tls"), warnings);
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let hosts_path = format!("{path}.hosts");
        if self.hosts.is_empty() {
            push(errors, &hosts_path, "at least one host is required");
        }
        for (i, host) in self.hosts.iter().enumerate() {
            check_namespaced_host(
                errors,
                &format!("{hosts_path}[{i}]"),
                host,
                HostNamespaces::Gateway,
            );
        }
        let unix_bind = self
            .bind
            .as_deref()
            .is_some_and(|b| b.starts_with(UNIX_ADDRESS_PREFIX));
        if let Some(bind) = &self.bind {
            let at = format!("{path}.bind");
            if unix_bind {
                check_unix_path(errors, &at, bind);
            } else {
                check_ip(errors, &at, bind);
            }
        }
        self.tls.validate_at(&format!("{path}.tls"), errors);
        let port_path = format!("{path}.port");
        let Some(port) = &self.port else {
            push(errors, &port_path, "port is required");
            return;
        };
        if unix_bind {
            if port.number != 0 {
                push(
                    errors,
                    &format!("{port_path}.number"),
                    "must be 0 with a unix domain socket `bind`",
                );
            }
        } else {
            check_port(errors, &format!("{port_path}.number"), port.number);
        }
        if port.name.is_empty() {
            push(
                errors,
                &format!("{port_path}.name"),
                "port name is required",
            );
        }
        if port.target_port.is_some_and(|p| p > 0) {
            push(
                errors,
                &format!("{port_path}.targetPort"),
                "has no effect on gateways; remove it",
            );
        }
        let protocol_path = format!("{port_path}.protocol");
        let Some(protocol) = port.protocol() else {
            let reason = if port.protocol.is_empty() {
                "protocol is required".to_string()
            } else {
                format!("unknown protocol `{}`", port.protocol)
            };
            push(
                errors,
                &protocol_path,
                format!("{reason}; use HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS or MYSQL"),
            );
            return;
        };
        let terminates = matches!(protocol, Protocol::Https | Protocol::Tls);
        let reason = match &self.tls {
            None if terminates => Some(format!("protocol {protocol} needs `tls` settings")),
            Some(tls) if !terminates && protocol.is_http() => (!tls.is_passthrough()
                || tls.has_certificates())
            .then(|| {
                format!("protocol {protocol} is plain text: `tls` may only set `httpsRedirect`; use protocol HTTPS to terminate TLS")
            }),
            Some(_) if !terminates => Some(format!(
                "protocol {protocol} cannot have TLS settings; use protocol TLS or HTTPS"
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            push(errors, &format!("{path}.tls"), reason);
        }
    }
}
