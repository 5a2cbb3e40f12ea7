//! HTTP routes of a `VirtualService`: matches, weighted destinations and
//! the per-route policies (rewrite, timeout, retries, faults, mirroring,
//! CORS, header changes). Redirects and direct responses are in
//! [`super::http_response`], retries, faults and CORS in
//! [`super::http_policy`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::{
    check_header_name, check_labels, check_min_duration, check_one_of, check_port,
    is_dns1123_label, push, Validate,
};
use super::virtual_service::check_weights;
use super::{
    CorsPolicy, Destination, Duration, FieldError, HeaderMatch, HttpDirectResponse,
    HttpFaultInjection, HttpRedirect, HttpRetry, Percent, Regex, StringMatch,
};

/// One HTTP rule: when a request fits one of `match`, it is routed,
/// redirected or answered directly, with the rule's policies applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    /// Name for logs and stats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, any of which selects this rule; empty matches all.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations. Exactly one of `route`, `redirect` and
    /// `directResponse` is set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    /// Answer with a fixed response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<HttpDirectResponse>,
    /// Rewrite the path or authority before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    /// Overall timeout of the request, retries included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    /// Fault injection (delays, aborts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination too (responses ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// Share of traffic mirrored to `mirror`; 100 when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percent>,
    /// Several mirrors, each with its own share; not with `mirror`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Cross-origin resource sharing policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Header changes on requests and responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

impl Validate for HttpRoute {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let routed = !self.route.is_empty();
        check_one_of(
            errors,
            path,
            &[
                ("route", routed),
                ("redirect", self.redirect.is_some()),
                ("directResponse", self.direct_response.is_some()),
            ],
            true,
        );
        if self.fault.is_some() && (self.redirect.is_some() || self.direct_response.is_some()) {
            push(
                errors,
                &format!("{path}.fault"),
                "`fault` needs `route`: it cannot be used with `redirect` or `directResponse`",
            );
        }
        if let Some(timeout) = self.timeout {
            check_min_duration(errors, &format!("{path}.timeout"), timeout);
        }
        if self.rewrite.is_some() && !routed {
            push(
                errors,
                &format!("{path}.rewrite"),
                "`rewrite` needs `route`",
            );
        }
        check_one_of(
            errors,
            path,
            &[
                ("mirror", self.mirror.is_some()),
                ("mirrors", !self.mirrors.is_empty()),
            ],
            false,
        );
        if self.mirror_percentage.is_some() && self.mirror.is_none() {
            push(
                errors,
                &format!("{path}.mirrorPercentage"),
                "`mirrorPercentage` needs `mirror`",
            );
        }
        self.matches.validate_at(&format!("{path}.match"), errors);
        if routed {
            let route_path = format!("{path}.route");
            self.route.validate_at(&route_path, errors);
            let weights: Vec<Option<i32>> = self.route.iter().map(|r| r.weight).collect();
            check_weights(errors, &route_path, &weights);
        }
        self.redirect
            .validate_at(&format!("{path}.redirect"), errors);
        self.direct_response
            .validate_at(&format!("{path}.directResponse"), errors);
        self.rewrite.validate_at(&format!("{path}.rewrite"), errors);
        self.retries.validate_at(&format!("{path}.retries"), errors);
        self.fault.validate_at(&format!("{path}.fault"), errors);
        self.mirror.validate_at(&format!("{path}.mirror"), errors);
        self.mirror_percentage
            .validate_at(&format!("{path}.mirrorPercentage"), errors);
        self.mirrors.validate_at(&format!("{path}.mirrors"), errors);
        self.cors_policy
            .validate_at(&format!("{path}.corsPolicy"), errors);
        self.headers.validate_at(&format!("{path}.headers"), errors);
    }
}

