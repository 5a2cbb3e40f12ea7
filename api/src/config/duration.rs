//! Durations as Istio config writes them, Go-style: `10s`, `1.5s`, `100ms`,
//! `1m30s`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written the way Go's `time.ParseDuration`
/// accepts it: a sequence of decimal numbers, each with an optional fraction
/// and a unit (`ns`, `us` or `µs`, `ms`, `s`, `m`, `h`), e.g. `1m30s` or
/// `0.5s`; `0` alone is also allowed. Displays and serializes canonically
/// (largest units first, zero parts left out: `1m30s`, `1.5s`, `250us`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason}; write it like \"10s\", \"1.5s\", \"100ms\" or \"1m30s\""
)]
pub struct DurationError {
    input: String,
    reason: String,
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl Duration {
    /// Wraps a std duration.
    pub const fn from_std(duration: std::time::Duration) -> Self {
        Duration(duration)
    }

    /// The std duration, for timers.
    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(duration: std::time::Duration) -> Self {
        Duration(duration)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(duration: Duration) -> Self {
        duration.0
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, DurationError> {
        parse_nanos(input)
            .and_then(|nanos| {
                let secs = u64::try_from(nanos / NANOS_PER_SEC)
                    .map_err(|_| "it is too large".to_string())?;
                // The remainder is below 10^9, so it fits.
                let subsec = (nanos % NANOS_PER_SEC) as u32;
                Ok(Duration(std::time::Duration::new(secs, subsec)))
            })
            .map_err(|reason| DurationError {
                input: input.to_string(),
                reason,
            })
    }
}

/// The total in nanoseconds, or the reason `input` is not a duration.
fn parse_nanos(input: &str) -> Result<u128, String> {
    if input.is_empty() {
        return Err("it is empty".into());
    }
    if input.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    if input == "0" {
        return Ok(0);
    }
    let overflow = || "it is too large".to_string();
    let mut rest = input;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(after) => after.split_at(after.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(format!("expected a number at `{rest}`"));
        }
        let number = &rest[..rest.len() - after.len()];
        let unit_len: usize = after
            .chars()
            .take_while(|c| c.is_alphabetic())
            .map(char::len_utf8)
            .sum();
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "" => return Err(format!("`{number}` has no unit (ns, us, ms, s, m or h)")),
            other => {
                return Err(format!(
                    "unknown unit `{other}` (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| overflow())?
        };
        // Digits past the 20th are below a nanosecond for every unit.
        let frac = &frac[..frac.len().min(20)];
        let frac_nanos = if frac.is_empty() {
            0
        } else {
            let digits: u128 = frac.parse().map_err(|_| overflow())?;
            digits * scale / 10u128.pow(frac.len() as u32)
        };
        total = int
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(overflow)?;
        rest = after;
    }
    Ok(total)
}

/// Writes `value / scale` as a decimal without trailing zeros.
fn write_decimal(f: &mut fmt::Formatter<'_>, value: u128, scale: u128) -> fmt::Result {
    let (int, frac) = (value / scale, value % scale);
    if frac == 0 {
        return write!(f, "{int}");
    }
    let width = scale.ilog10() as usize;
    let frac = format!("{frac:0width$}");
    write!(f, "{int}.{}", frac.trim_end_matches('0'))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < NANOS_PER_SEC {
            let (scale, unit) = match nanos {
                1_000_000.. => (1_000_000, "ms"),
                1_000.. => (1_000, "us"),
                _ => (1, "ns"),
            };
            write_decimal(f, nanos, scale)?;
            return f.write_str(unit);
        }
        let secs = self.0.as_secs();
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        let rest = u128::from(seconds) * NANOS_PER_SEC + u128::from(self.0.subsec_nanos());
        if rest > 0 {
            write_decimal(f, rest, NANOS_PER_SEC)?;
            f.write_str("s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }

            // A bare number (`timeout: 10`) gets the "no unit" message
            // rather than a type error.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                self.visit_str(&v.to_string())
            }

            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_go_style() {
        for (input, expected) in [
            ("10s", Std::from_secs(10)),
            ("0.5s", Std::from_millis(500)),
            ("1.5s", Std::from_millis(1500)),
            ("100ms", Std::from_millis(100)),
            ("3m", Std::from_secs(180)),
            ("1h", Std::from_secs(3600)),
            ("1m30s", Std::from_secs(90)),
            ("250us", Std::from_micros(250)),
            ("250µs", Std::from_micros(250)),
            ("7ns", Std::from_nanos(7)),
            (".5s", Std::from_millis(500)),
            ("2.s", Std::from_secs(2)),
            ("0", Std::ZERO),
            ("0s", Std::ZERO),
            ("1h0m0.000000001s", Std::new(3600, 1)),
        ] {
            let parsed: Duration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.as_std(), expected, "{input}");
        }
    }

    #[test]
    fn refuses_garbage() {
        for (input, reason) in [
            ("", "it is empty"),
            ("-1s", "negative durations are not allowed"),
            ("10", "`10` has no unit"),
            ("1.5", "`1.5` has no unit"),
            ("10x", "unknown unit `x`"),
            ("1 s", "`1` has no unit"),
            ("s", "expected a number at `s`"),
            ("1s-2s", "expected a number at `-2s`"),
            (".s", "expected a number at `.s`"),
            ("99999999999999999999999h", "too large"),
        ] {
            let err = input.parse::<Duration>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{err}");
        }
    }

    #[test]
    fn formats_canonically() {
        for (input, canonical) in [
            ("10s", "10s"),
            ("90s", "1m30s"),
            ("1m30s", "1m30s"),
            ("0.5s", "500ms"),
            ("1.5s", "1.5s"),
            ("1500ms", "1.5s"),
            ("1.5ms", "1.5ms"),
            ("250us", "250us"),
            ("7ns", "7ns"),
            ("0", "0s"),
            ("3600s", "1h"),
            ("1h0.25s", "1h0.25s"),
            ("25h", "25h"),
        ] {
            let parsed: Duration = input.parse().unwrap();
            assert_eq!(parsed.to_string(), canonical, "{input}");
            assert_eq!(canonical.parse::<Duration>().unwrap(), parsed, "round trip");
        }
    }

    #[test]
    fn serde_round_trip() {
        let parsed: Duration = crate::yaml::from_str("1m30s").unwrap();
        assert_eq!(parsed.as_std(), Std::from_secs(90));
        assert_eq!(crate::yaml::to_string(&parsed).unwrap(), "1m30s\n");
        let err = crate::yaml::from_str::<Duration>("-3s")
            .unwrap_err()
            .to_string();
        assert!(err.contains("negative"), "{err}");
        let err = crate::yaml::from_str::<Duration>("10")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`10` has no unit"), "{err}");
        assert_eq!(
            crate::yaml::from_str::<Duration>("0").unwrap(),
            Duration::default()
        );
    }
}
