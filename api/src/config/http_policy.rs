//! Per-rule HTTP policies: retries, fault injection and CORS.

use serde::{Deserialize, Serialize};

use super::validate::{check_min_duration, check_non_negative, check_one_of, push, Validate};
use super::{Duration, FieldError, Percent, StringMatch};

/// Retry policy of an HTTP rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    /// Retries allowed per request; 0 disables retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Timeout of each try, at least 1ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Comma-separated conditions to retry on (Envoy's `x-envoy-retry-on`
    /// and `x-envoy-retry-grpc-on` values, or status codes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Retry on endpoints in other localities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_remote_localities: Option<bool>,
    /// Avoid endpoints that already failed this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval between retries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Duration>,
}

/// The `retryOn` conditions Envoy knows, besides 3-digit status codes.
pub const RETRY_ON_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

impl Validate for HttpRetry {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_non_negative(errors, &format!("{path}.attempts"), self.attempts);
        if let Some(timeout) = self.per_try_timeout {
            check_min_duration(errors, &format!("{path}.perTryTimeout"), timeout);
        }
        if let Some(backoff) = self.backoff {
            check_min_duration(errors, &format!("{path}.backoff"), backoff);
        }
        for condition in self.retry_on.iter().flat_map(|list| list.split(',')) {
            let condition = condition.trim();
            let status = condition.len() == 3
                && condition
                    .parse::<u16>()
                    .is_ok_and(|code| (100..=599).contains(&code));
            if !status && !RETRY_ON_CONDITIONS.contains(&condition) {
                push(
                    errors,
                    &format!("{path}.retryOn"),
                    format!(
                        "`{condition}` is not a retry condition; use a status code or one of {}",
                        RETRY_ON_CONDITIONS.join(", ")
                    ),
                );
            }
        }
    }
}

/// Faults injected into requests, for resilience testing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpFaultInjection {
    /// Delay requests before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Fail requests without forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
}

impl Validate for HttpFaultInjection {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.delay.is_none() && self.abort.is_none() {
            push(errors, path, "a fault needs `delay` or `abort`");
        }
        self.delay.validate_at(&format!("{path}.delay"), errors);
        self.abort.validate_at(&format!("{path}.abort"), errors);
    }
}

/// A fixed delay on a share of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    /// How long to wait before forwarding.
    // Istio takes a delay without one (no delay); 0s here.
    #[serde(default)]
    pub fixed_delay: Duration,
    /// Refused, as Istio refuses it: not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

impl Validate for Delay {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.exponential_delay.is_some() {
            push(
                errors,
                &format!("{path}.exponentialDelay"),
                "exponentialDelay is not supported (Istio refuses it too); use fixedDelay",
            );
        }
        self.percentage
            .validate_at(&format!("{path}.percentage"), errors);
    }
}

/// An error returned instead of forwarding, for a share of requests.
/// Exactly one of `httpStatus` and `grpcStatus`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Abort {
    /// HTTP status to return, 200..=599.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// gRPC status name to return, e.g. `UNAVAILABLE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    /// Share of requests aborted; all when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

/// gRPC status code names, in code order (0 is `OK`).
pub const GRPC_STATUS_NAMES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Validate for Abort {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("httpStatus", self.http_status.is_some()),
                ("grpcStatus", self.grpc_status.is_some()),
            ],
            true,
        );
        if let Some(status) = self.http_status.filter(|s| !(200..=599).contains(s)) {
            push(
                errors,
                &format!("{path}.httpStatus"),
                format!("status {status} is out of range 200..=599"),
            );
        }
        if let Some(status) = self.grpc_status.as_deref() {
            if !GRPC_STATUS_NAMES.contains(&status) {
                push(
                    errors,
                    &format!("{path}.grpcStatus"),
                    format!("`{status}` is not a gRPC status name such as `UNAVAILABLE`"),
                );
            }
        }
        self.percentage
            .validate_at(&format!("{path}.percentage"), errors);
    }
}

/// Cross-origin resource sharing: which browser origins may call the route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    /// Origins allowed; any of them matching allows the request.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// `Access-Control-Allow-Methods`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// What to do with preflight requests whose origin is not allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Handling of preflight requests that match no allowed origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Default (`FORWARD`).
    Unspecified,
    /// Forward them to the destination.
    Forward,
    /// Answer them without CORS headers.
    Ignore,
}

impl Validate for CorsPolicy {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        for (i, method) in self.allow_methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                push(
                    errors,
                    &format!("{path}.allowMethods[{i}]"),
                    format!("`{method}` is not an HTTP method"),
                );
            }
        }
    }
}
