//! The table of `trellis-bench eastwest`: the gateway hop without a
//! gateway (the baseline), through `trellis-eastwest` and through Envoy,
//! side by side; latency added over the baseline, Trellis's figure against
//! Envoy's and the goal it is held to. The rows are those of `proxy`'s
//! tables, and judged the same way.
use std::fmt::Write;
use std::time::Duration;

use super::sink::Carried;
use crate::pace::Pace;
use crate::proxy::load::PhaseResult;
use crate::proxy::report::{
    count_goals, fmt_ratio, goal, latency_row, mb, met, pace_name, table, Row, ADDED_GOAL,
    THROUGHPUT_GOAL,
};
use crate::report::{percentile, STEAL_WARN_PERCENT};

/// Peak RSS the gateway must stay under, MB (10^6 bytes).
pub const RSS_GOAL_MB: f64 = 15.0;

/// Everything measured through one path: no gateway, Trellis's, Envoy's.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub name: &'static str,
    pub version: String,
    /// One per rate of [`Setup::rates`], in that order.
    pub latency: Vec<PhaseResult>,
    /// New connections, every round.
    pub connections: Carried,
    /// The transfer.
    pub transfer: Carried,
    /// VmRSS of the gateway before any load, and VmHWM after all (none
    /// without a gateway).
    pub idle_rss_kib: Option<u64>,
    pub peak_rss_kib: Option<u64>,
}

/// How the run was set up, for the headings.
#[derive(Clone, Debug)]
pub struct Setup {
    pub rates: Vec<u32>,
    pub connections: usize,
    pub conn_workers: usize,
    pub transfer_bytes: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub rounds: u32,
    pub cores: usize,
}

pub fn render(setup: &Setup, m: &[Measured]) -> String {
    let [d, t, e] = m else {
        panic!("render takes the baseline, Trellis and Envoy");
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "client -> agent (net-a) -> [east-west gateway] -> agent -> trellis-echo / sink, all on loopback (127.x addresses stand for the networks): {} {} vs {} {}, each gateway with 1 worker thread, one path loaded at a time ({} cores)",
        t.name, t.version, e.name, e.version, setup.cores
    );
    let _ = writeln!(
        out,
        "each load: {} s measured in {} round(s), the paths taking turns, each round after {} s warm-up; fixed rates are open loop over {} keep-alive HTTP/1.1 connections (GET /plain), latency counted from each request's scheduled send time",
        setup.measure.as_secs_f64(),
        setup.rounds,
        setup.warmup.as_secs_f64(),
        setup.connections
    );
    let _ = writeln!(out);
    let rows = rows(setup, d, t, e);
    let mut judged = (0, 0);
    count_goals(&rows, &mut judged);
    out.push_str(&table(&rows));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "goals met: {} of {}; added = over no gateway (the agents the same); CPU is the gateway process's",
        judged.0, judged.1
    );
    for s in [d, t, e] {
        let steal = s
            .latency
            .iter()
            .map(|r| r.machine.steal)
            .fold(0.0, f64::max);
        if steal > STEAL_WARN_PERCENT {
            let _ = writeln!(
                out,
                "WARNING: the hypervisor took up to {steal:.0}% of the CPU during the loads through {}: this run is noisier than usual; run again to compare",
                s.name
            );
        }
        let first = s
            .latency
            .iter()
            .find_map(|r| r.first_error.as_ref())
            .or(s.connections.first_error.as_ref())
            .or(s.transfer.first_error.as_ref());
        if let Some(err) = first {
            let _ = writeln!(out, "{} first failure: {err}", s.name);
        }
    }
    out
}

