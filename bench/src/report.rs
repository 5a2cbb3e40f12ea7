//! What every suite's report shares: percentiles of latency samples and
//! when a run is flagged for the CPU the hypervisor took during it.

/// Share of the CPU the hypervisor may take during a load before the run
/// is flagged as not comparable, percent.
pub const STEAL_WARN_PERCENT: f64 = 5.0;

/// Nearest-rank percentile of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&s, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&s, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&s, 0.0), Some(Duration::from_millis(1)));
        let few = ms(&[3, 7, 9]);
        assert_eq!(percentile(&few, 50.0), Some(Duration::from_millis(7)));
        assert_eq!(percentile(&few, 99.0), Some(Duration::from_millis(9)));
        assert_eq!(percentile::<Duration>(&[], 50.0), None);
        assert_eq!(percentile(&[0, 1, 1, 4], 50.0), Some(1));
    }
}
