//! The tables of `trellis-bench proxy`: per protocol, direct, Trellis and
//! Envoy side by side, latency added over direct, Trellis's figure against
//! Envoy's and the goal it is held to, and under it the floor (the null
//! relays); then the proxies' memory.
use std::fmt::Write;
use std::time::Duration;

use super::load::{PhaseResult, Protocol};
use crate::pace::Pace;
use crate::report::{percentile, STEAL_WARN_PERCENT};
use crate::table::thousands;

/// Trellis may add at most this share of Envoy's added latency and CPU per
/// request, at every point.
pub const ADDED_GOAL: f64 = 0.5;
/// Trellis must serve at least this multiple of Envoy's maximum throughput.
pub const THROUGHPUT_GOAL: f64 = 1.5;
/// Peak RSS every agent must stay under, MB (10^6 bytes).
pub const RSS_GOAL_MB: f64 = 20.0;

/// Everything measured on one system: direct, Trellis, Envoy or the relays.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub name: &'static str,
    pub version: String,
    /// One per pace of [`Setup::paces`], in that order.
    pub http1: Vec<PhaseResult>,
    pub grpc: Vec<PhaseResult>,
    /// VmRSS of the client-side and server-side proxy before any load
    /// (none for direct).
    pub idle_rss_kib: Option<[u64; 2]>,
    /// VmHWM of both after every load.
    pub peak_rss_kib: Option<[u64; 2]>,
}

impl Measured {
    pub fn runs_mut(&mut self, p: Protocol) -> &mut Vec<PhaseResult> {
        match p {
            Protocol::Http1 => &mut self.http1,
            Protocol::Grpc => &mut self.grpc,
        }
    }

    fn runs(&self, p: Protocol) -> &[PhaseResult] {
        match p {
            Protocol::Http1 => &self.http1,
            Protocol::Grpc => &self.grpc,
        }
    }
}

/// How the run was set up, for the headings.
#[derive(Clone, Debug)]
pub struct Setup {
    pub paces: Vec<Pace>,
    pub connections: usize,
    pub max_connections: usize,
    pub grpc_connections: usize,
    pub grpc_streams: usize,
    /// Of each round.
    pub warmup: Duration,
    /// Of each phase, over all its rounds.
    pub measure: Duration,
    pub rounds: u32,
    pub cores: usize,
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "HTTP/1.1",
        Protocol::Grpc => "gRPC",
    }
}

pub fn pace_name(p: Pace) -> String {
    match p {
        Pace::Rate(r) => format!("{} rps", thousands(u64::from(r))),
        Pace::Max => "max throughput".into(),
    }
}

/// The report. `m` is direct, Trellis, Envoy and the null relays, in
/// that order.
pub fn render(setup: &Setup, m: &[Measured]) -> String {
    let [d, t, e, r] = m else {
        panic!("render takes direct, Trellis, Envoy and the null relays");
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "client -> proxy -> mTLS (TLS 1.3, HTTP/2) -> proxy -> trellis-echo on loopback: {} {} vs {} {}, each proxy with 1 worker thread, one system loaded at a time ({} cores)",
        t.name, t.version, e.name, e.version, setup.cores
    );
    let _ = writeln!(
        out,
        "each phase: {} s measured in {} round(s), the systems taking turns, each round after {} s warm-up; fixed rates are open loop, latency counted from each request's scheduled send time",
        setup.measure.as_secs_f64(),
        setup.rounds,
        setup.warmup.as_secs_f64()
    );
    let mut met = (0, 0);
    for p in [Protocol::Http1, Protocol::Grpc] {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}", heading(setup, p));
        let rows = protocol_rows(setup, p, d, t, e);
        count_goals(&rows, &mut met);
        out.push_str(&table(&rows));
        let _ = writeln!(
            out,
            "floor, {}: the same loads through two TCP relays that only copy bytes (no TLS, no HTTP), one thread each",
            r.name
        );
        out.push_str(&crate::table::render(&floor_rows(setup, p, d, r)));
    }
    let _ = writeln!(out);
    let rows = memory_rows(t, e);
    count_goals(&rows, &mut met);
    out.push_str(&table(&rows));

    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "goals met: {} of {}; added = over direct; CPU per request in us is also ms per 1,000 requests",
        met.0, met.1
    );
    for s in [d, t, e, r] {
        for p in [Protocol::Http1, Protocol::Grpc] {
            let runs = s.runs(p);
            let steal = runs.iter().map(|r| r.machine.steal).fold(0.0, f64::max);
            if steal > STEAL_WARN_PERCENT {
                let _ = writeln!(
                    out,
                    "WARNING: the hypervisor took up to {steal:.0}% of the CPU during the {} {} loads: this run is noisier than usual; run again to compare",
                    s.name,
                    protocol_name(p)
                );
            }
            if let Some(err) = runs.iter().find_map(|r| r.first_error.as_ref()) {
                let _ = writeln!(
                    out,
                    "{} {} first failed request: {err}",
                    s.name,
                    protocol_name(p)
                );
            }
        }
    }
    out
}

