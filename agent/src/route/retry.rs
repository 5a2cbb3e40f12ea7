//! Retry decisions: which outcomes a route retries (Envoy's `retryOn`
//! conditions), how long to wait before the next try, and the budget that
//! keeps retries from multiplying an outage.
use std::time::Duration;

use trellis_api::config::HttpRetry;

/// How one try ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (and `grpc-status`, when gRPC).
    Status(u16, Option<u16>),
    /// The connection could not be opened.
    ConnectFailure,
    /// The upstream refused the stream without processing it (HTTP/2
    /// `REFUSED_STREAM`, or left out by its GOAWAY).
    Refused,
    /// The stream was reset or the connection broke before a response,
    /// after the request was sent: the upstream may have processed it.
    Reset,
    /// The per-try timeout fired.
    Timeout,
}

/// A route's compiled retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// First backoff interval; each retry doubles it, with full jitter, up
    /// to ten times (Envoy's defaults: 25 ms, max 250 ms).
    pub backoff: Duration,
    on_5xx: bool,
    on_gateway: bool,
    on_connect_failure: bool,
    on_refused_stream: bool,
    on_reset: bool,
    on_retriable_4xx: bool,
    codes: Vec<u16>,
    grpc: Vec<u16>,
}

/// gRPC status names Istio accepts in `retryOn`, with their codes.
const GRPC: [(&str, u16); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

/// Istio's default when a route sets no `retries`.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";
const DEFAULT_ATTEMPTS: u32 = 2;

impl RetryPolicy {
    /// The policy of a route: its `retries`, or Istio's default.
    pub fn from_config(r: Option<&HttpRetry>) -> Self {
        let Some(r) = r else {
            return Self::istio_default().clone();
        };
        Self::parse(
            r.attempts.map_or(DEFAULT_ATTEMPTS, |a| a.max(0) as u32),
            r.per_try_timeout.map(|d| d.as_std()),
            r.backoff.map(|d| d.as_std()),
            r.retry_on.as_deref().unwrap_or(DEFAULT_RETRY_ON),
        )
    }

    /// Istio's default, parsed once (most routes set no `retries`).
    pub fn istio_default() -> &'static RetryPolicy {
        static DEFAULT: std::sync::OnceLock<RetryPolicy> = std::sync::OnceLock::new();
        DEFAULT.get_or_init(|| Self::parse(DEFAULT_ATTEMPTS, None, None, DEFAULT_RETRY_ON))
    }

    fn parse(
        attempts: u32,
        per_try: Option<Duration>,
        backoff: Option<Duration>,
        on: &str,
    ) -> Self {
        let mut p = RetryPolicy {
            attempts,
            per_try_timeout: per_try.filter(|d| !d.is_zero()),
            backoff: backoff.unwrap_or(Duration::from_millis(25)),
            on_5xx: false,
            on_gateway: false,
            on_connect_failure: false,
            on_refused_stream: false,
            on_reset: false,
            on_retriable_4xx: false,
            codes: Vec::new(),
            grpc: Vec::new(),
        };
        for c in on.split(',').map(str::trim) {
            match c {
                "5xx" => p.on_5xx = true,
                "gateway-error" => p.on_gateway = true,
                "connect-failure" => p.on_connect_failure = true,
                "reset" => p.on_reset = true,
                "refused-stream" => p.on_refused_stream = true,
                "retriable-4xx" => p.on_retriable_4xx = true,
                other => {
                    if let Ok(code) = other.parse::<u16>() {
                        p.codes.push(code);
                    } else if let Some((_, g)) = GRPC.iter().find(|(n, _)| *n == other) {
                        p.grpc.push(*g);
                    }
                }
            }
        }
        p
    }

    /// Whether an outcome is worth another try under this policy, as in
    /// Envoy: `reset` and `5xx` take any reset, `refused-stream` only a
    /// stream the upstream refused unprocessed. (A response the agent
    /// could not parse is not an outcome to retry: it never gets here.)
    pub fn retriable(&self, o: Outcome) -> bool {
        match o {
            Outcome::ConnectFailure => self.on_connect_failure || self.on_5xx || self.on_gateway,
            Outcome::Refused => self.on_refused_stream || self.on_reset || self.on_5xx,
            Outcome::Reset => self.on_reset || self.on_5xx,
            Outcome::Timeout => self.on_5xx || self.on_gateway,
            Outcome::Status(s, grpc) => {
                (self.on_5xx && s >= 500)
                    || (self.on_gateway && matches!(s, 502..=504))
                    || (self.on_retriable_4xx && s == 409)
                    || self.codes.contains(&s)
                    || grpc.is_some_and(|g| self.grpc.contains(&g))
            }
        }
    }

    /// How long to wait before retry number `n` (1-based): uniform in
    /// 0..=base·2^(n-1), capped at ten times the base.
    pub fn backoff(&self, n: u32, roll: f64) -> Duration {
        let cap = self.backoff * 10;
        let ceiling = (self.backoff * 2u32.saturating_pow(n.saturating_sub(1))).min(cap);
        ceiling.mul_f64(roll.clamp(0.0, 1.0))
    }
}

