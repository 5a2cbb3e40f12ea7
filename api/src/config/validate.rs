//! The [`Validate`] trait and the small checks the kinds share. Every check
//! is a pure function that appends a [`FieldError`] naming the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Duration, FieldError, UNIX_ADDRESS_PREFIX};

/// Semantic checks on parsed config. `path` is where `self` sits in the
/// document (e.g. `spec.http[0]`); problems are appended to `errors` so that
/// one pass reports all of them.
pub trait Validate {
    /// Appends one [`FieldError`] per problem found in `self`.
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>);

    /// Appends what is accepted but worth a warning, where Istio's
    /// validation warns instead of refusing. None by default.
    fn warn_at(&self, _path: &str, _warnings: &mut Vec<FieldError>) {}
}

impl<T: Validate> Validate for Option<T> {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(value) = self {
            value.validate_at(path, errors);
        }
    }

    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        if let Some(value) = self {
            value.warn_at(path, warnings);
        }
    }
}

impl<T: Validate> Validate for [T] {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        for (i, value) in self.iter().enumerate() {
            value.validate_at(&format!("{path}[{i}]"), errors);
        }
    }

    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        for (i, value) in self.iter().enumerate() {
            value.warn_at(&format!("{path}[{i}]"), warnings);
        }
    }
}

/// Appends an error at `path`.
pub(crate) fn push(errors: &mut Vec<FieldError>, path: &str, reason: impl Into<String>) {
    errors.push(FieldError::new(path, reason));
}

/// Names the set fields of a protobuf `oneof` when more than one is set, or
/// none is and `required`. Returns the reason to report.
pub(crate) fn one_of(fields: &[(&str, bool)], required: bool) -> Option<String> {
    let set: Vec<String> = fields
        .iter()
        .filter(|(_, is_set)| *is_set)
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    let all: Vec<String> = fields.iter().map(|(name, _)| format!("`{name}`")).collect();
    let all = all.join(", ");
    match set.len() {
        0 if required => Some(format!("exactly one of {all} must be set")),
        0 | 1 => None,
        _ => Some(format!(
            "only one of {all} may be set, found {}",
            set.join(" and ")
        )),
    }
}

/// Reports a `oneof` violation (see [`one_of`]) at `path`.
pub(crate) fn check_one_of(
    errors: &mut Vec<FieldError>,
    path: &str,
    fields: &[(&str, bool)],
    required: bool,
) {
    if let Some(reason) = one_of(fields, required) {
        push(errors, path, reason);
    }
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting
/// and ending with a letter or digit (Kubernetes namespaces, subset names,
/// port names).
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: at most 253 characters of dot-separated labels
/// (Kubernetes object names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

pub(crate) fn check_port(errors: &mut Vec<FieldError>, path: &str, port: u32) {
    if !(1..=65535).contains(&port) {
        push(
            errors,
            path,
            format!("port {port} is out of range 1..=65535"),
        );
    }
}

/// Named ports (ServiceEntry ports, WorkloadEntry ports): DNS-1123 labels.
pub(crate) fn check_port_name(errors: &mut Vec<FieldError>, path: &str, name: &str) {
    if !is_dns1123_label(name) {
        push(
            errors,
            path,
            format!("port name `{name}` must be a DNS-1123 label such as `http-web`"),
        );
    }
}

pub(crate) fn check_percent(errors: &mut Vec<FieldError>, path: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        push(errors, path, format!("{value} is out of range 0..=100"));
    }
}