fn heading(setup: &Setup, p: Protocol) -> String {
    match p {
        Protocol::Http1 => format!(
            "HTTP/1.1 keep-alive, GET /plain: {} connections at fixed rates, {} for max throughput",
            setup.connections, setup.max_connections
        ),
        Protocol::Grpc => format!(
            "gRPC over h2c, trellis.echo.v1.Echo/Echo: {} connection(s) from the client, up to {} calls in flight ({} for max throughput)",
            setup.grpc_connections, setup.grpc_streams, setup.grpc_streams
        ),
    }
}

fn protocol_rows(setup: &Setup, p: Protocol, d: &Measured, t: &Measured, e: &Measured) -> Vec<Row> {
    let mut rows = vec![Row::header(d, t, e)];
    let (dr, tr, er) = (d.runs(p), t.runs(p), e.runs(p));
    for (i, &pace) in setup.paces.iter().enumerate() {
        let Pace::Rate(_) = pace else { continue };
        for (label, pct) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0)] {
            let lat = |r: &[PhaseResult]| r.get(i).and_then(|r| percentile(&r.latencies, pct));
            rows.push(latency_row(
                &format!("{label} at {}", pace_name(pace)),
                lat(dr),
                lat(tr),
                lat(er),
            ));
        }
    }
    if let Some(max) = setup.paces.iter().position(|&p| p == Pace::Max) {
        let tput = |r: &[PhaseResult]| r.get(max).map_or(0.0, PhaseResult::per_second);
        let (td, tt, te) = (tput(dr), tput(tr), tput(er));
        let ratio = (te > 0.0).then(|| tt / te);
        rows.push(Row {
            cells: [
                "max throughput (req/s)".into(),
                format!("{td:.0}"),
                format!("{tt:.0}"),
                format!("{te:.0}"),
                fmt_ratio(ratio),
                goal(">=", THROUGHPUT_GOAL, ratio),
            ],
        });
    }
    for (i, &pace) in setup.paces.iter().enumerate() {
        for (side, which) in ["client", "server"].iter().enumerate() {
            let cpu = |r: &[PhaseResult]| r.get(i).and_then(|r| r.cpu_per_request(side));
            let (ct, ce) = (cpu(tr), cpu(er));
            let ratio = ratio_of(ct, ce);
            rows.push(Row {
                cells: [
                    format!("CPU/request, {which} proxy, {} (us)", pace_name(pace)),
                    "-".into(),
                    fmt_us(ct),
                    fmt_us(ce),
                    fmt_ratio(ratio),
                    goal("<=", ADDED_GOAL, ratio),
                ],
            });
        }
    }
    let errors = |r: &[PhaseResult]| r.iter().map(|r| r.errors).sum::<u64>().to_string();
    rows.push(Row::plain(
        "failed requests, all phases",
        errors(dr),
        errors(tr),
        errors(er),
    ));
    let steal = |r: &[PhaseResult]| {
        let worst = r.iter().map(|r| r.machine.steal).fold(0.0, f64::max);
        format!("{worst:.0}")
    };
    rows.push(Row::plain(
        "machine CPU stolen, worst phase (%)",
        steal(dr),
        steal(tr),
        steal(er),
    ));
    if let Some(max) = setup.paces.iter().position(|&p| p == Pace::Max) {
        let busy = |r: &[PhaseResult]| {
            r.get(max)
                .map_or("-".into(), |r| format!("{:.0}", r.machine.busy))
        };
        rows.push(Row::plain(
            "machine CPU busy at max throughput (%)",
            busy(dr),
            busy(tr),
            busy(er),
        ));
    }
    rows
}

