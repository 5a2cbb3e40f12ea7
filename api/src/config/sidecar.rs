//! `Sidecar`: which ports a workload's proxy listens on for inbound
//! traffic, and which services it can reach outbound.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_ip, check_namespaced_host, check_port, check_port_name, check_unix_path, push,
    HostNamespaces, Validate,
};
use super::{
    ConnectionPoolSettings, Destination, FieldError, Protocol, ServerTlsMode, ServerTlsSettings,
    WorkloadLabelSelector, UNIX_ADDRESS_PREFIX,
};

/// `networking.istio.io` `Sidecar`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Sidecar {
    /// Workloads it applies to; the whole namespace when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadLabelSelector>,
    /// Inbound listeners; taken from the workload's services when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners and the services each can reach.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<IstioEgressListener>,
    /// Limits on connections accepted inbound, for all ports; a listener's
    /// `connectionPool` overrides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// What happens to traffic for destinations the mesh does not know.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// An inbound listener of the proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioIngressListener {
    /// The port. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// IP to listen on (no unix sockets inbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// How traffic reaches the listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Where the application listens: `127.0.0.1:PORT`, `[::1]:PORT`,
    /// `0.0.0.0:PORT`, `[::]:PORT` or `unix:///path`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_endpoint: Option<String>,
    /// TLS terminated by the proxy for clients outside the mesh (`SIMPLE`
    /// or `MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    /// Limits on connections accepted on this port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// An outbound listener of the proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IstioEgressListener {
    /// The port; 0 with a `unix://` bind; left out on the last listener
    /// to catch all other ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<SidecarPort>,
    /// IP or `unix://` socket to listen on; needs `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// How traffic reaches the listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_mode: Option<CaptureMode>,
    /// Services reachable through the listener, `namespace/dnsName`:
    /// `./*`, `istio-system/*`, `*/mysql.foo.com`, `~/*` (none). At least
    /// one.
    pub hosts: Vec<String>,
}

/// A listener port of a Sidecar (Istio's `SidecarPort`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SidecarPort {
    /// Port number; 0 only for an egress listener on a unix socket.
    pub number: u32,
    /// `HTTP`, `HTTPS`, `GRPC`, `TCP`, `TLS`, ...; sniffed when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Port name, a DNS-1123 label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Deprecated and without effect on sidecars; refused when non-zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

impl SidecarPort {
    /// The port's protocol: the declared one, else from the name, else
    /// [`Protocol::Unknown`] (sniffed).
    pub fn protocol(&self) -> Protocol {
        Protocol::from_port(self.name.as_deref(), self.protocol.as_deref())
    }
}

/// How traffic to a listener is captured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMode {
    /// The environment's default.
    #[default]
    Default,
    /// Redirected with iptables.
    Iptables,
    /// Not captured: the application connects to the listener itself.
    None,
}

/// Handling of traffic to destinations outside the registry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutboundTrafficPolicy {
    /// `REGISTRY_ONLY` or `ALLOW_ANY`; `REGISTRY_ONLY` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundTrafficMode>,
    /// Proxy to send unknown traffic to (`ALLOW_ANY` only); needs a port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<Destination>,
}

/// Modes of an [`OutboundTrafficPolicy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficMode {
    /// Only services in the registry (and ServiceEntries) are reachable.
    #[default]
    RegistryOnly,
    /// Unknown destinations are passed through.
    AllowAny,
}

impl KindSpec for Sidecar {
    const KIND: &'static str = "Sidecar";
    const GROUP: Group = Group::Networking;
}