/// A service host as Istio accepts it: a name such as `reviews`,
/// `reviews.prod.svc.cluster.local` or an IP, optionally with a leading
/// `*.` wildcard, or `*` alone.
pub(crate) fn check_host(errors: &mut Vec<FieldError>, path: &str, host: &str) {
    let reason = if host.is_empty() {
        Some("host must not be empty".to_string())
    } else if host.chars().any(|c| c.is_whitespace() || c == '/') {
        Some(format!("host `{host}` must not contain whitespace or `/`"))
    } else if host != "*" && host.strip_prefix("*.").unwrap_or(host).contains('*') {
        Some(format!(
            "host `{host}`: a wildcard is only allowed as `*` or a leading `*.`"
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        push(errors, path, reason);
    }
}

pub(crate) fn check_hosts(errors: &mut Vec<FieldError>, path: &str, hosts: &[String]) {
    if hosts.is_empty() {
        push(errors, path, "at least one host is required");
    }
    for (i, host) in hosts.iter().enumerate() {
        check_host(errors, &format!("{path}[{i}]"), host);
    }
}

/// `exportTo`: `.` (this namespace), `*` (all), `~` (none) or namespace names.
pub(crate) fn check_export_to(errors: &mut Vec<FieldError>, path: &str, export_to: &[String]) {
    for (i, ns) in export_to.iter().enumerate() {
        if !matches!(ns.as_str(), "." | "*" | "~") && !is_dns1123_label(ns) {
            push(
                errors,
                &format!("{path}[{i}]"),
                format!("`{ns}` is not `.`, `*`, `~` or a namespace name"),
            );
        }
    }
    if export_to.len() > 1 && export_to.iter().any(|ns| ns == "~") {
        push(
            errors,
            path,
            "`~` (export nowhere) cannot be combined with other values",
        );
    }
}

/// A DNS name with an optional wildcard as the whole leftmost label:
/// `reviews.prod.svc.cluster.local`, `*.example.com` or `*` alone (the
/// `dnsName` of Gateway and Sidecar hosts).
pub(crate) fn check_wildcard_dns_name(errors: &mut Vec<FieldError>, path: &str, name: &str) {
    let labels = name.strip_prefix("*.").unwrap_or(name);
    let valid = name == "*"
        || (name.len() <= 255
            && labels.split('.').all(|label| {
                let bytes = label.as_bytes();
                !bytes.is_empty()
                    && bytes.len() <= 63
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                    && bytes[0] != b'-'
                    && bytes[bytes.len() - 1] != b'-'
            }));
    if !valid {
        push(
            errors,
            path,
            format!(
                "`{name}` is not a DNS name; write it like `reviews.prod.svc.cluster.local`, `*.example.com` or `*`"
            ),
        );
    }
}

/// Istio's rule for the DNS part of Gateway and Sidecar hosts: a short
/// name (no dot) is refused, since it would mean different services in
/// different namespaces.
fn check_not_short_name(errors: &mut Vec<FieldError>, path: &str, dns_name: &str) {
    if dns_name != "*" && !dns_name.is_empty() && !dns_name.contains('.') {
        push(
            errors,
            path,
            format!("short name `{dns_name}` is not allowed here; write the full name, e.g. `{dns_name}.NAMESPACE.svc.cluster.local`, or `*`"),
        );
    }
}

/// Which namespaces a `namespace/dnsName` host may name besides real ones.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostNamespaces {
    /// Gateway servers: `*` (any) and `.` (the gateway's own); the
    /// `namespace/` part may be left out, meaning `*/`.
    Gateway,
    /// Sidecar egress: `*`, `.` and `~` (none); the `namespace/` part is
    /// required.
    Sidecar,
}

/// A host written `namespace/dnsName` (Gateway servers, Sidecar egress).
pub(crate) fn check_namespaced_host(
    errors: &mut Vec<FieldError>,
    path: &str,
    host: &str,
    kind: HostNamespaces,
) {
    let Some((namespace, dns_name)) = host.split_once('/') else {
        match kind {
            HostNamespaces::Gateway => {
                check_wildcard_dns_name(errors, path, host);
                check_not_short_name(errors, path, host);
            }
            HostNamespaces::Sidecar => push(
                errors,
                path,
                format!("host `{host}` must be written `namespace/dnsName`, e.g. `./*` or `istio-system/*`"),
            ),
        }
        return;
    };
    let special: &[&str] = match kind {
        HostNamespaces::Gateway => &["*", "."],
        HostNamespaces::Sidecar => &["*", ".", "~"],
    };
    if !special.contains(&namespace) && !is_dns1123_label(namespace) {
        let allowed = special
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        push(
            errors,
            path,
            format!(
                "namespace `{namespace}` in host `{host}` is not {allowed} or a namespace name"
            ),
        );
    }
    check_wildcard_dns_name(errors, path, dns_name);
    check_not_short_name(errors, path, dns_name);
}

/// The path after `unix://` in a bind or endpoint address: absolute and
/// naming a file, or `@name` for a Linux abstract socket.
pub(crate) fn check_unix_path(errors: &mut Vec<FieldError>, path: &str, address: &str) {
    let socket = address.strip_prefix(UNIX_ADDRESS_PREFIX).unwrap_or(address);
    let valid = (socket.starts_with('@') && socket.len() > 1)
        || (socket.starts_with('/') && !socket.ends_with('/'));
    if !valid {
        push(
            errors,
            path,
            format!(
                "`{address}` is not a unix socket address; write it like `unix:///var/run/app.sock` or `unix://@name`"
            ),
        );
    }
}

/// A DNS name: dot-separated labels of letters, digits and `-`, with an
/// optional leading `*.`.
pub(crate) fn is_fqdn(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// An IP address (no port, no prefix length).
pub(crate) fn check_ip(errors: &mut Vec<FieldError>, path: &str, value: &str) {
    if value.parse::<IpAddr>().is_err() {
        push(errors, path, format!("`{value}` is not an IP address"));
    }
}

/// Strings in a list that must not be empty (AuthorizationPolicy values,
/// JWT audiences, ...).
pub(crate) fn check_no_empty(errors: &mut Vec<FieldError>, path: &str, values: &[String]) {
    for (i, value) in values.iter().enumerate() {
        if value.is_empty() {
            push(errors, &format!("{path}[{i}]"), "must not be empty");
        }
    }
}

/// Label keys and values of a workload selector or subset.
pub(crate) fn check_labels(
    errors: &mut Vec<FieldError>,
    path: &str,
    labels: &BTreeMap<String, String>,
) {
    for (key, value) in labels {
        if key.is_empty() {
            push(errors, path, "label keys must not be empty");
        } else if key.contains('*') || value.contains('*') {
            push(
                errors,
                &format!("{path}.{key}"),
                "wildcards are not supported in labels",
            );
        }
    }
}

/// An IP address or a CIDR block such as `10.0.0.0/8` or `2001:db8::/32`.
pub(crate) fn check_ip_or_cidr(errors: &mut Vec<FieldError>, path: &str, value: &str) {
    let (ip, prefix) = match value.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (value, None),
    };
    let valid = match (ip.parse::<IpAddr>(), prefix) {
        (Ok(_), None) => true,
        (Ok(ip), Some(prefix)) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            prefix.parse::<u8>().is_ok_and(|p| p <= max)
        }
        (Err(_), _) => false,
    };
    if !valid {
        push(
            errors,
            path,
            format!("`{value}` is not an IP address or CIDR block"),
        );
    }
}

