//! `AuthorizationPolicy`: which requests a workload allows, denies, audits
//! or hands to an external authorizer, by source, operation and
//! conditions.

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::target_ref::check_policy_target;
use super::validate::{check_ip_or_cidr, check_no_empty, check_port, push, Validate};
use super::{FieldError, PolicyTargetReference, WorkloadSelector};

/// `security.istio.io` `AuthorizationPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthorizationPolicy {
    /// Workloads it applies to; the whole namespace (or mesh, in the root
    /// namespace) when unset. Not with `targetRef`/`targetRefs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The resource it applies to instead of a selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several resources it applies to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Requests matching any rule get the `action`; none match when
    /// empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
    /// What to do with matching requests; `ALLOW` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthorizationAction>,
    /// The external authorizer, for action `CUSTOM` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// Actions of an [`AuthorizationPolicy`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching requests; once a workload has an ALLOW policy, deny
    /// the rest.
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Mark matching requests for audit logging.
    Audit,
    /// Ask the `provider` about matching requests.
    Custom,
}

/// An external authorizer declared in the mesh config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionProvider {
    /// Name of the extension provider in the mesh config. Required.
    pub name: String,
}

/// Istio's `Rule`: matches when one `from`, one `to` and all `when` match;
/// an empty rule matches every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthorizationRule {
    /// Sources, any of which matches; any source when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations, any of which matches; any operation when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Conditions, all of which must match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `Rule.From`: `{source: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleFrom {
    /// The source. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// `Rule.To`: `{operation: {...}}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleTo {
    /// The operation. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Who sent a request; the fields are ANDed, the values in a field ORed.
/// Values match exactly, by prefix (`abc*`), suffix (`*abc`) or presence
/// (`*`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    /// Peer identities from the mTLS certificate,
    /// `TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Request identities from the JWT, `ISS/SUB`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Request identities that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer, from its certificate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Service accounts of the peer, `NAMESPACE/SERVICE_ACCOUNT`; not with
    /// `principals` or `namespaces`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Service accounts that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// IPs or CIDR blocks of the connection's source address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Source addresses that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// IPs or CIDR blocks of the original client (X-Forwarded-For, PROXY
    /// protocol).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    /// Trust domains of the peer identity that match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    /// Trust domains of the peer identity that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
}

/// What a request asks for; the fields are ANDed, the values in a field
/// ORed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    /// HTTP hosts (authority), case-insensitive.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// Destination ports, as strings of numbers (`"8080"`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Ports that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// HTTP paths (normalized), or `/package.Service/Method` for gRPC.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// An extra condition on an attribute of the request or connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    /// The attribute, one of [`CONDITION_KEYS`]. Required.
    pub key: String,
    /// Values that match; at least one of `values`, `notValues`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that do not match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The `when` keys Istio documents. A trailing `[]` means the key takes a
/// name in brackets (`request.headers[x-token]`,
/// `request.auth.claims[groups]`, nested `request.auth.claims[a][b]`); a
/// trailing `*` any suffix.
pub const CONDITION_KEYS: [&str; 15] = [
    "request.headers[]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.trustDomain",
    "source.serviceAccount",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[]",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "experimental.envoy.filters.*",
];

/// What the values of a `when` key must look like.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ConditionValues {
    Any,
    Ips,
    Ports,
}

/// The kind of values `key` takes; `None` when the key is not documented.
fn condition_values(key: &str) -> Option<ConditionValues> {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix).is_some_and(|rest| {
            rest.len() > 2
                && rest.starts_with('[')
                && rest.ends_with(']')
                && !rest[1..rest.len() - 1].is_empty()
        })
    };
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => Some(ConditionValues::Ips),
        "destination.port" => Some(ConditionValues::Ports),
        "source.namespace"
        | "source.principal"
        | "source.trustDomain"
        | "source.serviceAccount"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Some(ConditionValues::Any),
        _ if bracketed("request.headers") || bracketed("request.auth.claims") => {
            Some(ConditionValues::Any)
        }
        _ if key
            .strip_prefix("experimental.envoy.filters.")
            .is_some_and(|rest| !rest.is_empty()) =>
        {
            Some(ConditionValues::Any)
        }
        _ => None,
    }
}

impl KindSpec for AuthorizationPolicy {
    const KIND: &'static str = "AuthorizationPolicy";
    const GROUP: Group = Group::Security;
}

impl AuthorizationPolicy {
    /// The action, `ALLOW` when unset as in Istio.
    pub fn action(&self) -> AuthorizationAction {
        self.action.unwrap_or_default()
    }
}