/// Request attributes an HTTP rule can match on; all given ones must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    /// Name for logs and stats, joined to the route's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The URI scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// The HTTP method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// The `:authority` / `Host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Headers by lowercase name; `{}` checks presence.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, HeaderMatch>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Labels of the client workload.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// Query parameters by name; `{}` checks presence. No `prefix`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, HeaderMatch>,
    /// Match `uri` case-insensitively.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
    /// Headers that must not match (or, with `{}`, must be absent).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, HeaderMatch>,
    /// Namespace of the client workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Stat prefix for the route matched by this match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
}

impl Validate for HttpMatchRequest {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(ns) = self.source_namespace.as_deref() {
            if !is_dns1123_label(ns) {
                push(
                    errors,
                    &format!("{path}.sourceNamespace"),
                    format!("`{ns}` is not a namespace name (a DNS-1123 label)"),
                );
            }
        }
        for (field, headers) in [
            ("headers", &self.headers),
            ("withoutHeaders", &self.without_headers),
        ] {
            for name in headers.keys() {
                check_header_name(errors, &format!("{path}.{field}.{name}"), name);
            }
        }
        for (name, m) in &self.query_params {
            let at = format!("{path}.queryParams.{name}");
            if name.is_empty() {
                push(errors, &at, "query parameter name must not be empty");
            }
            if let Some(StringMatch::Prefix(_)) = m.string_match() {
                push(
                    errors,
                    &at,
                    "`prefix` is not supported for query parameters",
                );
            }
        }
        if let Some(port) = self.port {
            check_port(errors, &format!("{path}.port"), port);
        }
        check_labels(errors, &format!("{path}.sourceLabels"), &self.source_labels);
    }
}

/// A weighted destination of an HTTP rule, with its own header changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Share of requests, 0..=100; required when the rule has more than
    /// one destination, and then they sum to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
    /// Header changes for requests sent to this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

impl Validate for HttpRouteDestination {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.destination
            .validate_at(&format!("{path}.destination"), errors);
        self.headers.validate_at(&format!("{path}.headers"), errors);
    }
}

/// Rewrites applied before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    /// Replaces the part of the path matched by the `uri` match (the whole
    /// path for an exact match, the prefix for a prefix match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the `:authority` / `Host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Rewrites the path with a regex; not with `uri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

impl Validate for HttpRewrite {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("uri", self.uri.is_some()),
                ("uriRegexRewrite", self.uri_regex_rewrite.is_some()),
            ],
            false,
        );
        if self.uri.is_none() && self.authority.is_none() && self.uri_regex_rewrite.is_none() {
            push(
                errors,
                path,
                "a rewrite needs `uri`, `authority` or `uriRegexRewrite`",
            );
        }
    }
}

/// Replaces every match of `match` in the path with `rewrite`, which may
/// refer to groups as `\1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegexRewrite {
    /// The pattern, matched anywhere in the path.
    #[serde(rename = "match")]
    pub pattern: Regex,
    /// The replacement.
    pub rewrite: String,
}

/// One of several mirrors of an HTTP rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    /// Where to send the copies.
    pub destination: Destination,
    /// Share of traffic mirrored; 100 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

impl Validate for HttpMirrorPolicy {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.destination
            .validate_at(&format!("{path}.destination"), errors);
        self.percentage
            .validate_at(&format!("{path}.percentage"), errors);
    }
}

/// Header changes for requests (to the destination) and responses (to the
/// client).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Headers {
    /// Changes to the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Changes to the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

impl Validate for Headers {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.request.validate_at(&format!("{path}.request"), errors);
        self.response
            .validate_at(&format!("{path}.response"), errors);
    }
}

/// Header changes, applied in the order remove, set, add.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderOperations {
    /// Replace these headers' values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl Validate for HeaderOperations {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        for (field, map) in [("set", &self.set), ("add", &self.add)] {
            for name in map.keys() {
                check_header_name(errors, &format!("{path}.{field}.{name}"), name);
            }
        }
        for (i, name) in self.remove.iter().enumerate() {
            check_header_name(errors, &format!("{path}.remove[{i}]"), name);
        }
    }
}
