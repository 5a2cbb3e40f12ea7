//! `trellis demo --failover`: after the report, cluster-1's reviews go
//! down and come back, and the demo measures how traffic moves. Reviews
//! v1 and v2 run in both clusters; reviews' DestinationRule has locality
//! failover from region-1 (cluster-1) to region-2 (cluster-2) with outlier
//! detection, so productpage (cluster-1) uses cluster-1's as long as they
//! answer. The step kills them (echo servers and agents, SIGKILL, as a
//! crash), sends requests one after another until every answer comes from
//! cluster-2, through network-2's east-west gateway, then restarts them
//! and sends requests until cluster-1 answers again.
//!
//! [`run`] does the I/O; what counts as switched and recovered, the
//! problems and the text are plain functions over [`Tally`]s.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::bookinfo::{reviews_on, Split, Topology, NETWORK_1, NETWORK_2};
use super::http::Http;
use super::processes::{workload_processes, Children};
use super::report::{tally, Answer, Tally};

/// Answers in a row that end a phase: this many, each as the phase wants.
pub const STREAK: usize = 20;
/// Requests are sent one after another, at most one per this.
const PACE: Duration = Duration::from_millis(20);
/// How long traffic may take to move to cluster-2 after the kill.
const SWITCH_WITHIN: Duration = Duration::from_secs(30);
/// How long it may take to come back after the restart: at least the
/// outlier detection's `baseEjectionTime` (5 s) and a readiness probe.
const RECOVER_WITHIN: Duration = Duration::from_secs(60);

/// The reviews versions that cluster-1 runs and `split` sends traffic to:
/// those that fail over.
pub fn moving_versions(split: Split) -> Vec<&'static str> {
    reviews_on(NETWORK_1)
        .iter()
        .map(|w| w.version)
        .filter(|v| split.weight(v) > 0)
        .collect()
}

/// The time a phase took, and what its traffic got.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Phase {
    /// Seconds from the kill (or restart) to the answer from the other
    /// cluster (for a version that moves) after which every answer came
    /// from it; none: that did not happen in time.
    pub secs: Option<f64>,
    /// The requests answered in that time, before that answer.
    pub tally: Tally,
    /// How many of them did not come back whole (a failed request or call).
    pub failed: usize,
    /// How long it was given.
    pub within_secs: u64,
}

/// What `--failover` saw, in `report.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Failover {
    /// The processes killed, then restarted.
    pub killed: Vec<String>,
    /// The reviews versions that moved to cluster-2 and back.
    pub versions: Vec<String>,
    /// [`STREAK`] requests before the kill.
    pub before: Tally,
    /// From the kill until every answer came from cluster-2.
    pub switch: Phase,
    /// From the end of the switch: every answer from cluster-2, at
    /// least one of each version that moved, up to [`STREAK`] requests.
    pub after: Tally,
    /// Connections network-2's gateway opened to the versions that
    /// moved, from the kill to the end of `after`.
    pub gateway_opened: BTreeMap<String, u64>,
    /// From the restart until cluster-1 answered again.
    pub recovery: Phase,
    /// The same from the end of the recovery, cluster-1 answering.
    pub recovered: Tally,
}

/// Whether one request's tally is wholly answered (every call) with
/// `versions` answered only from `cluster`; other versions may answer
/// from anywhere (reviews v3 runs only in cluster-2).
pub fn answered_from(t: &Tally, cluster: &str, versions: &[&str]) -> bool {
    t.answered == t.sent
        && t.failures.is_empty()
        && t.reviews_total() == t.sent
        && t.reviews_by_cluster
            .iter()
            .filter(|(c, _)| *c != cluster)
            .all(|(_, vs)| versions.iter().all(|v| !vs.contains_key(*v)))
}

/// Whether `run`, requests in a row that each passed [`answered_from`],
/// ends a phase: at least [`STREAK`] of them, with an answer of each of
/// `versions` from `cluster` among them.
pub fn shows(run: &Tally, cluster: &str, versions: &[&str]) -> bool {
    run.sent >= STREAK && versions.iter().all(|v| run.reviews_from(cluster, v) > 0)
}