impl Validate for AuthorizationPolicy {
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.selector.warn_at(&format!("{path}.selector"), warnings);
        if self.action == Some(AuthorizationAction::Deny) {
            for (i, rule) in self.rules.iter().enumerate() {
                // Istio: a DENY rule with only HTTP attributes denies every
                // TCP connection in its scope, where they cannot be read.
                let tcp_from = rule.from.iter().filter_map(|f| f.source.as_ref()).any(|s| {
                    !(s.principals.is_empty()
                        && s.not_principals.is_empty()
                        && s.ip_blocks.is_empty()
                        && s.not_ip_blocks.is_empty()
                        && s.namespaces.is_empty()
                        && s.not_namespaces.is_empty()
                        && s.remote_ip_blocks.is_empty()
                        && s.not_remote_ip_blocks.is_empty()
                        && s.service_accounts.is_empty()
                        && s.not_service_accounts.is_empty())
                });
                let operations: Vec<&Operation> = rule
                    .to
                    .iter()
                    .filter_map(|t| t.operation.as_ref())
                    .collect();
                let tcp_to = operations
                    .iter()
                    .any(|o| !o.ports.is_empty() || !o.not_ports.is_empty());
                let has_from = rule.from.iter().any(|f| f.source.is_some());
                let has_to = !operations.is_empty();
                if (has_from && !has_to && !tcp_from) || (has_to && !tcp_to) {
                    push(
                        warnings,
                        &format!("{path}.rules[{i}]"),
                        "this DENY rule uses only HTTP attributes, so it denies all TCP traffic in its scope; name the ports it is for",
                    );
                }
            }
        }
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_policy_target(
            errors,
            path,
            &self.selector,
            &self.target_ref,
            &self.target_refs,
        );
        let action = self.action();
        let rules_path = format!("{path}.rules");
        let provider_path = format!("{path}.provider");
        match action {
            AuthorizationAction::Custom => {
                match &self.provider {
                    None => push(errors, &provider_path, "required with action CUSTOM"),
                    Some(p) if p.name.is_empty() => push(
                        errors,
                        &format!("{provider_path}.name"),
                        "the provider's name is required",
                    ),
                    Some(_) => {}
                }
                for (i, rule) in self.rules.iter().enumerate() {
                    rule.check_custom(&format!("{rules_path}[{i}]"), errors);
                }
            }
            _ if self.provider.is_some() => push(
                errors,
                &provider_path,
                "`provider` is only used with action CUSTOM",
            ),
            _ => {}
        }
        if matches!(
            action,
            AuthorizationAction::Deny | AuthorizationAction::Custom
        ) && self.rules.is_empty()
        {
            push(
                errors,
                &rules_path,
                "a DENY or CUSTOM policy without rules never applies; add an empty rule `{}` to apply it to every request",
            );
        }
        self.rules.validate_at(&rules_path, errors);
    }
}

impl AuthorizationRule {
    /// What the CUSTOM action cannot match on (Istio's restriction).
    fn check_custom(&self, path: &str, errors: &mut Vec<FieldError>) {
        let reason = "is not supported with action CUSTOM";
        for (j, from) in self.from.iter().enumerate() {
            let Some(source) = &from.source else {
                continue;
            };
            for (field, values) in [
                ("principals", &source.principals),
                ("notPrincipals", &source.not_principals),
                ("requestPrincipals", &source.request_principals),
                ("notRequestPrincipals", &source.not_request_principals),
                ("namespaces", &source.namespaces),
                ("notNamespaces", &source.not_namespaces),
                ("serviceAccounts", &source.service_accounts),
                ("notServiceAccounts", &source.not_service_accounts),
                ("trustDomains", &source.trust_domains),
                ("notTrustDomains", &source.not_trust_domains),
            ] {
                if !values.is_empty() {
                    push(errors, &format!("{path}.from[{j}].source.{field}"), reason);
                }
            }
        }
        for (k, condition) in self.when.iter().enumerate() {
            let key = condition.key.as_str();
            if matches!(
                key,
                "source.namespace"
                    | "source.principal"
                    | "source.trustDomain"
                    | "source.serviceAccount"
            ) || key.starts_with("request.auth.")
            {
                push(
                    errors,
                    &format!("{path}.when[{k}].key"),
                    format!("`{key}` {reason}"),
                );
            }
        }
    }
}

impl Validate for AuthorizationRule {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        for (j, from) in self.from.iter().enumerate() {
            let at = format!("{path}.from[{j}].source");
            match &from.source {
                Some(source) => source.validate_at(&at, errors),
                None => push(errors, &at, "source is required"),
            }
        }
        for (j, to) in self.to.iter().enumerate() {
            let at = format!("{path}.to[{j}].operation");
            match &to.operation {
                Some(operation) => operation.validate_at(&at, errors),
                None => push(errors, &at, "operation is required"),
            }
        }
        self.when.validate_at(&format!("{path}.when"), errors);
    }
}

