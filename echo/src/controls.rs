//! The test controls of an HTTP request: `x-echo-*` headers, so a test can
//! steer the server through proxies, or the same names without the
//! `x-echo-` prefix as query parameters (`?status=503`), handy with curl.
//! A header wins over the query parameter of the same name.
use std::time::Duration;

use hyper::{HeaderMap, StatusCode};

const STATUS: &str = "x-echo-status";
const DELAY_MS: &str = "x-echo-delay-ms";
const FAIL_RATE: &str = "x-echo-fail-rate";
const BODY_BYTES: &str = "x-echo-body-bytes";

/// What a request asked of the server.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Controls {
    /// Respond with this status instead of 200.
    pub status: Option<StatusCode>,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
    /// Respond 503 with this probability (0 to 1).
    pub fail_rate: f64,
    /// Respond with this many filler bytes instead of the JSON report.
    pub body_bytes: Option<u64>,
}

/// A control with a value the server cannot use.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{name} (or ?{param}=) is {value:?}: expected {expected}")]
pub(crate) struct ControlError {
    name: &'static str,
    param: &'static str,
    value: String,
    expected: &'static str,
}

impl Controls {
    pub fn parse(headers: &HeaderMap, query: Option<&str>) -> Result<Self, ControlError> {
        let status = parse(
            headers,
            query,
            STATUS,
            "a status code from 200 to 599",
            |v| {
                StatusCode::from_u16(v.parse().ok()?)
                    .ok()
                    .filter(|s| (200..600).contains(&s.as_u16()))
            },
        )?;
        let delay = parse(headers, query, DELAY_MS, "milliseconds", |v| {
            v.parse().ok().map(Duration::from_millis)
        })?;
        let fail_rate = parse(headers, query, FAIL_RATE, "a number from 0 to 1", |v| {
            v.parse().ok().filter(|r| (0.0..=1.0).contains(r))
        })?;
        let body_bytes = parse(headers, query, BODY_BYTES, "a byte count", |v| {
            v.parse().ok()
        })?;
        Ok(Self {
            status,
            delay,
            fail_rate: fail_rate.unwrap_or(0.0),
            body_bytes,
        })
    }

    /// The status to answer with, given `roll`, uniform in [0, 1), for the
    /// fail rate.
    pub fn status(&self, roll: f64) -> StatusCode {
        if roll < self.fail_rate {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.status.unwrap_or(StatusCode::OK)
        }
    }
}

/// The value of control `name`, from its header or else its query
/// parameter, converted by `convert`.
fn parse<T>(
    headers: &HeaderMap,
    query: Option<&str>,
    name: &'static str,
    expected: &'static str,
    convert: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ControlError> {
    let param = name.trim_start_matches("x-echo-");
    let value = match headers.get(name) {
        Some(h) => Some(h.to_str().unwrap_or("(not text)")),
        None => query.and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find_map(|(k, v)| (k == param).then_some(v))
        }),
    };
    let Some(value) = value.map(str::trim) else {
        return Ok(None);
    };
    convert(value).map(Some).ok_or_else(|| ControlError {
        name,
        param,
        value: value.to_string(),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls(
        headers: &[(&'static str, &'static str)],
        query: Option<&str>,
    ) -> Result<Controls, ControlError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, v.parse().unwrap());
        }
        Controls::parse(&map, query)
    }

    #[test]
    fn none_by_default() {
        assert_eq!(controls(&[], None).unwrap(), Controls::default());
        assert_eq!(controls(&[], Some("a=1&b")).unwrap(), Controls::default());
    }

    #[test]
    fn from_headers_or_query() {
        let c = controls(
            &[("x-echo-status", "503"), ("x-echo-delay-ms", "200")],
            Some("fail-rate=0.25&body-bytes=1000"),
        )
        .unwrap();
        assert_eq!(
            c,
            Controls {
                status: Some(StatusCode::SERVICE_UNAVAILABLE),
                delay: Some(Duration::from_millis(200)),
                fail_rate: 0.25,
                body_bytes: Some(1000),
            }
        );
    }

    #[test]
    fn header_wins_over_query() {
        let c = controls(&[("x-echo-status", "404")], Some("status=500")).unwrap();
        assert_eq!(c.status, Some(StatusCode::NOT_FOUND));
    }

    #[test]
    fn bad_values_name_the_control() {
        for (header, value) in [
            ("x-echo-status", "abc"),
            ("x-echo-status", "101"),
            ("x-echo-status", "600"),
            ("x-echo-delay-ms", "-1"),
            ("x-echo-fail-rate", "1.5"),
            ("x-echo-fail-rate", "NaN"),
            ("x-echo-body-bytes", "lots"),
        ] {
            let e = controls(&[(header, value)], None).unwrap_err();
            assert!(e.to_string().starts_with(header), "{e}");
        }
        let e = controls(&[], Some("status=abc")).unwrap_err();
        assert!(e.to_string().contains("?status="), "{e}");
    }

    #[test]
    fn fail_rate_decides_by_the_roll() {
        let c = Controls {
            status: Some(StatusCode::ACCEPTED),
            fail_rate: 0.3,
            ..Controls::default()
        };
        assert_eq!(c.status(0.29), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(c.status(0.3), StatusCode::ACCEPTED);
        assert_eq!(Controls::default().status(0.0), StatusCode::OK);
    }
}