impl Validate for Sidecar {
    /// What Istio warns about: a selector without labels, a host given
    /// twice in a listener, `*/*` beside other hosts (it selects all).
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.workload_selector
            .warn_at(&format!("{path}.workloadSelector"), warnings);
        for (i, listener) in self.egress.iter().enumerate() {
            let at = format!("{path}.egress[{i}].hosts");
            for (j, host) in listener.hosts.iter().enumerate() {
                if listener.hosts[..j].contains(host) {
                    push(
                        warnings,
                        &format!("{at}[{j}]"),
                        format!("host `{host}` is given more than once"),
                    );
                }
            }
            if listener.hosts.len() > 1 && listener.hosts.iter().any(|h| h == "*/*") {
                push(
                    warnings,
                    &at,
                    "`*/*` selects every host; the other hosts add nothing",
                );
            }
        }
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.workload_selector
            .validate_at(&format!("{path}.workloadSelector"), errors);
        if self.ingress.is_empty()
            && self.egress.is_empty()
            && self.inbound_connection_pool.is_none()
            && self.outbound_traffic_policy.is_none()
        {
            push(
                errors,
                path,
                "a Sidecar needs at least one of `ingress`, `egress`, `inboundConnectionPool`, `outboundTrafficPolicy`",
            );
        }
        let ingress_path = format!("{path}.ingress");
        self.ingress.validate_at(&ingress_path, errors);
        let mut numbers = BTreeSet::new();
        for (i, listener) in self.ingress.iter().enumerate() {
            if let Some(port) = &listener.port {
                if !numbers.insert(port.number) {
                    push(
                        errors,
                        &format!("{ingress_path}[{i}].port.number"),
                        format!("port {} is used by another ingress listener", port.number),
                    );
                }
            }
        }
        check_connection_pool(
            errors,
            &format!("{path}.inboundConnectionPool"),
            &self.inbound_connection_pool,
        );
        self.validate_egress(&format!("{path}.egress"), errors);
        self.outbound_traffic_policy
            .validate_at(&format!("{path}.outboundTrafficPolicy"), errors);
    }
}

impl Sidecar {
    fn validate_egress(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.egress.validate_at(path, errors);
        let mut numbers = BTreeSet::new();
        let mut sockets = BTreeSet::new();
        let mut catch_all = false;
        for (i, listener) in self.egress.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(port) = &listener.port else {
                if catch_all {
                    push(errors, &at, "only one egress listener may leave out `port`");
                } else if i + 1 != self.egress.len() {
                    push(
                        errors,
                        &at,
                        "the egress listener without `port` must be the last one",
                    );
                }
                catch_all = true;
                continue;
            };
            let duplicate = if port.number == 0 {
                listener
                    .bind
                    .as_deref()
                    .is_some_and(|bind| !sockets.insert(bind))
                    .then(|| "unix socket `bind` is used by another egress listener".to_string())
            } else {
                (!numbers.insert(port.number))
                    .then(|| format!("port {} is used by another egress listener", port.number))
            };
            if let Some(reason) = duplicate {
                let field = if port.number == 0 {
                    "bind"
                } else {
                    "port.number"
                };
                push(errors, &format!("{at}.{field}"), reason);
            }
        }
    }
}

impl Validate for IstioIngressListener {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let port_path = format!("{path}.port");
        match &self.port {
            Some(port) => {
                port.validate_at(&port_path, errors);
                check_port(errors, &format!("{port_path}.number"), port.number);
            }
            None => push(errors, &port_path, "port is required"),
        }
        if let Some(bind) = &self.bind {
            check_ip(errors, &format!("{path}.bind"), bind);
        }
        if let Some(endpoint) = &self.default_endpoint {
            check_default_endpoint(errors, &format!("{path}.defaultEndpoint"), endpoint);
        }
        if let Some(tls) = &self.tls {
            let tls_path = format!("{path}.tls");
            let unsupported = [
                ("subjectAltNames", !tls.subject_alt_names.is_empty()),
                ("httpsRedirect", tls.https_redirect),
                ("credentialName", tls.credential_name.is_some()),
                ("credentialNames", !tls.credential_names.is_empty()),
            ];
            for (field, set) in unsupported {
                if set {
                    push(
                        errors,
                        &format!("{tls_path}.{field}"),
                        "is not supported on a Sidecar ingress listener",
                    );
                }
            }
            let mode = tls.mode();
            if matches!(
                mode,
                ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
            ) {
                push(
                    errors,
                    &format!("{tls_path}.mode"),
                    format!(
                        "{} is not supported on a Sidecar ingress listener; use SIMPLE or MUTUAL",
                        mode.as_str()
                    ),
                );
            }
            let protocol = self.port.as_ref().map(SidecarPort::protocol);
            if !matches!(protocol, Some(Protocol::Https | Protocol::Tls)) {
                push(
                    errors,
                    &tls_path,
                    "TLS settings need the port's protocol to be HTTPS or TLS",
                );
            }
            tls.validate_at(&tls_path, errors);
        }
        check_connection_pool(
            errors,
            &format!("{path}.connectionPool"),
            &self.connection_pool,
        );
    }
}

