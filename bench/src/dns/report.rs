//! The tables of `trellis-bench dns`: for mesh names and for forwarded
//! names, Trellis and dnsmasq side by side with the ratio of Trellis's
//! figure to dnsmasq's; then the memory of each.
use std::fmt::Write;
use std::time::Duration;

use super::dnsperf::Perf;
use super::Names;
use crate::machine::CpuShare;
use crate::pace::Pace;
use crate::report::{percentile, STEAL_WARN_PERCENT};
use crate::table::{self, thousands};

/// What one phase measured on one system.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    pub perf: Perf,
    /// CPU time of the server process over the measured run.
    pub cpu: Duration,
    /// The whole machine over the measured run.
    pub machine: CpuShare,
}

impl PhaseResult {
    fn cpu_per_query(&self) -> Option<Duration> {
        (self.perf.completed > 0).then(|| self.cpu.div_f64(self.perf.completed as f64))
    }
}

/// Everything measured on one system.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub name: &'static str,
    pub version: String,
    /// One per pace of [`Setup::paces`], in that order.
    pub mesh: Vec<PhaseResult>,
    pub forwarded: Vec<PhaseResult>,
    /// VmRSS before any load, and VmHWM after all of them.
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl Measured {
    pub fn runs_mut(&mut self, n: Names) -> &mut Vec<PhaseResult> {
        match n {
            Names::Mesh => &mut self.mesh,
            Names::Forwarded => &mut self.forwarded,
        }
    }

    fn runs(&self, n: Names) -> &[PhaseResult] {
        match n {
            Names::Mesh => &self.mesh,
            Names::Forwarded => &self.forwarded,
        }
    }
}

/// How the run was set up, for the headings.
#[derive(Clone, Debug)]
pub struct Setup {
    pub paces: Vec<Pace>,
    pub names: usize,
    pub outstanding: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub cores: usize,
    pub dnsperf: String,
}

pub fn names_title(n: Names) -> &'static str {
    match n {
        Names::Mesh => "mesh names",
        Names::Forwarded => "forwarded names",
    }
}

pub fn pace_name(p: Pace) -> String {
    match p {
        Pace::Rate(r) => format!("{} qps", thousands(u64::from(r))),
        Pace::Max => "max throughput".into(),
    }
}

/// The report. `m` is Trellis, then dnsmasq.
pub fn render(setup: &Setup, m: &[Measured]) -> String {
    let [t, d] = m else {
        panic!("render takes Trellis and dnsmasq");
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "DNS over UDP on loopback, load from dnsperf {}: Trellis agent {} (1 worker thread) vs dnsmasq {}, one loaded at a time ({} cores)",
        setup.dnsperf, t.version, d.version, setup.cores
    );
    let _ = writeln!(
        out,
        "each phase: {} s measured after {} s warm-up; fixed rates: latency of every answer, at most {} queries outstanding; max throughput: {} queries always outstanding",
        setup.measure.as_secs_f64(),
        setup.warmup.as_secs_f64(),
        setup.outstanding,
        setup.outstanding
    );
    for (names, heading) in [
        (
            Names::Mesh,
            "(a) mesh names, answered by the server itself (dnsmasq: from a hosts file)",
        ),
        (
            Names::Forwarded,
            "(b) other names, forwarded to a local upstream (dnsmasq with --cache-size=0, so both forward every query)",
        ),
    ] {
        let _ = writeln!(out);
        let _ = writeln!(out, "{heading}: {} names in turn", setup.names);
        out.push_str(&table::render(&rows(setup, names, t, d)));
    }
    let _ = writeln!(out);
    out.push_str(&table::render(&[
        header("memory", t, d),
        row(
            "RSS before load (MB)",
            mb(t.idle_rss_kib),
            mb(d.idle_rss_kib),
            1,
        ),
        row(
            "peak RSS after all loads (MB)",
            mb(t.peak_rss_kib),
            mb(d.peak_rss_kib),
            1,
        ),
    ]));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "ratio = Trellis/dnsmasq; CPU per query is the server process's, in us (also ms per 1,000 queries)"
    );
    for s in [t, d] {
        for names in [Names::Mesh, Names::Forwarded] {
            let steal = worst_steal(s.runs(names));
            if steal > STEAL_WARN_PERCENT {
                let _ = writeln!(
                    out,
                    "WARNING: the hypervisor took up to {steal:.0}% of the CPU during the {} loads of {}: this run does not compare the systems; run again",
                    s.name,
                    names_title(names)
                );
            }
        }
    }
    out
}

