//! `RequestAuthentication`: which JWTs a workload accepts, where to find
//! them and how to check them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::target_ref::check_policy_target;
use super::validate::{
    check_header_name, check_min_duration, check_no_empty, check_one_of, push, Validate,
};
use super::{Duration, FieldError, PolicyTargetReference, WorkloadSelector};

/// `security.istio.io` `RequestAuthentication`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RequestAuthentication {
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
    /// The JWTs accepted; a request with a token that fits none of them is
    /// refused, one without a token is let through unauthenticated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// Istio's `JWTRule`: one issuer's tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct JwtRule {
    /// The `iss` claim tokens must carry. Required.
    pub issuer: String,
    /// Accepted `aud` claims; the service's name when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// http(s) URL of the issuer's key set; found by OpenID discovery
    /// when neither this nor `jwks` is set.
    #[serde(alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The key set itself, as JSON; not with `jwksUri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers the token may be in; `Authorization: Bearer` and the
    /// `access_token` query parameter when none of the `from*` are set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may be in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies the token may be in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Header to pass the verified payload (base64 JSON) upstream in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Keep the token in the request sent upstream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    /// Claims to copy into request headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long fetching `jwksUri` may take; 5s when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A header a token is read from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JwtHeader {
    /// Header name. Required.
    pub name: String,
    /// Prefix stripped before the token, e.g. `"Bearer "`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A claim copied into a request header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClaimToHeader {
    /// Header to set (replacing any); letters, digits, `-` and `_`, unique
    /// in the rule. Required.
    pub header: String,
    /// Claim to copy (string, number or bool; `a.b` for nested). Required.
    pub claim: String,
}

impl KindSpec for RequestAuthentication {
    const KIND: &'static str = "RequestAuthentication";
    const GROUP: Group = Group::Security;
}

impl Validate for RequestAuthentication {
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.selector.warn_at(&format!("{path}.selector"), warnings);
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_policy_target(
            errors,
            path,
            &self.selector,
            &self.target_ref,
            &self.target_refs,
        );
        self.jwt_rules
            .validate_at(&format!("{path}.jwtRules"), errors);
    }
}

impl Validate for JwtRule {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let field = |name: &str| format!("{path}.{name}");
        if self.issuer.is_empty() {
            push(errors, &field("issuer"), "issuer is required");
        }
        check_no_empty(errors, &field("audiences"), &self.audiences);
        check_one_of(
            errors,
            path,
            &[
                ("jwksUri", self.jwks_uri.is_some()),
                ("jwks", self.jwks.is_some()),
            ],
            false,
        );
        if let Some(uri) = &self.jwks_uri {
            check_http_url(errors, &field("jwksUri"), uri);
        }
        if let Some(jwks) = &self.jwks {
            check_jwks(errors, &field("jwks"), jwks);
        }
        for (i, header) in self.from_headers.iter().enumerate() {
            let at = format!("{path}.fromHeaders[{i}].name");
            if header.name.is_empty() {
                push(errors, &at, "header name is required");
            } else {
                check_header_name(errors, &at, &header.name);
            }
        }
        check_no_empty(errors, &field("fromParams"), &self.from_params);
        check_no_empty(errors, &field("fromCookies"), &self.from_cookies);
        if let Some(header) = &self.output_payload_to_header {
            check_header_name(errors, &field("outputPayloadToHeader"), header);
        }
        let mut headers = BTreeSet::new();
        for (i, output) in self.output_claim_to_headers.iter().enumerate() {
            let at = format!("{path}.outputClaimToHeaders[{i}]");
            if output.claim.is_empty() {
                push(errors, &format!("{at}.claim"), "claim is required");
            }
            let header_path = format!("{at}.header");
            let strict = !output.header.is_empty()
                && output
                    .header
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if output.header.is_empty() {
                push(errors, &header_path, "header is required");
            } else if !strict {
                push(
                    errors,
                    &header_path,
                    format!(
                        "header `{}` must be letters, digits, `-` and `_`",
                        output.header
                    ),
                );
            } else if !headers.insert(output.header.to_ascii_lowercase()) {
                push(
                    errors,
                    &header_path,
                    format!("header `{}` is set by another claim", output.header),
                );
            }
        }
        if let Some(timeout) = self.timeout {
            check_min_duration(errors, &field("timeout"), timeout);
        }
    }
}

/// An `http://` or `https://` URL with a host (and an optional port).
fn check_http_url(errors: &mut Vec<FieldError>, path: &str, url: &str) {
    let scheme_len = ["https://", "http://"]
        .into_iter()
        .find(|scheme| {
            url.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        })
        .map(str::len);
    let valid = scheme_len.is_some_and(|len| {
        let authority = url[len..].split(['/', '?', '#']).next().unwrap_or("");
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, rest)) => (host, rest.strip_prefix(':')),
                None => ("", None),
            },
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        !host.is_empty()
            && !url.chars().any(|c| c.is_whitespace() || c.is_control())
            && !authority.contains('@')
            && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
    });
    if !valid {
        push(
            errors,
            path,
            format!(
                "`{url}` is not an http(s) URL; write it like `https://example.com/.well-known/jwks.json`"
            ),
        );
    }
}

/// A JSON Web Key Set: a JSON object with a `keys` list.
fn check_jwks(errors: &mut Vec<FieldError>, path: &str, jwks: &str) {
    let reason = match serde_json::from_str::<serde_json::Value>(jwks) {
        Err(e) => Some(format!("is not JSON: {e}")),
        Ok(value) => match value.get("keys") {
            Some(serde_json::Value::Array(_)) => None,
            _ => Some("is not a JSON Web Key Set: it needs a `keys` list".to_string()),
        },
    };
    if let Some(reason) = reason {
        push(errors, path, reason);
    }
}
