//! RFC 3339 (UTC) rendering of unix timestamps for operator-facing messages.
//!
//! Hand-written to stay free of calendar dependencies; only formatting is
//! needed, never parsing. Used for token expiries and certificate lifetimes
//! in messages and CLI output.

use std::fmt;

/// Displays unix seconds as `YYYY-MM-DDTHH:MM:SSZ`, e.g. `2026-11-21T10:00:00Z`.
///
/// Years past 9999 are printed with more digits rather than clamped, so a
/// huge `expires_at` (e.g. `u64::MAX` for "never") is still visibly huge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / 86_400;
        let secs_of_day = self.0 % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs_of_day / 3600,
            secs_of_day % 3600 / 60,
            secs_of_day % 60
        )
    }
}

/// Formats unix seconds as an RFC 3339 UTC timestamp.
pub fn format_rfc3339(unix_secs: u64) -> String {
    Rfc3339(unix_secs).to_string()
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days`, specialised to non-negative day counts
/// so that it stays in unsigned arithmetic; `u64::MAX / 86_400` days cannot
/// overflow any intermediate value.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a
    // "year" and every 400-year era has the same shape.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based month
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        let cases: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00Z"),
            (59, "1970-01-01T00:00:59Z"),
            (86_399, "1970-01-01T23:59:59Z"),
            (86_400, "1970-01-02T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"), // leap day in a /400 year
            (951_868_800, "2000-03-01T00:00:00Z"),
            (1_234_567_890, "2009-02-13T23:31:30Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (1_795_255_200, "2026-11-21T10:00:00Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"), // 2100 is not a leap year
            (4_102_444_799, "2099-12-31T23:59:59Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (253_402_300_800, "10000-01-01T00:00:00Z"),
        ];
        for &(secs, want) in cases {
            assert_eq!(format_rfc3339(secs), want, "unix {secs}");
        }
    }

    #[test]
    fn every_day_for_four_centuries_is_consistent() {
        // Walk day by day and check the date only ever advances by one day,
        // which catches month-length and leap-year mistakes anywhere.
        let days_in = |y: u64, m: u64| match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
            _ => 28,
        };
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for d in 1..(400 * 366) {
            let cur = civil_from_days(d);
            let (y, m, dd) = prev;
            let expected = if dd < days_in(y, m) {
                (y, m, dd + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(cur, expected, "day {d}");
            prev = cur;
        }
    }

    #[test]
    fn max_does_not_overflow() {
        let s = format_rfc3339(u64::MAX);
        assert!(s.ends_with("Z"), "{s}");
    }
}