fn rows(setup: &Setup, names: Names, t: &Measured, d: &Measured) -> Vec<[String; 4]> {
    let (tr, dr) = (t.runs(names), d.runs(names));
    let mut rows = vec![header("", t, d)];
    for (i, &pace) in setup.paces.iter().enumerate() {
        let (Some(a), Some(b)) = (tr.get(i), dr.get(i)) else {
            continue;
        };
        match pace {
            Pace::Rate(_) => {
                for p in [50.0, 90.0, 99.0] {
                    let at = |r: &PhaseResult| percentile(&r.perf.latencies, p);
                    rows.push(duration_row(
                        &format!("p{p:.0} at {}", pace_name(pace)),
                        at(a),
                        at(b),
                        |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
                    ));
                }
            }
            Pace::Max => {
                rows.push(row("max throughput (qps)", a.perf.qps, b.perf.qps, 0));
                rows.push(duration_row(
                    "mean latency at max throughput",
                    Some(a.perf.avg_latency),
                    Some(b.perf.avg_latency),
                    |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
                ));
            }
        }
    }
    for (i, &pace) in setup.paces.iter().enumerate() {
        let cpu = |r: &[PhaseResult]| r.get(i).and_then(PhaseResult::cpu_per_query);
        rows.push(duration_row(
            &format!("CPU/query at {} (us)", pace_name(pace)),
            cpu(tr),
            cpu(dr),
            |d| format!("{:.1}", d.as_secs_f64() * 1e6),
        ));
    }
    let failed = |r: &[PhaseResult]| r.iter().map(|p| p.perf.failed()).sum::<u64>().to_string();
    rows.push([
        "failed or lost queries, all phases".into(),
        failed(tr),
        failed(dr),
        String::new(),
    ]);
    rows.push([
        "machine CPU stolen, worst phase (%)".into(),
        format!("{:.0}", worst_steal(tr)),
        format!("{:.0}", worst_steal(dr)),
        String::new(),
    ]);
    let busy = |r: &[PhaseResult]| {
        let max = setup.paces.iter().position(|p| *p == Pace::Max);
        max.and_then(|i| r.get(i))
            .map_or("-".into(), |p| format!("{:.0}", p.machine.busy))
    };
    rows.push([
        "machine CPU busy at max throughput (%)".into(),
        busy(tr),
        busy(dr),
        String::new(),
    ]);
    rows
}

fn header(metric: &str, t: &Measured, d: &Measured) -> [String; 4] {
    [
        metric.into(),
        t.name.into(),
        d.name.into(),
        format!("{}/{}", t.name, d.name),
    ]
}

/// Two figures with `decimals` and their ratio.
fn row(metric: &str, t: f64, d: f64, decimals: usize) -> [String; 4] {
    [
        metric.into(),
        format!("{t:.decimals$}"),
        format!("{d:.decimals$}"),
        ratio(Some(t), Some(d)),
    ]
}

fn duration_row(
    metric: &str,
    t: Option<Duration>,
    d: Option<Duration>,
    fmt: impl Fn(Duration) -> String,
) -> [String; 4] {
    let secs = |x: Option<Duration>| x.map(|x| x.as_secs_f64());
    [
        metric.into(),
        t.map_or("-".into(), &fmt),
        d.map_or("-".into(), &fmt),
        ratio(secs(t), secs(d)),
    ]
}

fn ratio(t: Option<f64>, d: Option<f64>) -> String {
    match (t, d) {
        (Some(t), Some(d)) if d > 0.0 => format!("{:.2}x", t / d),
        _ => "-".into(),
    }
}

fn worst_steal(runs: &[PhaseResult]) -> f64 {
    runs.iter().map(|r| r.machine.steal).fold(0.0, f64::max)
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(lat_us: &[u64], completed: u64, qps: f64, cpu_ms: u64) -> PhaseResult {
        PhaseResult {
            perf: Perf {
                sent: completed,
                completed,
                noerror: completed,
                qps,
                avg_latency: Duration::from_micros(lat_us[lat_us.len() / 2]),
                latencies: lat_us.iter().map(|&u| Duration::from_micros(u)).collect(),
                ..Default::default()
            },
            cpu: Duration::from_millis(cpu_ms),
            machine: CpuShare {
                busy: 90.0,
                steal: 0.0,
            },
        }
    }

    fn system(name: &'static str, lat: u64, qps: f64) -> Measured {
        let runs = vec![
            phase(&[lat, lat, 2 * lat], 10_000, 1000.0, 200),
            phase(&[lat], 100_000, qps, 1000),
        ];
        Measured {
            name,
            version: "1".into(),
            mesh: runs.clone(),
            forwarded: runs,
            idle_rss_kib: 4000,
            peak_rss_kib: 8000,
        }
    }

    /// The figures of the first line about `metric`.
    fn cells<'a>(report: &'a str, metric: &str) -> Vec<&'a str> {
        let line = report
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric} in\n{report}"));
        line[metric.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn figures_side_by_side_with_their_ratio() {
        let setup = Setup {
            paces: vec![Pace::Rate(1000), Pace::Max],
            names: 100,
            outstanding: 100,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            cores: 2,
            dnsperf: "2.10.0".into(),
        };
        let mut d = system("dnsmasq", 100, 50_000.0);
        d.forwarded[0].perf.lost = 3;
        let r = render(&setup, &[system("Trellis", 50, 60_000.0), d]);
        assert_eq!(
            cells(&r, "p50 at 1,000 qps"),
            ["0.050 ms", "0.100 ms", "0.50x"]
        );
        assert_eq!(
            cells(&r, "p99 at 1,000 qps"),
            ["0.100 ms", "0.200 ms", "0.50x"]
        );
        assert_eq!(
            cells(&r, "max throughput (qps)"),
            ["60000", "50000", "1.20x"]
        );
        // 200 ms over 10,000 queries: 20 us each.
        assert_eq!(
            cells(&r, "CPU/query at 1,000 qps (us)"),
            ["20.0", "20.0", "1.00x"]
        );
        assert_eq!(
            cells(&r, "peak RSS after all loads (MB)"),
            ["8.2", "8.2", "1.00x"]
        );
        let failed: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("failed or lost queries"))
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(failed, ["0", "3"], "dnsmasq lost 3 forwarded queries:\n{r}");
        assert_eq!(
            r.matches("p50 at 1,000 qps").count(),
            2,
            "both sets of names"
        );
        assert!(!r.contains("WARNING"));
    }
}