/// How many retries a cluster may have outstanding at once, with
/// `active_requests` in flight: Envoy's retry budget, at most 20% of the
/// requests in flight (and at least 3), and at most `max_retries`
/// (`connectionPool.http.maxRetries`, Envoy's `max_retries` circuit
/// breaker; `u32::MAX` when unset).
pub fn retry_limit(active_requests: u32, max_retries: u32) -> u32 {
    (active_requests / 5).max(3).min(max_retries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_conditions() {
        let p = RetryPolicy::parse(
            3,
            None,
            None,
            "gateway-error,connect-failure,retriable-4xx,418,unavailable",
        );
        let cases = [
            (Outcome::Status(503, None), true),
            (Outcome::Status(500, None), false),
            (Outcome::Status(409, None), true),
            (Outcome::Status(418, None), true),
            (Outcome::Status(200, Some(14)), true),
            (Outcome::Status(200, Some(13)), false),
            (Outcome::ConnectFailure, true),
            (Outcome::Reset, false),
            (Outcome::Timeout, true),
        ];
        for (o, want) in cases {
            assert_eq!(p.retriable(o), want, "{o:?}");
        }
        let five = RetryPolicy::parse(1, None, None, "5xx");
        assert!(five.retriable(Outcome::Status(500, None)) && five.retriable(Outcome::Reset));
        assert!(!five.retriable(Outcome::Status(404, None)));
    }

    #[test]
    fn istio_default_retries_503_and_connect_failures_twice() {
        let p = RetryPolicy::from_config(None);
        assert_eq!(p.attempts, 2);
        assert!(p.retriable(Outcome::Status(503, None)));
        assert!(p.retriable(Outcome::ConnectFailure));
        assert!(!p.retriable(Outcome::Status(500, None)));
    }

    #[test]
    fn refused_stream_retries_refused_streams_and_not_requests_that_may_have_been_processed() {
        let default = RetryPolicy::from_config(None);
        assert!(default.retriable(Outcome::Refused));
        assert!(
            !default.retriable(Outcome::Reset),
            "a reset after sending: the upstream may have processed it"
        );
        let refused = RetryPolicy::parse(2, None, None, "refused-stream");
        assert!(refused.retriable(Outcome::Refused) && !refused.retriable(Outcome::Reset));
        for on in ["reset", "5xx"] {
            let p = RetryPolicy::parse(2, None, None, on);
            assert!(
                p.retriable(Outcome::Refused) && p.retriable(Outcome::Reset),
                "{on}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy::parse(5, None, Some(Duration::from_millis(25)), "5xx");
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(25));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(9, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
    }

    #[test]
    fn budget_is_a_fifth_of_active_with_a_floor_of_three_capped_by_max_retries() {
        assert_eq!(retry_limit(1, u32::MAX), 3);
        assert_eq!(retry_limit(100, u32::MAX), 20);
        assert_eq!(retry_limit(100, 7), 7, "maxRetries below the budget");
        assert_eq!(retry_limit(1, 1), 1);
        assert_eq!(retry_limit(1, 5), 3, "the budget below maxRetries");
    }
}