impl Validate for IstioEgressListener {
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
                HostNamespaces::Sidecar,
            );
        }
        let bind_path = format!("{path}.bind");
        let Some(port) = &self.port else {
            if self.bind.is_some() {
                push(errors, &bind_path, "`bind` needs a `port`");
            }
            return;
        };
        let port_path = format!("{path}.port");
        port.validate_at(&port_path, errors);
        if port.number == 0 {
            match &self.bind {
                Some(bind) if bind.starts_with(UNIX_ADDRESS_PREFIX) => {
                    check_unix_path(errors, &bind_path, bind);
                }
                _ => push(
                    errors,
                    &format!("{port_path}.number"),
                    "port 0 needs a unix domain socket `bind` (`unix:///path`); otherwise use 1..=65535",
                ),
            }
            if self.capture_mode == Some(CaptureMode::Iptables) {
                push(
                    errors,
                    &format!("{path}.captureMode"),
                    "a unix domain socket listener cannot be captured with IPTABLES; use DEFAULT or NONE",
                );
            }
        } else if let Some(bind) = &self.bind {
            check_ip(errors, &bind_path, bind);
        }
    }
}

impl Validate for SidecarPort {
    /// The checks ingress and egress share; the number's range differs.
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(name) = &self.name {
            check_port_name(errors, &format!("{path}.name"), name);
        }
        if let Some(protocol) = &self.protocol {
            if Protocol::parse(protocol).is_none() {
                push(
                    errors,
                    &format!("{path}.protocol"),
                    format!("unknown protocol `{protocol}`"),
                );
            }
        }
        if self.target_port.is_some_and(|p| p > 0) {
            push(
                errors,
                &format!("{path}.targetPort"),
                "has no effect on sidecars; remove it",
            );
        }
    }
}

impl Validate for OutboundTrafficPolicy {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let Some(proxy) = &self.egress_proxy else {
            return;
        };
        let proxy_path = format!("{path}.egressProxy");
        if self.mode != Some(OutboundTrafficMode::AllowAny) {
            push(
                errors,
                &proxy_path,
                "`egressProxy` is only used with mode ALLOW_ANY",
            );
        }
        proxy.validate_at(&proxy_path, errors);
        if proxy.port.is_none() {
            push(
                errors,
                &format!("{proxy_path}.port"),
                "the egress proxy's port is required",
            );
        }
    }
}

/// A connection pool on a Sidecar: valid, and not empty (Istio refuses an
/// empty one here).
fn check_connection_pool(
    errors: &mut Vec<FieldError>,
    path: &str,
    pool: &Option<ConnectionPoolSettings>,
) {
    let Some(pool) = pool else {
        return;
    };
    if pool.tcp.is_none() && pool.http.is_none() {
        push(errors, path, "set `tcp` or `http` limits, or leave it out");
    }
    pool.validate_at(path, errors);
}

/// `127.0.0.1:PORT`, `[::1]:PORT`, `0.0.0.0:PORT`, `[::]:PORT` (or `:PORT`)
/// or `unix:///path`: the application on the workload itself.
fn check_default_endpoint(errors: &mut Vec<FieldError>, path: &str, endpoint: &str) {
    if endpoint.starts_with(UNIX_ADDRESS_PREFIX) {
        check_unix_path(errors, path, endpoint);
        return;
    }
    let parsed = endpoint.rsplit_once(':').and_then(|(host, port)| {
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6,
            // An IPv6 address needs its brackets, as in a URL.
            None if host.contains(':') => return None,
            None => host,
        };
        let local = matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::");
        local.then(|| port.parse::<u32>().ok()).flatten()
    });
    match parsed {
        Some(port) => check_port(errors, path, port),
        None => push(
            errors,
            path,
            format!(
                "`{endpoint}` must be 127.0.0.1:PORT, [::1]:PORT, 0.0.0.0:PORT, [::]:PORT or unix:///path"
            ),
        ),
    }
}