impl Validate for Source {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let named = [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
            ("trustDomains", &self.trust_domains),
            ("notTrustDomains", &self.not_trust_domains),
        ];
        let addresses = [
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ];
        if named.iter().chain(&addresses).all(|(_, v)| v.is_empty()) {
            push(
                errors,
                path,
                "an empty source matches nothing; set at least one field or remove it",
            );
        }
        let accounts = !self.service_accounts.is_empty() || !self.not_service_accounts.is_empty();
        let identities = !self.principals.is_empty()
            || !self.not_principals.is_empty()
            || !self.namespaces.is_empty()
            || !self.not_namespaces.is_empty();
        if accounts && identities {
            push(
                errors,
                path,
                "`serviceAccounts` cannot be combined with `principals` or `namespaces`",
            );
        }
        for (field, values) in named {
            check_no_empty(errors, &format!("{path}.{field}"), values);
        }
        for (field, values) in [
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
        ] {
            check_service_accounts(errors, &format!("{path}.{field}"), values);
        }
        for (field, values) in [
            ("trustDomains", &self.trust_domains),
            ("notTrustDomains", &self.not_trust_domains),
        ] {
            for (k, value) in values.iter().enumerate() {
                check_trust_domain(errors, &format!("{path}.{field}[{k}]"), value);
            }
        }
        for (field, values) in addresses {
            for (k, value) in values.iter().enumerate() {
                check_ip_or_cidr(errors, &format!("{path}.{field}[{k}]"), value);
            }
        }
    }
}

/// `serviceAccounts`: `name` or `namespace/name`, no wildcards, at most
/// 16 (Istio's limits).
fn check_service_accounts(errors: &mut Vec<FieldError>, path: &str, values: &[String]) {
    if values.len() > 16 {
        push(
            errors,
            path,
            format!("at most 16 service accounts, found {}", values.len()),
        );
    }
    for (k, value) in values.iter().enumerate() {
        let at = format!("{path}[{k}]");
        let reason = if value.contains('*') {
            Some("wildcards are not allowed in service accounts".to_string())
        } else if value.len() > 320 {
            Some("a service account is at most 320 characters".to_string())
        } else {
            match value.split_once('/') {
                Some((ns, sa)) if ns.is_empty() || sa.is_empty() || sa.contains('/') => Some(
                    format!("`{value}` is not `serviceAccount` or `namespace/serviceAccount`"),
                ),
                _ => None,
            }
        };
        if let Some(reason) = reason {
            push(errors, &at, reason);
        }
    }
}

/// A trust domain value: at most one `*`, at the start or the end, and
/// no `/`.
fn check_trust_domain(errors: &mut Vec<FieldError>, path: &str, value: &str) {
    let stars = value.matches('*').count();
    if stars > 1 || (stars == 1 && value != "*" && !value.starts_with('*') && !value.ends_with('*'))
    {
        push(
            errors,
            path,
            format!("`{value}`: a wildcard is allowed once, at the start or the end"),
        );
    }
    if value.contains('/') {
        push(
            errors,
            path,
            format!("trust domain `{value}` must not contain `/`"),
        );
    }
}

impl Validate for Operation {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let fields = [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("ports", &self.ports),
            ("notPorts", &self.not_ports),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ];
        if fields.iter().all(|(_, v)| v.is_empty()) {
            push(
                errors,
                path,
                "an empty operation matches nothing; set at least one field or remove it",
            );
        }
        for (field, values) in fields {
            let at = format!("{path}.{field}");
            if matches!(field, "ports" | "notPorts") {
                check_port_strings(errors, &at, values);
            } else {
                check_no_empty(errors, &at, values);
            }
        }
    }
}

impl Validate for Condition {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let key_path = format!("{path}.key");
        if self.key.is_empty() {
            push(errors, &key_path, "key is required");
            return;
        }
        if self.values.is_empty() && self.not_values.is_empty() {
            push(
                errors,
                path,
                "at least one of `values` and `notValues` is required",
            );
        }
        let Some(kind) = condition_values(&self.key) else {
            let known: Vec<String> = CONDITION_KEYS
                .iter()
                .map(|k| format!("`{}`", k.replace("[]", "[NAME]")))
                .collect();
            push(
                errors,
                &key_path,
                format!(
                    "unknown key `{}`; supported: {}",
                    self.key,
                    known.join(", ")
                ),
            );
            return;
        };
        for (field, values) in [("values", &self.values), ("notValues", &self.not_values)] {
            let at = format!("{path}.{field}");
            match kind {
                ConditionValues::Any => check_no_empty(errors, &at, values),
                ConditionValues::Ports => check_port_strings(errors, &at, values),
                ConditionValues::Ips => {
                    for (m, value) in values.iter().enumerate() {
                        check_ip_or_cidr(errors, &format!("{at}[{m}]"), value);
                    }
                }
            }
        }
    }
}

/// Ports written as strings (`"8080"`), each 1..=65535.
fn check_port_strings(errors: &mut Vec<FieldError>, path: &str, ports: &[String]) {
    for (i, port) in ports.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match port.parse::<u32>() {
            Ok(number) => check_port(errors, &at, number),
            Err(_) => push(errors, &at, format!("`{port}` is not a port number")),
        }
    }
}