/// Header names in matches and header operations: an HTTP token, with a
/// leading `:` allowed for HTTP/2 pseudo-headers.
pub(crate) fn check_header_name(errors: &mut Vec<FieldError>, path: &str, name: &str) {
    let token = name.strip_prefix(':').unwrap_or(name);
    let valid = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        push(errors, path, format!("`{name}` is not a valid header name"));
    }
}

/// Timeouts and intervals, as Istio's `ValidateDuration` takes them: at
/// least 1ms (Envoy rejects or misbehaves with less), in whole
/// milliseconds.
pub(crate) fn check_min_duration(errors: &mut Vec<FieldError>, path: &str, value: Duration) {
    let d = value.as_std();
    if d < std::time::Duration::from_millis(1) {
        push(errors, path, format!("{value} is shorter than 1ms"));
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        push(
            errors,
            path,
            format!("{value}: only whole milliseconds are supported"),
        );
    }
}

pub(crate) fn check_non_negative(errors: &mut Vec<FieldError>, path: &str, value: Option<i32>) {
    if let Some(value) = value.filter(|v| *v < 0) {
        push(errors, path, format!("{value} must not be negative"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for (s, ok) in [
            ("v1", true),
            ("a-b", true),
            ("", false),
            ("-a", false),
            ("a-", false),
            ("V1", false),
            ("a.b", false),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(is_dns1123_label(s), ok, "{s:?}");
        }
        assert!(is_dns1123_subdomain("reviews.prod"));
        assert!(!is_dns1123_subdomain("reviews..prod"));
    }

    #[test]
    fn ip_or_cidr() {
        for (s, ok) in [
            ("10.0.0.1", true),
            ("10.0.0.0/8", true),
            ("2001:db8::/32", true),
            ("10.0.0.0/33", false),
            ("10.0.0/8", false),
            ("example.com", false),
        ] {
            let mut errors = Vec::new();
            check_ip_or_cidr(&mut errors, "p", s);
            assert_eq!(errors.is_empty(), ok, "{s:?}: {errors:?}");
        }
    }

    #[test]
    fn hosts() {
        for (s, ok) in [
            ("reviews", true),
            ("*.example.com", true),
            ("*", true),
            ("", false),
            ("a*.example.com", false),
            ("*.*.example.com", false),
            ("a b", false),
        ] {
            let mut errors = Vec::new();
            check_host(&mut errors, "p", s);
            assert_eq!(errors.is_empty(), ok, "{s:?}: {errors:?}");
        }
    }

    #[test]
    fn namespaced_hosts() {
        use HostNamespaces::{Gateway, Sidecar};
        for (host, kind, ok) in [
            ("*/*", Sidecar, true),
            ("./*", Sidecar, true),
            ("~/*", Sidecar, true),
            ("istio-system/*", Sidecar, true),
            ("prod/*.example.com", Sidecar, true),
            ("*/mysql.foo.com", Sidecar, true),
            ("foo.com", Sidecar, false),
            ("Prod/*", Sidecar, false),
            ("prod/a*.example.com", Sidecar, false),
            ("prod/", Sidecar, false),
            ("/a.com", Sidecar, false),
            ("uk.bookinfo.com", Gateway, true),
            ("*", Gateway, true),
            ("ns1/*", Gateway, true),
            ("bookinfo-namespace/*.bookinfo.com", Gateway, true),
            ("~/*", Gateway, false),
            ("a b.com", Gateway, false),
            ("shorthost", Gateway, false),
            ("ns1/shorthost", Gateway, false),
            ("prod/mysql", Sidecar, false),
            ("*.*.com", Gateway, false),
        ] {
            let mut errors = Vec::new();
            check_namespaced_host(&mut errors, "p", host, kind);
            assert_eq!(errors.is_empty(), ok, "{host:?}: {errors:?}");
        }
    }

    #[test]
    fn unix_paths() {
        for (s, ok) in [
            ("unix:///var/run/a.sock", true),
            ("unix://@abstract", true),
            ("unix://", false),
            ("unix://@", false),
            ("unix://relative.sock", false),
            ("unix:///var/run/", false),
        ] {
            let mut errors = Vec::new();
            check_unix_path(&mut errors, "p", s);
            assert_eq!(errors.is_empty(), ok, "{s:?}: {errors:?}");
        }
    }

    #[test]
    fn one_of_reasons() {
        assert_eq!(one_of(&[("a", true), ("b", false)], true), None);
        assert_eq!(
            one_of(&[("a", false), ("b", false)], true).as_deref(),
            Some("exactly one of `a`, `b` must be set")
        );
        assert_eq!(one_of(&[("a", false), ("b", false)], false), None);
        assert_eq!(
            one_of(&[("a", true), ("b", true)], false).as_deref(),
            Some("only one of `a`, `b` may be set, found `a` and `b`")
        );
    }
}