/// What the same loads cost through two null TCP relays (bytes copied,
/// nothing else; see `relay.rs`): the part of a proxy pair's CPU per
/// request and added latency that is the machine's, not the proxy's.
fn floor_rows(setup: &Setup, p: Protocol, d: &Measured, r: &Measured) -> Vec<[String; 2]> {
    let mut rows = Vec::new();
    let (dr, rr) = (d.runs(p), r.runs(p));
    for (i, &pace) in setup.paces.iter().enumerate() {
        let cpu = |side| rr.get(i).and_then(|r| r.cpu_per_request(side));
        rows.push([
            format!(
                "CPU/request, client / server relay, {} (us)",
                pace_name(pace)
            ),
            format!("{} / {}", fmt_us(cpu(0)), fmt_us(cpu(1))),
        ]);
        let figure = match pace {
            Pace::Rate(_) => {
                let p50 = |r: &[PhaseResult]| r.get(i).and_then(|r| percentile(&r.latencies, 50.0));
                match (p50(dr), p50(rr)) {
                    (Some(d), Some(r)) => format!("{:+.3}", ms(r) - ms(d)),
                    _ => "-".into(),
                }
            }
            Pace::Max => rr
                .get(i)
                .map_or("-".into(), |r| format!("{:.0}", r.per_second())),
        };
        rows.push([
            match pace {
                Pace::Rate(_) => format!("added p50 at {} (ms)", pace_name(pace)),
                Pace::Max => "max throughput (req/s)".into(),
            },
            figure,
        ]);
    }
    rows
}

fn memory_rows(t: &Measured, e: &Measured) -> Vec<Row> {
    let mut rows = vec![Row {
        cells: [
            "memory of each proxy".into(),
            String::new(),
            t.name.into(),
            e.name.into(),
            format!("{}/{}", t.name, e.name),
            "goal".into(),
        ],
    }];
    let pair = |kib: Option<[u64; 2]>| {
        kib.map_or("-".into(), |[c, s]| format!("{:.1} / {:.1}", mb(c), mb(s)))
    };
    rows.push(Row::plain(
        "RSS before load, client / server (MB)",
        String::new(),
        pair(t.idle_rss_kib),
        pair(e.idle_rss_kib),
    ));
    for (side, which) in ["client", "server"].iter().enumerate() {
        let peak = |m: &Measured| m.peak_rss_kib.map(|k| mb(k[side]));
        let (pt, pe) = (peak(t), peak(e));
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let ratio = match (pt, pe) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        rows.push(Row {
            cells: [
                format!("peak RSS after all loads, {which} proxy (MB)"),
                String::new(),
                fmt(pt),
                fmt(pe),
                fmt_ratio(ratio),
                match pt {
                    Some(v) => met(&format!("< {RSS_GOAL_MB:.0} MB"), v < RSS_GOAL_MB),
                    None => String::new(),
                },
            ],
        });
    }
    rows
}

/// One line: metric, direct, Trellis, Envoy, Trellis against Envoy, goal.
pub(crate) struct Row {
    pub cells: [String; 6],
}

impl Row {
    fn header(d: &Measured, t: &Measured, e: &Measured) -> Self {
        Self {
            cells: [
                String::new(),
                d.name.into(),
                t.name.into(),
                e.name.into(),
                format!("{}/{}", t.name, e.name),
                "goal".into(),
            ],
        }
    }

