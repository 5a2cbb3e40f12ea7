//! Host names as Istio resolves them: short names expanded the way
//! Kubernetes DNS would ([`canonical_host`]) and `*.` wildcards
//! ([`host_matches`]). Shared by the control plane (scoping, analysis) and
//! the agent (routing), so both read a name alike.

/// `name` as Kubernetes DNS would expand it from `namespace`, unless
/// `known` already knows it: `reviews` and `reviews.default` become
/// `reviews.default.svc.DOMAIN`; names with two or more dots stay.
pub fn canonical_host(
    name: &str,
    namespace: &str,
    domain: &str,
    known: impl Fn(&str) -> bool,
) -> String {
    if known(name) {
        return name.to_string();
    }
    match name.matches('.').count() {
        0 => format!("{name}.{namespace}.svc.{domain}"),
        1 => format!("{name}.svc.{domain}"),
        _ => name.to_string(),
    }
}

/// Whether `pattern` (a host, `*`, or `*.suffix`) covers `host`. A
/// wildcard host on the right is covered by a pattern at least as wide
/// (`*.example.com` covers `*.a.example.com`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            let host = host.strip_prefix('*').unwrap_or(host);
            host.len() > suffix.len()
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                || host.eq_ignore_ascii_case(suffix)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_from_the_namespace() {
        let none = |_: &str| false;
        for (name, want) in [
            ("reviews", "reviews.default.svc.cluster.local"),
            ("reviews.prod", "reviews.prod.svc.cluster.local"),
            (
                "reviews.prod.svc.cluster.local",
                "reviews.prod.svc.cluster.local",
            ),
            ("api.example.com", "api.example.com"),
        ] {
            assert_eq!(canonical_host(name, "default", "cluster.local", none), want);
        }
        assert_eq!(
            canonical_host("db.local", "default", "cluster.local", |h| h == "db.local"),
            "db.local"
        );
    }

    #[test]
    fn wildcards() {
        for (pattern, host, want) in [
            ("*", "anything.example", true),
            ("*.example.com", "api.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "*.a.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.a.example.com", "*.example.com", false),
            ("API.example.com", "api.EXAMPLE.com", true),
            ("api.example.com", "*.example.com", false),
        ] {
            assert_eq!(host_matches(pattern, host), want, "{pattern} {host}");
        }
    }
}
