//! What the demo's traffic showed: from productpage's answers (echo
//! reports with the calls it made nested under `calls`, and theirs under
//! theirs) to a [`Tally`] of who answered, and the text printed about it.
//! Plain functions over plain data.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use trellis_echo::{Call, Report};

use super::bookinfo::{Split, REVIEWS_VERSIONS};

/// The chance, each side, that a correct mesh answers outside
/// [`expected_range`]: with three versions, a `--once` run fails by bad
/// luck in fewer than one in 100 000.
const TAIL: f64 = 1e-6;

/// How many of `n` answers reviews of weight `weight` (percent) may give
/// before the run counts as misrouted: all of the binomial distribution
/// but its tails of [`TAIL`]. Weights 0 and 100 allow exactly 0 and `n`;
/// a small weight allows 0 when 0 is likely enough.
pub fn expected_range(n: usize, weight: u32) -> (usize, usize) {
    match weight {
        0 => return (0, 0),
        100.. => return (n, n),
        _ => {}
    }
    let p = f64::from(weight) / 100.0;
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    // ln P(X = k), from P(X = 0) = q^n by P(k)/P(k-1) = (n-k+1)/k · p/q,
    // in logs so that a large n does not underflow.
    let mut ln_pmf = n as f64 * ln_q;
    let mut cdf = 0.0;
    let mut lo = None;
    for k in 0..=n {
        if k > 0 {
            ln_pmf += ((n - k + 1) as f64 / k as f64).ln() + ln_p - ln_q;
        }
        cdf += ln_pmf.exp();
        if lo.is_none() && cdf > TAIL {
            lo = Some(k);
        }
        if 1.0 - cdf <= TAIL {
            return (lo.unwrap_or(k), k);
        }
    }
    (lo.unwrap_or(0), n)
}

/// What came back for one request to productpage.
#[derive(Clone, Debug)]
pub enum Answer {
    /// Status 200 with productpage's report.
    Report(Box<Report>),
    /// Any other status, or a body that is not a report.
    Status(u16),
    /// No answer: the reason.
    Error(String),
}

/// Who answered how many requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Requests sent to productpage.
    pub sent: usize,
    /// Answered by productpage with its report.
    pub answered: usize,
    /// productpage's calls to details that details answered.
    pub details: usize,
    /// productpage's calls to reviews answered, by the version that answered.
    pub reviews: BTreeMap<String, usize>,
    /// The same, by the cluster that answered, then the version.
    pub reviews_by_cluster: BTreeMap<String, BTreeMap<String, usize>>,
    /// Answered calls to a workload in another cluster than its caller's
    /// (so on another network: through its gateway), by the callee's
    /// cluster, then `SERVICE VERSION`.
    pub crossed: BTreeMap<String, BTreeMap<String, usize>>,
    /// reviews' calls to ratings that ratings answered, by the version of
    /// reviews that made them.
    pub ratings: BTreeMap<String, usize>,
    /// What went wrong, with how often: `productpage: status 503`,
    /// `productpage → reviews: status 503`, `reviews v2 → ratings: ...`.
    pub failures: BTreeMap<String, usize>,
}

/// Which service a call went to: the callee's report says, else the
/// first segment of the URL's path (bookinfo's `/reviews/0`).
fn callee(call: &Call) -> String {
    if let Some(r) = &call.report {
        return r.workload.service.clone();
    }
    let path = call
        .url
        .split_once("://")
        .map_or(call.url.as_str(), |(_, rest)| rest);
    path.split('/').nth(1).unwrap_or("?").to_string()
}

/// A call that did not come back with a report, as a failure line.
fn failure(call: &Call) -> Option<String> {
    if call.status == Some(200) && call.report.is_some() {
        return None;
    }
    Some(match (&call.status, &call.error) {
        (_, Some(e)) => e.clone(),
        (Some(s), None) => format!("status {s}"),
        (None, None) => "no answer".into(),
    })
}

/// Adds one to `map[outer][inner]`.
fn count(map: &mut BTreeMap<String, BTreeMap<String, usize>>, outer: &str, inner: &str) {
    *map.entry(outer.to_string())
        .or_default()
        .entry(inner.to_string())
        .or_default() += 1;
}

