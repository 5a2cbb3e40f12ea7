//! The report of `propagation`: per stage of a trial, p50, p99 and max
//! over the trials, and the goal beside the end-to-end figure (there is no
//! peer to run beside it: no Istio control plane here).
use std::time::Duration;

use crate::report::percentile;
use crate::table::{render as table, thousands};

/// The goal: p99 from t0 to the first successful request.
pub const GOAL: Duration = Duration::from_secs(1);

/// One trial, each stage from t0 (the WorkloadEntry's `ApplyConfig` sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trial {
    /// The apply returned: committed by the Raft group.
    pub commit: Duration,
    /// The last simulated agent received the version.
    pub push: Duration,
    /// The client's first 200 arrived.
    pub success: Duration,
    /// Requests the client sent in the trial.
    pub requests: u32,
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn render(agents: usize, probe_ms: u64, trials: &[Trial]) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "== Cross-network propagation: WorkloadEntry written in net-b -> first successful request from net-a ==\n\
         {} simulated agents (half per network), a 3-node control plane, {} trials, \
         a request every {probe_ms} ms while they fail; {cores} cores\n\n",
        thousands(agents as u64),
        trials.len()
    );
    let stage = |f: fn(&Trial) -> Duration| {
        let mut v: Vec<Duration> = trials.iter().map(f).collect();
        v.sort();
        v
    };
    let success = stage(|t| t.success);
    let p99 = percentile(&success, 99.0).unwrap_or_default();
    let verdict = if p99 < GOAL { "met" } else { "MISSED" };
    let mut rows = vec![[
        "from t0 (the apply sent) to".to_string(),
        "p50".into(),
        "p99".into(),
        "max".into(),
        "goal".into(),
    ]];
    for (name, v, goal) in [
        (
            "the commit (the apply returned)",
            stage(|t| t.commit),
            String::new(),
        ),
        (
            "the push (every simulated agent has it)",
            stage(|t| t.push),
            String::new(),
        ),
        (
            "the first successful request from net-a",
            success,
            format!("p99 < {}: {verdict}", ms(GOAL)),
        ),
    ] {
        let p = |q| ms(percentile(&v, q).unwrap_or_default());
        rows.push([name.to_string(), p(50.0), p(99.0), p(100.0), goal]);
    }
    out.push_str(&table(&rows));
    out.push_str(
        "\nNo peer beside it: no Istio control plane runs here to time the same trial; the goal stands in its place.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(success_ms: u64) -> Trial {
        Trial {
            commit: Duration::from_millis(5),
            push: Duration::from_millis(40),
            success: Duration::from_millis(success_ms),
            requests: 20,
        }
    }

    #[test]
    fn judges_the_p99_of_the_first_success_against_the_goal() {
        let fast: Vec<Trial> = (1..=100).map(|i| trial(40 + i)).collect();
        let r = render(1000, 2, &fast);
        assert!(r.contains("1,000 simulated agents"), "{r}");
        assert!(r.contains("100 trials"), "{r}");
        let line = r
            .lines()
            .find(|l| l.starts_with("the first successful"))
            .unwrap();
        // p50 90 ms, p99 139 ms, max 140 ms.
        assert!(line.contains("90.0 ms"), "{line}");
        assert!(line.contains("139.0 ms"), "{line}");
        assert!(line.ends_with("p99 < 1000.0 ms: met"), "{line}");
        let commit = r.lines().find(|l| l.starts_with("the commit")).unwrap();
        assert!(commit.trim_end().ends_with("5.0 ms"), "{commit}");

        let mut slow = fast;
        slow[99] = trial(1500);
        slow[98] = trial(1200);
        let r = render(1000, 2, &slow);
        let line = r
            .lines()
            .find(|l| l.starts_with("the first successful"))
            .unwrap();
        assert!(line.ends_with("MISSED"), "{line}");
    }
}
