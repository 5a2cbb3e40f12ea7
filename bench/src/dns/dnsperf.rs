//! The load generator of `trellis-bench dns`: DNS-OARC's `dnsperf`
//! (Debian's `dnsperf` package), one run per phase, and what it prints.
//!
//! At a fixed rate (`-Q`) it runs verbose (`-v`), printing one line per
//! answer with its latency, from which the percentiles are taken; at
//! maximum throughput (no `-Q`, `-q` queries outstanding) it does not, as
//! the printing would slow it, and only its summary is read.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

/// One run of dnsperf.
#[derive(Clone, Debug)]
pub struct Load {
    pub server: SocketAddr,
    /// Lines `NAME TYPE`, sent in order, over and over.
    pub queries: PathBuf,
    pub duration: Duration,
    /// Queries per second; `None`: as fast as answers come back.
    pub rate: Option<u32>,
    /// Queries sent and not yet answered, at most.
    pub outstanding: usize,
}

/// What dnsperf reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Perf {
    pub sent: u64,
    pub completed: u64,
    /// Not answered within dnsperf's timeout (5 s).
    pub lost: u64,
    /// Answered with NOERROR.
    pub noerror: u64,
    pub qps: f64,
    pub avg_latency: Duration,
    /// Of every answer, sorted; only at a fixed rate.
    pub latencies: Vec<Duration>,
}

impl Perf {
    /// Queries lost or answered with an error.
    pub fn failed(&self) -> u64 {
        self.lost + self.completed.saturating_sub(self.noerror)
    }
}

/// Runs `load` with the `dnsperf` binary and reads its report.
pub async fn run(dnsperf: &Path, load: &Load) -> anyhow::Result<Perf> {
    let mut cmd = tokio::process::Command::new(dnsperf);
    cmd.arg("-s")
        .arg(load.server.ip().to_string())
        .arg("-p")
        .arg(load.server.port().to_string())
        .arg("-d")
        .arg(&load.queries)
        .arg("-l")
        .arg(format!("{:.3}", load.duration.as_secs_f64()))
        .arg("-q")
        .arg(load.outstanding.to_string());
    if let Some(rate) = load.rate {
        cmd.arg("-Q").arg(rate.to_string()).arg("-v");
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let deadline = load.duration + Duration::from_secs(30);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .with_context(|| format!("dnsperf still running after {deadline:?}"))?
        .with_context(|| format!("running {}", dnsperf.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "dnsperf failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        );
    }
    parse(&stdout).with_context(|| format!("reading dnsperf's report:\n{}", tail(&stdout)))
}

/// `dnsperf -h` names its version, e.g. `2.10.0`.
pub fn version(dnsperf: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(dnsperf)
        .arg("-h")
        .output()
        .with_context(|| {
            format!(
                "running {} -h; is dnsperf installed (apt-get install dnsperf)?",
                dnsperf.display()
            )
        })?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Version "))
        .map(str::to_string)
        .context("no `Version` in dnsperf -h")
}

fn parse(stdout: &str) -> anyhow::Result<Perf> {
    let field = |name: &str| -> anyhow::Result<&str> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no `{name}`"))
    };
    // `Queries completed:    5 (100.00%)`: the count before the share.
    let count = |name: &str| -> anyhow::Result<u64> {
        let v = field(name)?;
        v.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("`{name}` {v}"))
    };
    let seconds = |s: &str| s.parse::<f64>().ok().map(Duration::from_secs_f64);
    // `Response codes:       NOERROR 5 (100.00%), NXDOMAIN 1 (...)`
    let noerror = field("Response codes:")
        .ok()
        .and_then(|codes| {
            let mut w = codes.split_whitespace();
            w.position(|x| x == "NOERROR")?;
            w.next()?.parse().ok()
        })
        .unwrap_or(0);
    let avg = field("Average Latency (s):")?;
    let mut latencies: Vec<Duration> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| seconds(l.split_whitespace().last()?))
        .collect();
    latencies.sort_unstable();
    Ok(Perf {
        sent: count("Queries sent:")?,
        completed: count("Queries completed:")?,
        lost: count("Queries lost:")?,
        noerror,
        qps: field("Queries per second:")?
            .parse()
            .context("`Queries per second`")?,
        avg_latency: avg
            .split_whitespace()
            .next()
            .and_then(seconds)
            .context("`Average Latency`")?,
        latencies,
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERBOSE: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.77 -p 5399 -d /tmp/q.txt -l 1 -Q 5 -v
[Status] Sending queries (to 127.0.0.77:5399)
> NOERROR a.mesh.test A 0.000167
> NOERROR a.mesh.test A 0.000106
> NXDOMAIN b.mesh.test A 0.000128
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         4
  Queries completed:    3 (75.00%)
  Queries lost:         1 (25.00%)

  Response codes:       NOERROR 2 (66.67%), NXDOMAIN 1 (33.33%)
  Average packet size:  request 29, response 45
  Run time (s):         1.000193
  Queries per second:   2.999035

  Average Latency (s):  0.000134 (min 0.000106, max 0.000167)
  Latency StdDev (s):   0.000027
";

    #[test]
    fn reads_the_summary_and_each_answer() {
        let p = parse(VERBOSE).unwrap();
        assert_eq!((p.sent, p.completed, p.lost, p.noerror), (4, 3, 1, 2));
        assert_eq!(p.failed(), 2);
        assert!((p.qps - 2.999035).abs() < 1e-9);
        assert_eq!(p.avg_latency, Duration::from_micros(134));
        assert_eq!(
            p.latencies,
            [106, 128, 167].map(Duration::from_micros).to_vec()
        );
    }

    #[test]
    fn a_summary_without_answers_lines_and_garbage() {
        let quiet: String = VERBOSE
            .lines()
            .filter(|l| !l.starts_with("> "))
            .map(|l| format!("{l}\n"))
            .collect();
        let p = parse(&quiet).unwrap();
        assert!(p.latencies.is_empty());
        assert_eq!(p.completed, 3);
        assert!(parse("dnsperf: error: could not open queries").is_err());
    }
}
