//! What a `failover` trial measured, from its requests ([`Record`]s), and
//! the report over the trials.
use std::time::{Duration, Instant};

use anyhow::bail;

use super::load::{Outcome, Record};
use crate::report::percentile;
use crate::table::render as table;

/// The goal: p99 of the failover time.
pub const GOAL: Duration = Duration::from_secs(2);

/// One trial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trial {
    /// From the first request cluster-1 did not answer (it failed, or a
    /// retry took it to cluster-2) to the first of the requests that all
    /// went to cluster-2, by their scheduled instants.
    pub failover: Duration,
    /// From the kill to the first of the requests that all went to
    /// cluster-2.
    pub from_kill: Duration,
    /// Requests that failed.
    pub failed: usize,
    /// From cluster-1's agents ready again to all traffic back there and
    /// every endpoint in service.
    pub recovery: Duration,
}

/// The failover of `records`, the requests scheduled from before the kill
/// at `kill` (all answered by cluster-1) until after traffic settled on
/// cluster-2, in order; `recovery` is left for the caller.
pub fn failover(records: &[Record], kill: Instant) -> anyhow::Result<Trial> {
    let Some(first) = records.iter().position(|r| r.outcome != Outcome::Local) else {
        bail!("cluster-1 kept answering every request after its endpoints were killed");
    };
    let moved = records
        .iter()
        .rposition(|r| r.outcome != Outcome::Remote)
        .map_or(0, |i| i + 1);
    let Some(moved) = records.get(moved) else {
        bail!("the last request was not answered by cluster-2: traffic never moved there");
    };
    Ok(Trial {
        failover: moved.sent.saturating_duration_since(records[first].sent),
        from_kill: moved.sent.saturating_duration_since(kill),
        failed: records
            .iter()
            .filter(|r| r.outcome == Outcome::Failed)
            .count(),
        recovery: Duration::ZERO,
    })
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// How the run was set up, for the report's heading.
pub struct Setup {
    pub rate: u32,
    pub local: usize,
    pub remote: usize,
    pub retries: bool,
    /// The client agent's connections to cluster-2 kept between trials.
    pub warm: bool,
}

pub fn render(setup: &Setup, trials: &[Trial]) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "== Failover: every cluster-1 endpoint killed -> all traffic on cluster-2 (through its gateway) ==\n\
         {} rps through the client agent; {} endpoints in cluster-1, {} in cluster-2; \
         outlier detection and locality failover; {}; connections to cluster-2 {}; {} trials; {cores} cores\n\n",
        setup.rate,
        setup.local,
        setup.remote,
        if setup.retries {
            "the agent's default retries"
        } else {
            "no retries"
        },
        if setup.warm {
            "kept from the trial before (--warm)"
        } else {
            "opened anew in each trial"
        },
        trials.len(),
    );
    let sorted = |f: fn(&Trial) -> Duration| {
        let mut v: Vec<Duration> = trials.iter().map(f).collect();
        v.sort();
        v
    };
    let failover = sorted(|t| t.failover);
    let p99 = percentile(&failover, 99.0).unwrap_or_default();
    let verdict = if p99 < GOAL { "met" } else { "MISSED" };
    let mut rows = vec![[
        String::new(),
        "p50".into(),
        "p99".into(),
        "max".into(),
        "goal".into(),
    ]];
    for (name, v, goal) in [
        (
            "failover: first failed request -> all on cluster-2",
            failover,
            format!("p99 < {}: {verdict}", ms(GOAL)),
        ),
        (
            "kill -> all on cluster-2",
            sorted(|t| t.from_kill),
            String::new(),
        ),
        (
            "recovery: cluster-1 ready -> all back, none ejected",
            sorted(|t| t.recovery),
            String::new(),
        ),
    ] {
        let p = |q| ms(percentile(&v, q).unwrap_or_default());
        rows.push([name.to_string(), p(50.0), p(99.0), p(100.0), goal]);
    }
    let mut failed: Vec<usize> = trials.iter().map(|t| t.failed).collect();
    failed.sort();
    let nth = |q| percentile(&failed, q).map_or(String::new(), |n| n.to_string());
    rows.push([
        "failed requests per trial".into(),
        nth(50.0),
        nth(99.0),
        nth(100.0),
        String::new(),
    ]);
    out.push_str(&table(&rows));
    out.push_str(
        "\nNo peer beside it: Envoy would need Istio's control plane to be given the same endpoints, priorities and outlier detection; the goal stands in its place.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;

    fn records(t0: Instant, outcomes: &[(u64, Outcome)]) -> Vec<Record> {
        outcomes
            .iter()
            .map(|&(ms, outcome)| Record {
                sent: t0 + Duration::from_millis(ms),
                outcome,
            })
            .collect()
    }

    #[test]
    fn from_the_first_failure_to_the_run_on_cluster_2() {
        let t0 = Instant::now();
        let kill = t0 + Duration::from_millis(1000);
        let r = records(
            t0,
            &[
                (0, Local),
                (995, Local),
                (1005, Failed),
                (1010, Local),
                (1015, Failed),
                (1020, Remote),
                (1025, Failed),
                (1030, Remote),
                (1035, Remote),
            ],
        );
        let t = failover(&r, kill).unwrap();
        assert_eq!(t.failover, Duration::from_millis(25));
        assert_eq!(t.from_kill, Duration::from_millis(30));
        assert_eq!(t.failed, 3);
    }

    #[test]
    fn a_seamless_move_takes_no_time() {
        let t0 = Instant::now();
        // A retry took the first affected request to cluster-2.
        let r = records(t0, &[(0, Local), (10, Remote), (20, Remote)]);
        let t = failover(&r, t0 + Duration::from_millis(5)).unwrap();
        assert_eq!((t.failover, t.failed), (Duration::ZERO, 0));
        assert_eq!(t.from_kill, Duration::from_millis(5));
    }

    #[test]
    fn a_trial_that_never_failed_over_is_an_error() {
        let t0 = Instant::now();
        let stuck = records(t0, &[(0, Local), (10, Failed), (20, Remote), (30, Failed)]);
        let err = failover(&stuck, t0).unwrap_err().to_string();
        assert!(err.contains("never moved"), "{err}");
        let untouched = records(t0, &[(0, Local), (10, Local)]);
        let err = failover(&untouched, t0).unwrap_err().to_string();
        assert!(err.contains("kept answering"), "{err}");
    }

    #[test]
    fn judges_the_p99_against_the_goal() {
        let trial = |ms: u64, failed| Trial {
            failover: Duration::from_millis(ms),
            from_kill: Duration::from_millis(ms + 5),
            failed,
            recovery: Duration::from_secs(3),
        };
        let setup = Setup {
            rate: 200,
            local: 2,
            remote: 2,
            retries: true,
            warm: false,
        };
        let ok: Vec<Trial> = (1..=20).map(|i| trial(i * 10, i as usize % 3)).collect();
        let r = render(&setup, &ok);
        let line = r.lines().find(|l| l.starts_with("failover:")).unwrap();
        assert!(line.ends_with("p99 < 2000.0 ms: met"), "{line}");
        assert!(line.contains("100.0 ms"), "{line}");
        let failed = r
            .lines()
            .find(|l| l.starts_with("failed requests"))
            .unwrap();
        assert_eq!(
            failed.split_whitespace().skip(4).collect::<Vec<_>>(),
            ["1", "2", "2"]
        );
        let mut slow = ok;
        slow[19] = trial(2500, 9);
        let r = render(&setup, &slow);
        let line = r.lines().find(|l| l.starts_with("failover:")).unwrap();
        assert!(line.ends_with("MISSED"), "{line}");
    }
}
