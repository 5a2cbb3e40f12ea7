//! The memory, CPU time and disk writes of processes as the kernel reports
//! them, and the end of their logs. (The processes themselves run under
//! [`trellis_e2e::Proc`].)
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;

/// A `kB` field of `/proc/PID/status` (VmRSS, VmHWM), in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, field).with_context(|| format!("no {field} in {path}"))
}

/// A `kB` field of the text of a `/proc/PID/status`, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// CPU time and bytes sent to the disk by a process (all its threads) so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu: Duration,
    pub disk_write_bytes: u64,
}

impl Usage {
    /// Of process `pid`, from `/proc/PID/stat` and `/proc/PID/io`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
        let ticks = parse_stat_cpu_ticks(&stat).context("no utime/stime in /proc/PID/stat")?;
        let disk_write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no write_bytes in /proc/PID/io")?;
        Ok(Self {
            cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64),
            disk_write_bytes,
        })
    }

    /// Summed over `pids`.
    pub fn total(pids: &[u32]) -> anyhow::Result<Self> {
        let mut sum = Self::default();
        for &p in pids {
            let u = Self::of(p)?;
            sum.cpu += u.cpu;
            sum.disk_write_bytes += u.disk_write_bytes;
        }
        Ok(sum)
    }

    /// What was used between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            disk_write_bytes: self
                .disk_write_bytes
                .saturating_sub(earlier.disk_write_bytes),
        }
    }
}

/// utime + stime, in clock ticks. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing ')'.
fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The last `n` lines of `text` (a process's log, for an error report).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// USER_HZ, from `getconf CLK_TCK` (100 on every Linux this runs on).
fn clock_ticks_per_second() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_of_proc_stat() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 2155 0 0 0 137 42 0 0 20 0 9 0 1234 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(179));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_has_used_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        let u = Usage::of(std::process::id()).unwrap();
        assert!(u.cpu > Duration::ZERO, "{u:?}");
    }

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let s = "Name:\tetcd\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t12\n";
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(20480));
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(40960));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
        assert_eq!(parse_status_kib(s, "Threads"), None);
    }

    #[test]
    fn own_process_has_a_resident_set() {
        assert!(status_kib(std::process::id(), "VmRSS").unwrap() > 0);
    }
}