fn rows(setup: &Setup, d: &Measured, t: &Measured, e: &Measured) -> Vec<Row> {
    let row = |metric: String, cells: [String; 3], ratio: Option<f64>, judged: String| Row {
        cells: {
            let [a, b, c] = cells;
            [metric, a, b, c, fmt_ratio(ratio), judged]
        },
    };
    let mut rows = vec![row(
        String::new(),
        [d.name.into(), t.name.into(), e.name.into()],
        None,
        "goal".into(),
    )];
    rows[0].cells[4] = format!("{}/{}", t.name, e.name);
    for (i, &rate) in setup.rates.iter().enumerate() {
        for (label, pct) in [("p50", 50.0), ("p99", 99.0)] {
            let lat = |m: &Measured| m.latency.get(i).and_then(|r| percentile(&r.latencies, pct));
            rows.push(latency_row(
                &format!("{label} at {}", pace_name(Pace::Rate(rate))),
                lat(d),
                lat(t),
                lat(e),
            ));
        }
    }
    let ratio = |a: f64, b: f64| (b > 0.0 && a >= 0.0).then(|| a / b);
    let cps = |m: &Measured| m.connections.per_second();
    rows.push(row(
        format!(
            "new connections/s ({} closed-loop workers)",
            setup.conn_workers
        ),
        [d, t, e].map(|m| format!("{:.0}", cps(m))),
        ratio(cps(t), cps(e)),
        String::new(),
    ));
    let per_conn = |m: &Measured| m.connections.cpu_per(1.0);
    rows.push(cpu_row(
        "CPU/connection, gateway (us)",
        per_conn(t),
        per_conn(e),
        1e6,
    ));
    let mbps = |m: &Measured| m.transfer.per_second() / 1e6;
    let (tt, te) = (mbps(t), mbps(e));
    rows.push(row(
        format!(
            "{:.2} GB transfer, one connection (MB/s)",
            setup.transfer_bytes as f64 / 1e9
        ),
        [d, t, e].map(|m| format!("{:.0}", mbps(m))),
        ratio(tt, te),
        goal(">=", THROUGHPUT_GOAL, ratio(tt, te)),
    ));
    let per_gb = |m: &Measured| m.transfer.cpu_per(1e9);
    rows.push(cpu_row("CPU/GB, gateway (ms)", per_gb(t), per_gb(e), 1e3));
    let rss = |k: Option<u64>| k.map_or("-".into(), |k| format!("{:.1}", mb(k)));
    rows.push(row(
        "RSS before load, gateway (MB)".into(),
        ["-".into(), rss(t.idle_rss_kib), rss(e.idle_rss_kib)],
        None,
        String::new(),
    ));
    let (pt, pe) = (t.peak_rss_kib.map(mb), e.peak_rss_kib.map(mb));
    rows.push(row(
        "peak RSS after all loads, gateway (MB)".into(),
        ["-".into(), rss(t.peak_rss_kib), rss(e.peak_rss_kib)],
        pt.zip(pe).and_then(|(a, b)| ratio(a, b)),
        pt.map_or(String::new(), |v| {
            met(&format!("< {RSS_GOAL_MB:.0} MB"), v < RSS_GOAL_MB)
        }),
    ));
    let failed = |m: &Measured| {
        let n = m.latency.iter().map(|r| r.errors).sum::<u64>()
            + m.connections.errors
            + m.transfer.errors;
        n.to_string()
    };
    rows.push(row(
        "failed requests / connections, all loads".into(),
        [d, t, e].map(failed),
        None,
        String::new(),
    ));
    let steal = |m: &Measured| {
        let worst = m
            .latency
            .iter()
            .map(|r| r.machine.steal)
            .fold(0.0, f64::max);
        format!("{worst:.0}")
    };
    rows.push(row(
        "machine CPU stolen, worst latency load (%)".into(),
        [d, t, e].map(steal),
        None,
        String::new(),
    ));
    rows
}