/// Counts the answers.
pub fn tally(answers: &[Answer]) -> Tally {
    let mut t = Tally {
        sent: answers.len(),
        ..Tally::default()
    };
    let mut fail = |what: String| *t.failures.entry(what).or_default() += 1;
    let mut details = 0;
    let mut reviews: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_cluster = BTreeMap::new();
    let mut crossed = BTreeMap::new();
    let mut cross = |from: &Report, to: &Report| {
        if from.workload.cluster != to.workload.cluster {
            let dest = format!("{} {}", to.workload.service, to.workload.version);
            count(&mut crossed, &to.workload.cluster, &dest);
        }
    };
    let mut ratings: BTreeMap<String, usize> = BTreeMap::new();
    let mut answered = 0;
    for a in answers {
        let page = match a {
            Answer::Report(r) => r,
            Answer::Status(s) => {
                fail(format!("productpage: status {s}"));
                continue;
            }
            Answer::Error(e) => {
                fail(format!("productpage: {e}"));
                continue;
            }
        };
        answered += 1;
        for call in &page.calls {
            let to = callee(call);
            if let Some(f) = failure(call) {
                fail(format!("productpage → {to}: {f}"));
                continue;
            }
            let Some(r) = &call.report else { continue };
            cross(page, r);
            match to.as_str() {
                "details" => details += 1,
                "reviews" => {
                    let v = r.workload.version.clone();
                    *reviews.entry(v.clone()).or_default() += 1;
                    count(&mut by_cluster, &r.workload.cluster, &v);
                    for c in &r.calls {
                        let to = callee(c);
                        match (failure(c), &c.report) {
                            (Some(f), _) => fail(format!("reviews {v} → {to}: {f}")),
                            (None, Some(rr)) => {
                                cross(r, rr);
                                if to == "ratings" {
                                    *ratings.entry(v.clone()).or_default() += 1;
                                }
                            }
                            (None, None) => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    t.answered = answered;
    t.details = details;
    t.reviews = reviews;
    t.reviews_by_cluster = by_cluster;
    t.crossed = crossed;
    t.ratings = ratings;
    t
}

impl Tally {
    /// Whether ratings was called by exactly the reviews versions in
    /// `callers`, on every request they answered.
    pub fn ratings_only_from(&self, callers: &[&str]) -> bool {
        self.ratings.keys().all(|v| callers.contains(&v.as_str()))
            && callers
                .iter()
                .all(|v| self.ratings.get(*v).copied().unwrap_or(0) == self.reviews_of(v))
    }

    /// How many requests reviews `version` answered.
    pub fn reviews_of(&self, version: &str) -> usize {
        self.reviews.get(version).copied().unwrap_or(0)
    }

    /// How many requests reviews answered, all versions together.
    pub fn reviews_total(&self) -> usize {
        self.reviews.values().sum()
    }

    /// How many requests reviews `version` in `cluster` answered.
    pub fn reviews_from(&self, cluster: &str, version: &str) -> usize {
        self.reviews_by_cluster
            .get(cluster)
            .and_then(|v| v.get(version))
            .copied()
            .unwrap_or(0)
    }

    /// Answered calls to `dest` (`reviews v3`) in `cluster` from another
    /// cluster.
    pub fn crossed_to(&self, cluster: &str, dest: &str) -> usize {
        self.crossed
            .get(cluster)
            .and_then(|d| d.get(dest))
            .copied()
            .unwrap_or(0)
    }

    /// Who answered reviews, by cluster: `cluster-1 v1 3, v2 1; cluster-2
    /// v3 1`, or `none`.
    pub fn reviews_clusters(&self) -> String {
        let parts: Vec<String> = self
            .reviews_by_cluster
            .iter()
            .map(|(c, vs)| {
                let vs: Vec<String> = vs.iter().map(|(v, n)| format!("{v} {n}")).collect();
                format!("{c} {}", vs.join(", "))
            })
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }

    /// Answers of reviews `versions` from another cluster than `home`: as
    /// long as `home` runs them, locality failover keeps its callers there.
    pub fn locality_problems(&self, home: &str, versions: &[&str]) -> Vec<String> {
        self.reviews_by_cluster
            .iter()
            .filter(|(c, _)| *c != home)
            .flat_map(|(c, vs)| {
                versions
                    .iter()
                    .filter_map(|v| vs.get(*v).map(|n| (c, *v, *n)))
                    .collect::<Vec<_>>()
            })
            .map(|(c, v, n)| {
                format!(
                    "reviews {v} answered {n} from {c} while {home} runs it: locality failover \
                     should keep them in {home}"
                )
            })
            .collect()
    }

    /// Problems that make a `--once` run fail: anything that went wrong,
    /// a version that answered outside its [`expected_range`] (any answer
    /// at all with weight 0), ratings called from the wrong versions.
    pub fn problems(&self, split: Split, ratings_callers: &[&str]) -> Vec<String> {
        let mut p = Vec::new();
        let failed: usize = self.failures.values().sum();
        if failed > 0 {
            p.push(format!("{failed} failed calls"));
        }
        let total = self.reviews_total();
        for v in REVIEWS_VERSIONS {
            let (w, n) = (split.weight(v), self.reviews_of(v));
            let (lo, hi) = expected_range(total, w);
            if w == 0 && n > 0 {
                p.push(format!("reviews {v} has weight 0 but answered {n}"));
            } else if n < lo || n > hi {
                p.push(format!(
                    "reviews {v} answered {n} of {total}; weight {w} expects {lo}-{hi}"
                ));
            }
        }
        if !self.ratings_only_from(ratings_callers) {
            p.push(format!(
                "ratings was called by {:?}, expected exactly reviews {}",
                self.ratings,
                ratings_callers.join(" and ")
            ));
        }
        p
    }

    /// The report, for people: the split of reviews against its weights,
    /// and who called ratings.
    pub fn render(&self, split: Split, ratings_callers: &[&str]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  productpage answered {} of {}; it called details ({} answered) and reviews ({} answered):",
            self.answered,
            self.sent,
            self.details,
            self.reviews_total()
        );
        let total = self.reviews_total();
        for v in REVIEWS_VERSIONS {
            let (n, w) = (self.reviews_of(v), split.weight(v));
            let pct = n * 100 / total.max(1);
            let (lo, hi) = expected_range(total, w);
            let _ = writeln!(
                s,
                "    reviews {v}  {n:>4}  {pct:>3}%  {:<25} weight {w:>3}, expected {lo}-{hi}",
                "#".repeat(pct / 4),
            );
        }
        let _ = writeln!(s, "    by cluster: {}", self.reviews_clusters());
        let calls: Vec<String> = REVIEWS_VERSIONS
            .iter()
            .map(|v| format!("{v} {}", self.ratings.get(*v).copied().unwrap_or(0)))
            .collect();
        let verdict = if self.ratings_only_from(ratings_callers) {
            format!(
                "only reviews {} called ratings, on every request they answered",
                ratings_callers.join(" and ")
            )
        } else {
            format!(
                "NOT as configured: only reviews {} should call ratings",
                ratings_callers.join(" and ")
            )
        };
        let _ = writeln!(
            s,
            "  ratings calls by reviews version: {}: {verdict}",
            calls.join(", ")
        );
        if !self.failures.is_empty() {
            let _ = writeln!(s, "  failures:");
            for (what, n) in &self.failures {
                let _ = writeln!(s, "    {n:>4} × {what}");
            }
        }
        s
    }

    /// One line for a window of light traffic.
    pub fn line(&self) -> String {
        let versions: Vec<String> = REVIEWS_VERSIONS
            .iter()
            .map(|v| format!("{v} {}", self.reviews_of(v)))
            .collect();
        let failed: usize = self.failures.values().sum();
        let mut l = format!(
            "{} requests, {} answered; reviews {} ({})",
            self.sent,
            self.answered,
            versions.join(", "),
            self.reviews_clusters()
        );
        if failed > 0 {
            let first = self.failures.keys().next().map_or("", String::as_str);
            let _ = write!(l, "; {failed} failed calls (e.g. {first})");
        }
        l
    }
}

/// What one network's east-west gateway carried: the connections it
/// opened, by destination (`reviews v3`), from its
/// `istio_tcp_connections_opened_total` samples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GatewayTraffic {
    pub network: String,
    /// Where other networks reach it.
    pub address: String,
    pub opened: BTreeMap<String, u64>,
}

impl GatewayTraffic {
    /// From the gateway's Prometheus text: each
    /// `istio_tcp_connections_opened_total{...}` sample, added up by its
    /// `destination_service` (first label of the host) and
    /// `destination_version`.
    pub fn from_metrics(network: &str, address: &str, metrics: &str) -> Self {
        let mut opened: BTreeMap<String, u64> = BTreeMap::new();
        for l in metrics.lines() {
            let Some(rest) = l.strip_prefix("istio_tcp_connections_opened_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                let len = labels[start..].find('"')?;
                Some(&labels[start..start + len])
            };
            let (Some(service), Some(n)) = (
                label("destination_service"),
                value.trim().parse::<f64>().ok(),
            ) else {
                continue;
            };
            let service = service.split('.').next().unwrap_or(service);
            let dest = match label("destination_version") {
                Some(v) if !v.is_empty() && v != "unknown" => format!("{service} {v}"),
                _ => service.to_string(),
            };
            *opened.entry(dest).or_default() += n as u64;
        }
        Self {
            network: network.into(),
            address: address.into(),
            opened,
        }
    }

    /// Connections opened to `dest` (`reviews v3`).
    pub fn opened_to(&self, dest: &str) -> u64 {
        self.opened.get(dest).copied().unwrap_or(0)
    }
}

/// A call that crosses networks: to `dest` (`reviews v3`) behind
/// `network`'s gateway, made `calls` times by the traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub network: String,
    pub dest: String,
    pub calls: usize,
}

/// The report of what crossed a gateway, for people.
pub fn render_crossings(crossings: &[Crossing], gateways: &[GatewayTraffic]) -> String {
    let mut s = String::from(
        "  crossed a gateway (connections each network's east-west gateway opened):\n",
    );
    for g in gateways {
        let opened: Vec<String> = g.opened.iter().map(|(d, n)| format!("{d} {n}")).collect();
        let opened = if opened.is_empty() {
            "none".to_string()
        } else {
            opened.join(", ")
        };
        let _ = writeln!(s, "    {} gateway {}: {opened}", g.network, g.address);
    }
    for c in crossings {
        let _ = writeln!(
            s,
            "    {} answered calls to {} went through {}'s gateway",
            c.calls, c.dest, c.network
        );
    }
    s
}

/// Problems with the crossings: a destination that answered calls from
/// another network while its network's gateway opened no connection to it.
pub fn crossing_problems(crossings: &[Crossing], gateways: &[GatewayTraffic]) -> Vec<String> {
    crossings
        .iter()
        .filter(|c| c.calls > 0)
        .filter(|c| {
            !gateways
                .iter()
                .any(|g| g.network == c.network && g.opened_to(&c.dest) > 0)
        })
        .map(|c| {
            format!(
                "{} answered {} calls from another network, but {}'s gateway opened no connection to it",
                c.dest, c.calls, c.network
            )
        })
        .collect()
}

/// Productpage's answers as the demo's echo servers give them, for the
/// tests of this module and of the failover's.
#[cfg(test)]
pub(crate) mod test_pages {
    use std::collections::BTreeMap;

    use trellis_echo::{Call, Report, Responder};

    use super::Answer;

    /// Where the demo runs it: reviews v3 in cluster-2, the rest (as
    /// long as nothing failed over) in cluster-1.
    pub(crate) fn home(service: &str, version: &str) -> &'static str {
        if (service, version) == ("reviews", "v3") {
            "cluster-2"
        } else {
            "cluster-1"
        }
    }

    pub(crate) fn report(service: &str, version: &str, calls: Vec<Call>) -> Report {
        report_in(service, version, home(service, version), calls)
    }

    pub(crate) fn report_in(
        service: &str,
        version: &str,
        cluster: &str,
        calls: Vec<Call>,
    ) -> Report {
        Report {
            workload: Responder {
                service: service.into(),
                version: version.into(),
                identity: String::new(),
                cluster: cluster.into(),
            },
            host: String::new(),
            method: "GET".into(),
            path: "/".into(),
            proto: "HTTP/1.1".into(),
            headers: BTreeMap::new(),
            body_bytes: 0,
            calls,
        }
    }

    pub(crate) fn ok(service: &str, version: &str, calls: Vec<Call>) -> Call {
        ok_in(service, version, home(service, version), calls)
    }

    pub(crate) fn ok_in(service: &str, version: &str, cluster: &str, calls: Vec<Call>) -> Call {
        Call {
            url: format!("http://127.0.10.1:1/{service}/0"),
            status: Some(200),
            report: Some(report_in(service, version, cluster, calls)),
            error: None,
        }
    }

    pub(crate) fn failed(service: &str, status: Option<u16>, error: Option<&str>) -> Call {
        Call {
            url: format!("http://127.0.10.1:1/{service}/0"),
            status,
            report: None,
            error: error.map(str::to_string),
        }
    }

    pub(crate) fn page(reviews: Call) -> Answer {
        Answer::Report(Box::new(report(
            "productpage",
            "v1",
            vec![ok("details", "v1", vec![]), reviews],
        )))
    }

    pub(crate) fn v1() -> Call {
        ok("reviews", "v1", vec![])
    }

    pub(crate) fn with_ratings(v: &str) -> Call {
        ok("reviews", v, vec![ok("ratings", "v1", vec![])])
    }

    /// A page whose reviews `version` answered from `cluster` (v2 and v3
    /// with ratings' answer).
    pub(crate) fn page_from(version: &str, cluster: &str) -> Answer {
        let ratings = if version == "v1" {
            vec![]
        } else {
            vec![ok("ratings", "v1", vec![])]
        };
        page(ok_in("reviews", version, cluster, ratings))
    }

    pub(crate) fn v3_page() -> Answer {
        page(with_ratings("v3"))
    }
}

#[cfg(test)]
mod tests {
    use super::test_pages::*;
    use super::*;

    fn map(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn tallies() {
        struct Case {
            name: &'static str,
            answers: Vec<Answer>,
            answered: usize,
            details: usize,
            reviews: &'static [(&'static str, usize)],
            ratings: &'static [(&'static str, usize)],
            failures: &'static [(&'static str, usize)],
            ratings_ok: bool,
        }
        let cases = [
            Case {
                name: "nothing sent",
                answers: vec![],
                answered: 0,
                details: 0,
                reviews: &[],
                ratings: &[],
                failures: &[],
                ratings_ok: true,
            },
            Case {
                name: "every version, ratings from v2 and v3",
                answers: vec![
                    page(v1()),
                    page(with_ratings("v2")),
                    page(v1()),
                    page(with_ratings("v3")),
                ],
                answered: 4,
                details: 4,
                reviews: &[("v1", 2), ("v2", 1), ("v3", 1)],
                ratings: &[("v2", 1), ("v3", 1)],
                failures: &[],
                ratings_ok: true,
            },
            Case {
                name: "v1 calling ratings is not as configured",
                answers: vec![page(with_ratings("v1")), page(with_ratings("v2"))],
                answered: 2,
                details: 2,
                reviews: &[("v1", 1), ("v2", 1)],
                ratings: &[("v1", 1), ("v2", 1)],
                failures: &[],
                ratings_ok: false,
            },
            Case {
                name: "failures at every depth",
                answers: vec![
                    Answer::Status(503),
                    Answer::Error("connection refused".into()),
                    page(failed("reviews", Some(503), None)),
                    page(ok(
                        "reviews",
                        "v3",
                        vec![failed("ratings", None, Some("no complete answer"))],
                    )),
                    Answer::Report(Box::new(report(
                        "productpage",
                        "v1",
                        vec![failed("details", None, Some("refused")), with_ratings("v2")],
                    ))),
                ],
                answered: 3,
                details: 2,
                reviews: &[("v2", 1), ("v3", 1)],
                ratings: &[("v2", 1)],
                failures: &[
                    ("productpage: status 503", 1),
                    ("productpage: connection refused", 1),
                    ("productpage → reviews: status 503", 1),
                    ("productpage → details: refused", 1),
                    ("reviews v3 → ratings: no complete answer", 1),
                ],
                // v3 answered a request without ratings' answer.
                ratings_ok: false,
            },
        ];
        for c in cases {
            let t = tally(&c.answers);
            assert_eq!(t.sent, c.answers.len(), "{}", c.name);
            assert_eq!(t.answered, c.answered, "{}", c.name);
            assert_eq!(t.details, c.details, "{}", c.name);
            assert_eq!(t.reviews, map(c.reviews), "{}", c.name);
            assert_eq!(t.ratings, map(c.ratings), "{}", c.name);
            assert_eq!(t.failures, map(c.failures), "{}", c.name);
            assert_eq!(
                t.ratings_only_from(&["v2", "v3"]),
                c.ratings_ok,
                "{}",
                c.name
            );
        }
    }

    /// P(X = k) for X ~ Binomial(n, p), by Pascal's triangle: another
    /// way than the one under test.
    fn pmf(n: usize, p: f64) -> Vec<f64> {
        let mut row = vec![1.0];
        for _ in 0..n {
            let mut next = vec![0.0; row.len() + 1];
            for (k, x) in row.iter().enumerate() {
                next[k] += x * (1.0 - p);
                next[k + 1] += x * p;
            }
            row = next;
        }
        row
    }

    #[test]
    fn expected_ranges_leave_out_only_the_unlikely_tails() {
        assert_eq!(expected_range(100, 0), (0, 0));
        assert_eq!(expected_range(100, 100), (100, 100));
        assert_eq!(expected_range(0, 30), (0, 0));
        for n in [1, 7, 60, 200] {
            for w in [1, 5, 20, 30, 50, 70, 99] {
                let (lo, hi) = expected_range(n, w);
                let pmf = pmf(n, f64::from(w) / 100.0);
                let below: f64 = pmf[..lo].iter().sum();
                let above: f64 = pmf[hi + 1..].iter().sum();
                assert!(below <= TAIL && above <= TAIL, "n {n} w {w}: {lo}..={hi}");
                // The range is the smallest such: one step in is too far.
                assert!(lo == 0 || below + pmf[lo] > TAIL, "n {n} w {w}: lo {lo}");
                assert!(above + pmf[hi] > TAIL, "n {n} w {w}: hi {hi}");
            }
        }
        // Symmetric weights, symmetric ranges.
        let (lo, hi) = expected_range(100, 50);
        assert_eq!(lo + hi, 100);
        // A small weight may answer nothing; 20 of 100 may not.
        assert_eq!(expected_range(100, 1).0, 0);
        assert!(expected_range(100, 20).0 > 0);
        // Large runs do not underflow.
        let (lo, hi) = expected_range(1_000_000, 50);
        assert!((497_000..500_000).contains(&lo) && (500_000..503_000).contains(&hi));
    }

    #[test]
    fn problems_and_text() {
        let t = tally(&[
            page(v1()),
            page(with_ratings("v2")),
            page(with_ratings("v3")),
        ]);
        let callers = ["v2", "v3"];
        assert!(t.problems(Split([50, 30, 20]), &callers).is_empty());
        assert_eq!(
            t.problems(Split([100, 0, 0]), &callers),
            [
                "reviews v1 answered 1 of 3; weight 100 expects 3-3",
                "reviews v2 has weight 0 but answered 1",
                "reviews v3 has weight 0 but answered 1"
            ]
        );
        let skewed = tally(&vec![page(v1()); 100]);
        assert_eq!(
            skewed.problems(Split([80, 20, 0]), &callers),
            [
                "reviews v1 answered 100 of 100; weight 80 expects 59-96",
                "reviews v2 answered 0 of 100; weight 20 expects 4-41"
            ]
        );
        let text = t.render(Split([50, 30, 20]), &callers);
        assert!(text.contains("productpage answered 3 of 3"), "{text}");
        assert!(text.contains("reviews v1     1   33%  ########"), "{text}");
        assert!(
            text.contains("v1 0, v2 1, v3 1: only reviews v2 and v3 called ratings"),
            "{text}"
        );
        assert_eq!(
            t.line(),
            "3 requests, 3 answered; reviews v1 1, v2 1, v3 1 \
             (cluster-1 v1 1, v2 1; cluster-2 v3 1)"
        );
        assert!(
            text.contains("    by cluster: cluster-1 v1 1, v2 1; cluster-2 v3 1\n"),
            "{text}"
        );

        let bad = tally(&[Answer::Status(503), page(v1())]);
        assert_eq!(
            bad.problems(Split([100, 0, 0]), &callers),
            ["1 failed calls"]
        );
        assert!(bad
            .render(Split([100, 0, 0]), &callers)
            .contains("1 × productpage: status 503"));
        assert!(bad
            .line()
            .ends_with("1 failed calls (e.g. productpage: status 503)"));
    }

    #[test]
    fn clusters_that_answered_and_calls_that_crossed_are_counted() {
        // v3 in cluster-2 calls ratings back in cluster-1; then cluster-1's
        // v2 has failed over to cluster-2's, which calls ratings too.
        let failed_over = page(ok_in(
            "reviews",
            "v2",
            "cluster-2",
            vec![ok("ratings", "v1", vec![])],
        ));
        let t = tally(&[page(with_ratings("v3")), page(v1()), failed_over]);
        assert_eq!(t.reviews_from("cluster-2", "v3"), 1);
        assert_eq!(t.reviews_from("cluster-2", "v2"), 1);
        assert_eq!(t.reviews_from("cluster-1", "v1"), 1);
        assert_eq!(t.reviews_from("cluster-1", "v2"), 0);
        assert_eq!(t.reviews_clusters(), "cluster-1 v1 1; cluster-2 v2 1, v3 1");
        assert_eq!(t.crossed_to("cluster-2", "reviews v3"), 1);
        assert_eq!(t.crossed_to("cluster-2", "reviews v2"), 1);
        assert_eq!(t.crossed_to("cluster-1", "ratings v1"), 2);
        // productpage → details stays in cluster-1, as does v1.
        assert_eq!(t.crossed_to("cluster-1", "details v1"), 0);
        assert_eq!(t.crossed.len(), 2, "{:?}", t.crossed);
        assert_eq!(
            t.locality_problems("cluster-1", &["v1", "v2"]),
            [
                "reviews v2 answered 1 from cluster-2 while cluster-1 runs it: locality \
              failover should keep them in cluster-1"
            ]
        );
        assert!(t.locality_problems("cluster-1", &["v1"]).is_empty());
        assert_eq!(tally(&[]).reviews_clusters(), "none");
    }

    #[test]
    fn gateway_connections_by_destination_and_crossings_without_them() {
        let metrics = "# TYPE istio_tcp_connections_opened_total counter\n\
            istio_tcp_connections_opened_total{reporter=\"gateway\",destination_service=\"reviews.default.svc.cluster.local\",destination_version=\"v3\"} 2\n\
            istio_tcp_connections_opened_total{reporter=\"gateway\",source_principal=\"a\",destination_service=\"reviews.default.svc.cluster.local\",destination_version=\"v3\"} 1\n\
            istio_tcp_connections_opened_total{reporter=\"gateway\",destination_service=\"ratings.default.svc.cluster.local\",destination_version=\"unknown\"} 4\n\
            istio_tcp_connections_closed_total{reporter=\"gateway\",destination_service=\"details.default.svc.cluster.local\"} 9\n";
        let g = GatewayTraffic::from_metrics("network-2", "127.20.10.200:15443", metrics);
        assert_eq!(
            g.opened,
            [("ratings".to_string(), 4), ("reviews v3".to_string(), 3)].into()
        );
        assert_eq!(g.opened_to("details"), 0);

        let crossing = |network: &str, dest: &str, calls| Crossing {
            network: network.into(),
            dest: dest.into(),
            calls,
        };
        let gateways = [g, GatewayTraffic::from_metrics("network-1", "x:15443", "")];
        let ok = [
            crossing("network-2", "reviews v3", 5),
            crossing("network-1", "ratings v1", 0),
        ];
        assert_eq!(crossing_problems(&ok, &gateways), Vec::<String>::new());
        let text = render_crossings(&ok, &gateways);
        assert!(
            text.contains("network-2 gateway 127.20.10.200:15443: ratings 4, reviews v3 3"),
            "{text}"
        );
        assert!(text.contains("network-1 gateway x:15443: none"), "{text}");
        // Answers from another network without its gateway carrying them.
        let bad = [
            crossing("network-1", "ratings v1", 2),
            crossing("network-1", "reviews v3", 1),
        ];
        assert_eq!(crossing_problems(&bad, &gateways).len(), 2);
    }
}
