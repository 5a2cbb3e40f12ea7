//! How a phase of `proxy` or `dns` sends its load: open loop at a fixed
//! rate, or closed loop as fast as the answers come back.

/// Open loop at a fixed rate, or closed loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// Requests (queries) per second, sent on schedule.
    Rate(u32),
    /// Each worker sends its next request when the previous one is answered.
    Max,
}

impl Pace {
    /// The phases of a run: each of `rates`, then maximum throughput.
    pub fn all(rates: &[u32]) -> Vec<Pace> {
        rates
            .iter()
            .map(|&r| Pace::Rate(r))
            .chain([Pace::Max])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rate_then_max() {
        assert_eq!(
            Pace::all(&[1000, 5000]),
            [Pace::Rate(1000), Pace::Rate(5000), Pace::Max]
        );
        assert_eq!(Pace::all(&[]), [Pace::Max]);
    }
}