    fn plain(metric: &str, d: String, t: String, e: String) -> Self {
        Self {
            cells: [metric.into(), d, t, e, String::new(), String::new()],
        }
    }
}

/// Latencies, those of the proxies with what they add over direct; the
/// ratio is of the added latencies.
pub(crate) fn latency_row(
    metric: &str,
    d: Option<Duration>,
    t: Option<Duration>,
    e: Option<Duration>,
) -> Row {
    let added = |x: Option<Duration>| Some(ms(x?) - ms(d?));
    let (at, ae) = (added(t), added(e));
    // Trellis faster than direct (noise) adds nothing; Envoy adding
    // nothing leaves nothing to compare with.
    let ratio = match (at, ae) {
        (Some(a), Some(b)) if b > 0.0 => Some(a.max(0.0) / b),
        _ => None,
    };
    let with_added = |x: Option<Duration>, a: Option<f64>| match (x, a) {
        (Some(x), Some(a)) => format!("{:.3} ms ({a:+.3})", ms(x)),
        (Some(x), None) => format!("{:.3} ms", ms(x)),
        _ => "-".into(),
    };
    Row {
        cells: [
            metric.into(),
            d.map_or("-".into(), |d| format!("{:.3} ms", ms(d))),
            with_added(t, at),
            with_added(e, ae),
            fmt_ratio(ratio),
            goal("<=", ADDED_GOAL, ratio),
        ],
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

pub(crate) fn ratio_of(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    let (a, b) = (a?.as_secs_f64(), b?.as_secs_f64());
    (b > 0.0).then(|| a / b)
}

pub(crate) fn fmt_us(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e6))
}

pub(crate) fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.2}x"))
}

/// `OP LIMITx: met` for a ratio, or `-` when there is none to judge.
pub(crate) fn goal(op: &str, limit: f64, ratio: Option<f64>) -> String {
    let what = format!("{op} {limit:.2}x");
    match ratio {
        Some(r) if op == "<=" => met(&what, r <= limit),
        Some(r) => met(&what, r >= limit),
        None => format!("{what}: -"),
    }
}

pub(crate) fn met(what: &str, ok: bool) -> String {
    format!("{what}: {}", if ok { "met" } else { "MISSED" })
}

/// Adds the goals judged in `rows` to `(met, judged)`.
pub(crate) fn count_goals(rows: &[Row], counts: &mut (usize, usize)) {
    for r in rows {
        let g = &r.cells[5];
        if g.ends_with(": met") {
            counts.0 += 1;
            counts.1 += 1;
        } else if g.ends_with(": MISSED") {
            counts.1 += 1;
        }
    }
}