/// Problems that make a `--once --failover` run fail: traffic that did
/// not move to cluster-2 or not through its gateway, or did not come back.
pub fn problems(f: &Failover) -> Vec<String> {
    let (home, away) = (NETWORK_1.cluster, NETWORK_2.cluster);
    let versions = f.versions.join(" and ");
    let mut p = Vec::new();
    if f.switch.secs.is_none() {
        p.push(format!(
            "within {} s of killing {home}'s reviews {versions}, the answers did not all come \
             from {away}",
            f.switch.within_secs
        ));
    } else if f.gateway_opened.values().all(|n| *n == 0) {
        p.push(format!(
            "{away} answered for reviews {versions}, but {}'s gateway opened no connection to \
             them",
            NETWORK_2.name
        ));
    }
    if f.switch.secs.is_some() && f.recovery.secs.is_none() {
        p.push(format!(
            "within {} s of restarting {home}'s reviews {versions}, {home} did not answer again",
            f.recovery.within_secs
        ));
    }
    p
}

/// What came back while a phase went on.
fn meanwhile(p: &Phase) -> String {
    if p.tally.sent == 0 {
        "no request answered before it".into()
    } else {
        format!("{} failed before that, of {}", p.failed, p.tally.line())
    }
}

/// The report of the failover, for people.
pub fn render(f: &Failover) -> String {
    let (home, away) = (NETWORK_1.cluster, NETWORK_2.cluster);
    let versions = f.versions.join(" and ");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "failover       {home}'s reviews {versions} go down (SIGKILL to {}), then come back; \
         requests one after another",
        f.killed.join(", ")
    );
    let _ = writeln!(s, "  before     {}", f.before.line());
    match f.switch.secs {
        Some(t) => {
            let _ = writeln!(
                s,
                "  switch     {t:.2} s from the kill until {away} answered, and every answer since; \
                 {}",
                meanwhile(&f.switch)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "  switch     NOT within {} s: {}",
                f.switch.within_secs,
                meanwhile(&f.switch)
            );
        }
    }
    if f.switch.secs.is_none() {
        return s;
    }
    let opened: Vec<String> = f
        .gateway_opened
        .iter()
        .map(|(d, n)| format!("{d} {n}"))
        .collect();
    let _ = writeln!(s, "  after      {}", f.after.line());
    let _ = writeln!(
        s,
        "             {}'s gateway opened {} since the kill",
        NETWORK_2.name,
        opened.join(", ")
    );
    match f.recovery.secs {
        Some(t) => {
            let _ = writeln!(
                s,
                "  recovery   restarted; {t:.2} s until {home} answered again, and every answer \
                 since; {}",
                meanwhile(&f.recovery)
            );
            let _ = writeln!(s, "  recovered  {}", f.recovered.line());
        }
        None => {
            let _ = writeln!(
                s,
                "  recovery   restarted; NOT within {} s: {}",
                f.recovery.within_secs,
                meanwhile(&f.recovery)
            );
        }
    }
    s
}

/// One request of a phase: when its answer came, since the phase
/// began, what it was, and how it counts.
struct Sample {
    at: Duration,
    answer: Answer,
    /// It did not come back whole.
    failed: bool,
    /// The phase's cluster answered it for a version that moves.
    moved: bool,
}

/// The phase that `samples` show, ended at `end` (the answer that
/// ended it) or not (`None`), and the requests from `end` on.
fn phase(samples: &[Sample], end: Option<usize>, within: Duration) -> (Phase, Tally) {
    let answers = |s: &[Sample]| -> Vec<Answer> { s.iter().map(|s| s.answer.clone()).collect() };
    let upto = end.unwrap_or(samples.len());
    let p = Phase {
        secs: end.map(|i| samples[i].at.as_secs_f64()),
        tally: tally(&answers(&samples[..upto])),
        failed: samples[..upto].iter().filter(|s| s.failed).count(),
        within_secs: within.as_secs(),
    };
    (p, tally(&answers(&samples[upto..])))
}

