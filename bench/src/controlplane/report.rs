//! The side-by-side table: Trellis, etcd, their ratio and the goal each
//! Trellis figure is held to.
use std::fmt::Write;
use std::time::Duration;

use super::load::LoadResult;
use crate::machine::CpuShare;
use crate::process::Usage;
use crate::report::{percentile, STEAL_WARN_PERCENT};

/// Idle RSS every Trellis node must stay under, MiB.
pub const RSS_GOAL_MIB: f64 = 50.0;

/// Everything measured on one system.
#[derive(Clone, Debug)]
pub struct SystemResult {
    pub name: &'static str,
    pub version: String,
    pub transport: &'static str,
    pub load: LoadResult,
    /// VmRSS of each node, idle, before the load.
    pub idle_rss_kib: Vec<u64>,
    /// VmHWM of each node after the load.
    pub peak_rss_kib: Vec<u64>,
    /// CPU and disk writes of all nodes over the load, warm-up included.
    pub load_usage: Usage,
    /// The whole machine's CPU over the load.
    pub load_machine: CpuShare,
    /// Start-up runs of a single fresh node, sorted.
    pub startup: Vec<Duration>,
    /// From SIGKILL of the leader to the first put committed through a
    /// survivor, per run, sorted.
    pub failover: Vec<Duration>,
}

/// How the run was set up, for the heading.
#[derive(Clone, Debug)]
pub struct Setup {
    pub nodes: usize,
    pub connections: usize,
    pub value_size: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub cores: usize,
}

/// One line of the table.
struct Row {
    metric: String,
    trellis: String,
    etcd: String,
    ratio: String,
    goal: String,
}

impl Row {
    fn new(metric: &str, trellis: String, etcd: String) -> Self {
        Self {
            metric: metric.into(),
            trellis,
            etcd,
            ratio: String::new(),
            goal: String::new(),
        }
    }

    /// Adds Trellis/etcd of `t` and `e`.
    fn ratio(mut self, t: f64, e: f64) -> Self {
        self.ratio = if e > 0.0 {
            format!("{:.2}x", t / e)
        } else {
            "-".into()
        };
        self
    }

    fn goal(mut self, goal: &str, met: bool) -> Self {
        self.goal = format!("{goal}: {}", if met { "met" } else { "MISSED" });
        self
    }
}