pub(crate) fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows.iter().map(|r| r.cells.clone()).collect();
    crate::table::render(&cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::CpuShare;

    fn phase(lat_us: u64, ok: u64, cpu_ms: [u64; 2]) -> PhaseResult {
        PhaseResult {
            ok,
            served: ok,
            window: Duration::from_secs(10),
            latencies: vec![Duration::from_micros(lat_us); 100],
            cpu: cpu_ms.iter().map(|&m| Duration::from_millis(m)).collect(),
            machine: CpuShare {
                busy: 90.0,
                steal: 1.0,
            },
            ..Default::default()
        }
    }

    fn system(
        name: &'static str,
        lat_us: u64,
        max: u64,
        cpu_ms: [u64; 2],
        rss_mb: u64,
    ) -> Measured {
        // gRPC costs twice the CPU, so that the rows show which protocol
        // they were read from.
        let runs = |cpu_ms: [u64; 2]| {
            vec![
                phase(lat_us, 10_000, cpu_ms),
                phase(lat_us * 2, max * 10, cpu_ms.map(|c| c * 3)),
            ]
        };
        let proxied = rss_mb > 0;
        Measured {
            name,
            version: "1.0".into(),
            http1: runs(cpu_ms),
            grpc: runs(cpu_ms.map(|c| c * 2)),
            idle_rss_kib: proxied.then_some([rss_mb * 500, rss_mb * 500]),
            peak_rss_kib: proxied.then_some([rss_mb * 1000, rss_mb * 1000]),
        }
    }

    fn line<'a>(report: &'a str, metric: &str) -> &'a str {
        report
            .lines()
            .find(|l| l.starts_with(metric))
            .unwrap_or_else(|| panic!("no {metric} in\n{report}"))
    }

    #[test]
    fn added_latency_cpu_throughput_and_memory_against_the_goals() {
        let setup = Setup {
            paces: vec![Pace::Rate(1000), Pace::Max],
            connections: 16,
            max_connections: 64,
            grpc_connections: 1,
            grpc_streams: 64,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(10),
            rounds: 3,
            cores: 2,
        };
        let r = render(
            &setup,
            &[
                system("direct", 100, 50_000, [0, 0], 0),
                system("Trellis", 300, 30_000, [500, 400], 15),
                system("Envoy", 500, 19_000, [1750, 1750], 66),
                system("null relay", 150, 60_000, [400, 450], 3),
            ],
        );
        // Added 0.2 ms against 0.4 ms: exactly half.
        let p50 = line(&r, "p50 at 1,000 rps");
        assert!(
            p50.contains("0.300 ms (+0.200)") && p50.contains("0.500 ms (+0.400)"),
            "{p50}"
        );
        assert!(p50.ends_with("0.50x  <= 0.50x: met"), "{p50}");
        let max = line(&r, "max throughput");
        assert!(
            max.contains("30000") && max.contains("1.58x") && max.ends_with(">= 1.50x: met"),
            "{max}"
        );
        let cpu = line(&r, "CPU/request, client proxy, 1,000 rps");
        assert!(
            cpu.contains(" 50 ") && cpu.contains(" 175 ") && cpu.ends_with("0.29x  <= 0.50x: met"),
            "{cpu}"
        );
        let cpu = line(&r, "CPU/request, server proxy, max throughput");
        assert!(cpu.contains(" 4 ") && cpu.contains(" 28 "), "{cpu}");
        let rss = line(&r, "peak RSS after all loads, client");
        assert!(
            rss.contains("15.4") && rss.ends_with("< 20 MB: met"),
            "{rss}"
        );
        // The floor is reported, not judged.
        let floors: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("CPU/request, client / server relay, 1,000 rps"))
            .collect();
        assert!(
            floors.len() == 2 && floors[0].ends_with(" 40 / 45") && floors[1].ends_with(" 80 / 90"),
            "{floors:?}"
        );
        let floor = line(&r, "added p50 at 1,000 rps");
        assert!(floor.ends_with(" +0.050"), "{floor}");
        let floor = r
            .lines()
            .filter(|l| l.starts_with("max throughput (req/s)  "))
            .nth(1);
        assert!(floor.is_some_and(|l| l.ends_with(" 60000")), "{r}");
        assert!(r.contains("goals met: 18 of 18"), "{r}");
        assert!(!r.contains("WARNING"));
    }

    #[test]
    fn no_ratio_when_envoy_adds_nothing() {
        let row = latency_row(
            "p99",
            Some(Duration::from_micros(500)),
            Some(Duration::from_micros(400)),
            Some(Duration::from_micros(450)),
        );
        assert_eq!(row.cells[2], "0.400 ms (-0.100)");
        assert_eq!(row.cells[4], "-");
        assert_eq!(row.cells[5], "<= 0.50x: -");
        let row = latency_row(
            "p90",
            Some(Duration::from_micros(500)),
            Some(Duration::from_micros(450)),
            Some(Duration::from_micros(600)),
        );
        assert_eq!(row.cells[4], "0.00x");
        assert_eq!(row.cells[5], "<= 0.50x: met");
    }

    #[test]
    fn formats_for_reading() {
        assert_eq!(pace_name(Pace::Rate(5000)), "5,000 rps");
    }
}