/// One phase's traffic: requests one after another until a run of them
/// each answered from `cluster` (for `versions`) [`shows`] it, or
/// `within` passes. Fails if a process the demo started exits meanwhile.
async fn drive(
    kids: &mut Children,
    http: &Http,
    url: &str,
    cluster: &str,
    versions: &[&str],
    within: Duration,
) -> anyhow::Result<(Phase, Tally)> {
    let start = Instant::now();
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples: Vec<Sample> = Vec::new();
    // Where the current run of answers as wanted began.
    let mut run = 0;
    while start.elapsed() < within {
        tick.tick().await;
        kids.check().context("during the failover")?;
        let answer = super::get_page(http, url).await;
        let one = tally(std::slice::from_ref(&answer));
        let wanted = answered_from(&one, cluster, versions);
        samples.push(Sample {
            at: start.elapsed(),
            answer,
            failed: one.answered < one.sent || !one.failures.is_empty(),
            moved: versions.iter().any(|v| one.reviews_from(cluster, v) > 0),
        });
        if !wanted {
            run = samples.len();
            continue;
        }
        let streak: Vec<Answer> = samples[run..].iter().map(|s| s.answer.clone()).collect();
        if shows(&tally(&streak), cluster, versions) {
            let end = (run..samples.len()).find(|i| samples[*i].moved);
            return Ok(phase(&samples, end, within));
        }
    }
    Ok(phase(&samples, None, within))
}