/// The report: a heading, the table and notes.
pub fn render(setup: &Setup, t: &SystemResult, e: &SystemResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} vs {} {}: {} nodes each on 127.0.0.1, data on the same disk, run one after the other ({} cores)",
        t.name, e.name, e.version, setup.nodes, setup.cores
    );
    let _ = writeln!(
        out,
        "load: {} connections spread over the {} nodes, each doing sequential {}-byte puts to distinct keys; {} s measured after {} s warm-up",
        setup.connections,
        setup.nodes,
        setup.value_size,
        setup.measure.as_secs_f64(),
        setup.warmup.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "clients: {} over {}; {} over {}",
        t.name, t.transport, e.name, e.transport
    );
    let _ = writeln!(out);

    let (tl, el) = (&t.load, &e.load);
    let mut rows = vec![Row::new("", t.name.into(), e.name.into())];
    rows[0].ratio = format!("{}/{}", t.name, e.name);
    rows[0].goal = "goal".into();

    let (tput_t, tput_e) = (tl.per_second(), el.per_second());
    rows.push(
        Row::new(
            "committed puts/s",
            format!("{tput_t:.0}"),
            format!("{tput_e:.0}"),
        )
        .ratio(tput_t, tput_e)
        .goal(">= 1.00x", tput_t >= tput_e),
    );
    for (label, p) in [("p50", 50.0), ("p99", 99.0), ("max", 100.0)] {
        let (a, b) = (tl.percentile(p), el.percentile(p));
        let mut row = Row::new(&format!("{label} commit latency"), fmt_opt(a), fmt_opt(b));
        if let (Some(a), Some(b)) = (a, b) {
            row = row.ratio(a.as_secs_f64(), b.as_secs_f64());
            if label == "p99" {
                row = row.goal("<= 1.00x", a <= b);
            }
        }
        rows.push(row);
    }
    rows.push(Row::new(
        "failed puts in window",
        tl.errors.to_string(),
        el.errors.to_string(),
    ));

    let per_put = |s: &SystemResult| {
        let n = s.load.all_committed.max(1) as f64;
        (
            s.load_usage.cpu.as_secs_f64() * 1e6 / n,
            s.load_usage.disk_write_bytes as f64 / 1024.0 / n,
        )
    };
    let ((cpu_t, disk_t), (cpu_e, disk_e)) = (per_put(t), per_put(e));
    rows.push(
        Row::new(
            "CPU per put, all nodes (us)",
            format!("{cpu_t:.0}"),
            format!("{cpu_e:.0}"),
        )
        .ratio(cpu_t, cpu_e),
    );
    rows.push(
        Row::new(
            "disk writes per put, all nodes (KiB)",
            format!("{disk_t:.1}"),
            format!("{disk_e:.1}"),
        )
        .ratio(disk_t, disk_e),
    );

    let fmt_share = |s: &CpuShare| format!("{:.0} / {:.0}", s.busy, s.steal);
    rows.push(Row::new(
        "machine CPU busy / stolen during load (%)",
        fmt_share(&t.load_machine),
        fmt_share(&e.load_machine),
    ));

    rows.push(Row::new(
        "idle RSS per node (MiB)",
        fmt_mib_list(&t.idle_rss_kib),
        fmt_mib_list(&e.idle_rss_kib),
    ));
    let (idle_t, idle_e) = (max_mib(&t.idle_rss_kib), max_mib(&e.idle_rss_kib));
    rows.push(
        Row::new(
            "idle RSS, largest node (MiB)",
            format!("{idle_t:.1}"),
            format!("{idle_e:.1}"),
        )
        .ratio(idle_t, idle_e)
        .goal(&format!("< {RSS_GOAL_MIB:.0} MiB"), idle_t < RSS_GOAL_MIB),
    );
    let (peak_t, peak_e) = (max_mib(&t.peak_rss_kib), max_mib(&e.peak_rss_kib));
    rows.push(
        Row::new(
            "peak RSS after load, largest node (MiB)",
            format!("{peak_t:.1}"),
            format!("{peak_e:.1}"),
        )
        .ratio(peak_t, peak_e),
    );

    let (start_t, start_e) = (median(&t.startup), median(&e.startup));
    rows.push(
        Row::new(
            &format!(
                "start to first write, 1 node (median of {})",
                t.startup.len()
            ),
            fmt_opt(start_t),
            fmt_opt(start_e),
        )
        .ratio(secs(start_t), secs(start_e)),
    );
    let (fo_t, fo_e) = (median(&t.failover), median(&e.failover));
    let mut row = Row::new(
        &format!(
            "kill -9 leader to first write via a survivor (median of {})",
            t.failover.len()
        ),
        fmt_opt(fo_t),
        fmt_opt(fo_e),
    )
    .ratio(secs(fo_t), secs(fo_e));
    if let (Some(a), Some(b)) = (fo_t, fo_e) {
        row = row.goal("<= 1.00x", a <= b);
    }
    rows.push(row);
    out.push_str(&table(&rows));

    let _ = writeln!(out);
    for s in [t, e] {
        let _ = writeln!(out, "{} start-up runs: {}", s.name, fmt_runs(&s.startup));
    }
    for s in [t, e] {
        let _ = writeln!(out, "{} failover runs: {}", s.name, fmt_runs(&s.failover));
    }
    for s in [t, e] {
        if s.load_machine.steal > STEAL_WARN_PERCENT {
            let _ = writeln!(
                out,
                "WARNING: the hypervisor took {:.0}% of the CPU during the {} load: this run does not compare the two systems; run again",
                s.load_machine.steal, s.name
            );
        }
    }
    for s in [t, e] {
        if let Some(err) = &s.load.first_error {
            let _ = writeln!(out, "{} first failed put: {err}", s.name);
        }
    }
    let _ = writeln!(
        out,
        "note: Trellis clients use mTLS, etcd clients plaintext; latency is per put as the client sees it."
    );
    out
}

fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                r.trellis.clone(),
                r.etcd.clone(),
                r.ratio.clone(),
                r.goal.clone(),
            ]
        })
        .collect();
    crate::table::render(&cells)
}

fn median(sorted: &[Duration]) -> Option<Duration> {
    percentile(sorted, 50.0)
}

fn secs(d: Option<Duration>) -> f64 {
    d.map_or(0.0, |d| d.as_secs_f64())
}

fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn fmt_runs(runs: &[Duration]) -> String {
    runs.iter()
        .map(|d| fmt_duration(*d))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), fmt_duration)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn max_mib(kib: &[u64]) -> f64 {
    kib.iter().copied().max().map_or(0.0, mib)
}

fn fmt_mib_list(kib: &[u64]) -> String {
    kib.iter()
        .map(|&k| format!("{:.1}", mib(k)))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(
        name: &'static str,
        puts: u64,
        lat_ms: u64,
        rss_mib: u64,
        steal: f64,
    ) -> SystemResult {
        SystemResult {
            name,
            version: "3.4.23".into(),
            transport: "gRPC",
            load: LoadResult {
                committed: puts,
                all_committed: puts,
                window: Duration::from_secs(10),
                latencies: vec![Duration::from_millis(lat_ms); 100],
                ..Default::default()
            },
            idle_rss_kib: vec![rss_mib * 1024; 3],
            peak_rss_kib: vec![rss_mib * 2048; 3],
            load_usage: Usage {
                cpu: Duration::from_secs(puts / 1000),
                disk_write_bytes: puts * 4096,
            },
            load_machine: CpuShare { busy: 95.0, steal },
            startup: vec![Duration::from_millis(900); 3],
            failover: vec![
                Duration::from_millis(1100),
                Duration::from_millis(1300),
                Duration::from_millis(1900),
            ],
        }
    }

    fn line<'a>(report: &'a str, metric: &str) -> &'a str {
        report
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric} in\n{report}"))
    }

    #[test]
    fn ratios_and_goals() {
        let setup = Setup {
            nodes: 3,
            connections: 16,
            value_size: 256,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            cores: 2,
        };
        let r = render(
            &setup,
            &system("Trellis", 15_500, 25, 20, 30.0),
            &system("etcd", 31_000, 12, 30, 1.0),
        );
        let tput = line(&r, "committed puts/s");
        assert!(tput.contains("1550") && tput.contains("3100"), "{tput}");
        assert!(tput.contains("0.50x") && tput.contains("MISSED"), "{tput}");
        let p99 = line(&r, "p99 commit latency");
        assert!(p99.contains("25.0 ms") && p99.contains("2.08x"), "{p99}");
        assert!(p99.ends_with("<= 1.00x: MISSED"), "{p99}");
        let rss = line(&r, "idle RSS, largest");
        assert!(
            rss.contains("20.0") && rss.ends_with("< 50 MiB: met"),
            "{rss}"
        );
        let cpu = line(&r, "CPU per put");
        assert!(cpu.contains("  1000  ") && cpu.contains("0.97x"), "{cpu}");
        let disk = line(&r, "disk writes per put");
        assert!(disk.contains("4.0") && disk.contains("1.00x"), "{disk}");
        let fo = line(&r, "kill -9 leader");
        assert!(
            fo.contains("1300 ms") && fo.ends_with("<= 1.00x: met"),
            "{fo}"
        );
        assert!(r.contains("mTLS"));
    }

    #[test]
    fn formats_durations_for_reading() {
        assert_eq!(fmt_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(fmt_duration(Duration::from_millis(1_302)), "1302 ms");
        assert_eq!(fmt_mib_list(&[20_480, 10_240]), "20.0 / 10.0");
    }
}