/// The gateway's CPU per unit, in `scale` per second (1e6: us), against
/// Envoy's, held to [`ADDED_GOAL`].
fn cpu_row(metric: &str, t: Option<Duration>, e: Option<Duration>, scale: f64) -> Row {
    let fmt =
        |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * scale));
    let ratio = match (t, e) {
        (Some(t), Some(e)) if !e.is_zero() => Some(t.as_secs_f64() / e.as_secs_f64()),
        _ => None,
    };
    Row {
        cells: [
            metric.into(),
            "-".into(),
            fmt(t),
            fmt(e),
            fmt_ratio(ratio),
            goal("<=", ADDED_GOAL, ratio),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::CpuShare;

    fn latency(us: u64) -> PhaseResult {
        PhaseResult {
            ok: 100,
            served: 100,
            window: Duration::from_secs(10),
            latencies: vec![Duration::from_micros(us); 100],
            machine: CpuShare {
                busy: 50.0,
                steal: 1.0,
            },
            ..Default::default()
        }
    }

    fn measured(
        name: &'static str,
        lat_us: u64,
        conns: u64,
        mb_s: u64,
        cpu_ms: u64,
        rss: Option<u64>,
    ) -> Measured {
        Measured {
            name,
            version: "1".into(),
            latency: vec![latency(lat_us), latency(lat_us * 2)],
            connections: Carried {
                count: conns,
                window: Duration::from_secs(10),
                cpu: Duration::from_millis(cpu_ms),
                ..Default::default()
            },
            transfer: Carried {
                count: 1_000_000_000,
                window: Duration::from_secs_f64(1000.0 / mb_s as f64),
                cpu: Duration::from_millis(cpu_ms),
                ..Default::default()
            },
            idle_rss_kib: rss.map(|r| r / 2),
            peak_rss_kib: rss,
        }
    }

    fn setup() -> Setup {
        Setup {
            rates: vec![1000, 5000],
            connections: 16,
            conn_workers: 8,
            transfer_bytes: 1_000_000_000,
            warmup: Duration::from_secs(1),
            measure: Duration::from_secs(10),
            rounds: 3,
            cores: 2,
        }
    }

    fn line<'a>(out: &'a str, start: &str) -> &'a str {
        out.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no `{start}` in\n{out}"))
    }

    #[test]
    fn figures_beside_envoys_with_the_goals_judged() {
        let m = [
            measured("no gateway", 100, 30_000, 1000, 0, None),
            // Adds 20 us where Envoy adds 100; half Envoy's CPU; 2x its
            // throughput; 10 MB.
            measured("Trellis", 120, 20_000, 800, 200, Some(9_766)),
            measured("Envoy", 200, 10_000, 400, 400, Some(30_000)),
        ];
        let out = render(&setup(), &m);
        let p50 = line(&out, "p50 at 1,000 rps");
        assert!(p50.contains("0.120 ms (+0.020)"), "{p50}");
        assert!(
            p50.contains("0.20x") && p50.ends_with("<= 0.50x: met"),
            "{p50}"
        );
        // At the second rate every latency is doubled.
        assert!(
            line(&out, "p99 at 5,000 rps").contains("0.400 ms (+0.200)"),
            "{out}"
        );
        let c = line(&out, "new connections/s");
        assert!(
            c.contains("3000") && c.contains("2000") && c.contains("2.00x"),
            "{c}"
        );
        let cpu = line(&out, "CPU/connection, gateway (us)");
        // 200 ms over 20,000 connections, 400 ms over 10,000.
        assert!(
            cpu.contains("10") && cpu.contains("40") && cpu.contains("0.25x"),
            "{cpu}"
        );
        assert!(cpu.ends_with("met"), "{cpu}");
        let t = line(&out, "1.00 GB transfer");
        assert!(
            t.contains("800") && t.contains("2.00x") && t.ends_with(">= 1.50x: met"),
            "{t}"
        );
        let gb = line(&out, "CPU/GB, gateway (ms)");
        assert!(
            gb.contains("200") && gb.contains("0.50x") && gb.ends_with("met"),
            "{gb}"
        );
        let rss = line(&out, "peak RSS after all loads");
        assert!(
            rss.contains("10.0") && rss.ends_with("< 15 MB: met"),
            "{rss}"
        );
        // 4 latency points, CPU twice, throughput, RSS.
        assert!(out.contains("goals met: 8 of 8"), "{out}");
        assert!(!out.contains("WARNING"), "{out}");
    }

    #[test]
    fn missed_goals_failures_and_steal_are_said() {
        let mut t = measured("Trellis", 300, 5_000, 300, 800, Some(20_000));
        t.latency[0].machine.steal = 12.0;
        t.connections.errors = 3;
        t.connections.first_error = Some("connection reset".into());
        let m = [
            measured("no gateway", 100, 30_000, 1000, 0, None),
            t,
            measured("Envoy", 200, 10_000, 400, 400, Some(30_000)),
        ];
        let out = render(&setup(), &m);
        assert!(line(&out, "p50 at 1,000 rps").ends_with("MISSED"), "{out}");
        assert!(
            line(&out, "1.00 GB transfer").ends_with(">= 1.50x: MISSED"),
            "{out}"
        );
        assert!(
            line(&out, "peak RSS after all loads").ends_with("< 15 MB: MISSED"),
            "{out}"
        );
        assert!(line(&out, "failed requests").contains(" 3 "), "{out}");
        assert!(out.contains("goals met: 0 of 8"), "{out}");
        assert!(
            out.contains("WARNING: the hypervisor took up to 12%"),
            "{out}"
        );
        assert!(
            out.contains("Trellis first failure: connection reset"),
            "{out}"
        );
        // No gateway: no gateway CPU or memory to show.
        assert!(
            line(&out, "CPU/GB, gateway (ms)").split_whitespace().nth(3) == Some("-"),
            "{out}"
        );
    }
}