/// The failover step: before, kill, switch, restart, recovery.
pub async fn run(
    kids: &mut Children,
    http: &Http,
    topology: &Topology,
    split: Split,
) -> anyhow::Result<Failover> {
    let url = topology.entry_url();
    let versions = moving_versions(split);
    let (home, away) = (NETWORK_1.cluster, NETWORK_2.cluster);
    let killed: Vec<String> = reviews_on(NETWORK_1)
        .iter()
        .flat_map(workload_processes)
        .collect();
    let mut before = Vec::new();
    for _ in 0..STREAK {
        before.push(super::get_page(http, &url).await);
    }
    let gateway = |g: Vec<super::report::GatewayTraffic>| {
        g.into_iter()
            .find(|g| g.network == NETWORK_2.name)
            .unwrap_or_default()
    };
    let gw_before = gateway(super::gateway_traffic(http, topology).await);
    for name in &killed {
        kids.kill(name).await?;
    }
    let (switch, after) = drive(kids, http, &url, away, &versions, SWITCH_WITHIN).await?;
    let mut f = Failover {
        killed: killed.clone(),
        versions: versions.iter().map(|v| v.to_string()).collect(),
        before: tally(&before),
        switch,
        after,
        recovery: Phase {
            within_secs: RECOVER_WITHIN.as_secs(),
            ..Phase::default()
        },
        ..Failover::default()
    };
    let gw_after = gateway(super::gateway_traffic(http, topology).await);
    f.gateway_opened = versions
        .iter()
        .map(|v| {
            let dest = format!("reviews {v}");
            let n = gw_after
                .opened_to(&dest)
                .saturating_sub(gw_before.opened_to(&dest));
            (dest, n)
        })
        .collect();
    // Echo servers first: an agent that is back finds its application.
    for name in &killed {
        kids.restart(name).await?;
    }
    if f.switch.secs.is_some() {
        let (recovery, recovered) =
            drive(kids, http, &url, home, &versions, RECOVER_WITHIN).await?;
        f.recovery = recovery;
        f.recovered = recovered;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::report::test_pages::{page_from, v3_page};

    #[test]
    fn the_versions_that_move_are_cluster_1s_with_weight() {
        assert_eq!(moving_versions(Split([50, 30, 20])), ["v1", "v2"]);
        assert_eq!(moving_versions(Split([0, 80, 20])), ["v2"]);
        assert!(moving_versions(Split([0, 0, 100])).is_empty());
    }

    #[test]
    fn a_phase_ends_on_a_streak_from_the_cluster_with_each_version() {
        let away = "cluster-2";
        let v = ["v1", "v2"];
        // Failed over: v1 and v2 from cluster-2; v3 is there anyway.
        let moved = tally(&[page_from("v1", away)]);
        assert!(answered_from(&moved, away, &v));
        assert!(answered_from(&tally(&[v3_page()]), away, &v));
        // Still from cluster-1, or not answered: not yet.
        assert!(!answered_from(
            &tally(&[page_from("v2", "cluster-1")]),
            away,
            &v
        ));
        assert!(!answered_from(&tally(&[Answer::Status(503)]), away, &v));

        let mut run: Vec<Answer> = vec![v3_page(); STREAK - 2];
        run.push(page_from("v1", away));
        assert!(!shows(&tally(&run), away, &v), "too short");
        run.push(page_from("v1", away));
        assert!(!shows(&tally(&run), away, &v), "no v2 from cluster-2");
        run.push(page_from("v2", away));
        assert!(shows(&tally(&run), away, &v));
        assert!(shows(&tally(&run), away, &["v2"]));
    }

    #[test]
    fn a_phase_ends_at_the_answer_from_the_other_cluster() {
        let sample = |ms: u64, answer: Answer, failed: bool, moved: bool| Sample {
            at: Duration::from_millis(ms),
            answer,
            failed,
            moved,
        };
        let samples = [
            sample(10, Answer::Status(503), true, false),
            sample(30, v3_page(), false, false),
            sample(50, page_from("v1", "cluster-2"), false, true),
            sample(70, page_from("v2", "cluster-2"), false, true),
        ];
        let within = Duration::from_secs(30);
        let (p, after) = phase(&samples, Some(2), within);
        assert_eq!(p.secs, Some(0.05));
        assert_eq!((p.tally.sent, p.tally.answered, p.failed), (2, 1, 1));
        assert_eq!(p.within_secs, 30);
        assert_eq!(after.reviews_clusters(), "cluster-2 v1 1, v2 1");
        // Not ended: everything is the phase's, nothing after it.
        let (p, after) = phase(&samples, None, within);
        assert_eq!((p.secs, p.tally.sent, p.failed), (None, 4, 1));
        assert_eq!(after.sent, 0);
        let (none, _) = phase(&[], None, within);
        assert!(render(&Failover {
            switch: none,
            ..Failover::default()
        })
        .contains("NOT within 30 s: no request answered before it"));
    }

    fn failover(switched: bool, opened: u64, recovered: bool) -> Failover {
        let phase = |done: bool, within| Phase {
            secs: done.then_some(0.4),
            tally: tally(&[Answer::Status(503), v3_page()]),
            failed: 1,
            within_secs: within,
        };
        Failover {
            killed: vec!["echo-reviews-v1-cluster-1".into()],
            versions: vec!["v1".into()],
            before: tally(&[page_from("v1", "cluster-1")]),
            switch: phase(switched, 30),
            after: tally(&[page_from("v1", "cluster-2")]),
            gateway_opened: [("reviews v1".to_string(), opened)].into(),
            recovery: phase(recovered, 60),
            recovered: tally(&[page_from("v1", "cluster-1")]),
        }
    }

    #[test]
    fn problems_name_what_did_not_happen() {
        assert!(problems(&failover(true, 1, true)).is_empty());
        assert_eq!(
            problems(&failover(false, 0, false)),
            ["within 30 s of killing cluster-1's reviews v1, the answers did not all come from cluster-2"]
        );
        assert_eq!(
            problems(&failover(true, 0, true)),
            ["cluster-2 answered for reviews v1, but network-2's gateway opened no connection to them"]
        );
        assert_eq!(
            problems(&failover(true, 2, false)),
            ["within 60 s of restarting cluster-1's reviews v1, cluster-1 did not answer again"]
        );
    }

    #[test]
    fn the_text_has_a_line_per_phase() {
        let text = render(&failover(true, 1, true));
        for want in [
            "failover       cluster-1's reviews v1 go down (SIGKILL to echo-reviews-v1-cluster-1)",
            "  before     1 requests, 1 answered; reviews v1 1, v2 0, v3 0 (cluster-1 v1 1)\n",
            "  switch     0.40 s from the kill until cluster-2 answered, and every answer since; 1 failed before that, of 2 requests, 1 answered",
            "  after      1 requests, 1 answered; reviews v1 1, v2 0, v3 0 (cluster-2 v1 1)\n",
            "network-2's gateway opened reviews v1 1 since the kill",
            "  recovery   restarted; 0.40 s until cluster-1 answered again, and every answer since; 1 failed before that, of 2 requests",
            "  recovered  1 requests, 1 answered; reviews v1 1, v2 0, v3 0 (cluster-1 v1 1)\n",
        ] {
            assert!(text.contains(want), "{want}\nin\n{text}");
        }
        let stuck = render(&failover(false, 0, false));
        assert!(
            stuck.contains(
                "  switch     NOT within 30 s: 1 failed before that, of 2 requests, 1 answered"
            ),
            "{stuck}"
        );
        assert!(!stuck.contains("recovery"), "{stuck}");
        let unrecovered = render(&failover(true, 1, false));
        assert!(
            unrecovered.contains("  recovery   restarted; NOT within 60 s"),
            "{unrecovered}"
        );
    }
}
