//! How busy the whole machine was, from the `cpu` line of `/proc/stat`:
//! on a VM the hypervisor may take ("steal") much of the CPU for a while,
//! which makes a run of a CPU-bound benchmark worthless; the report shows
//! it so such runs can be spotted and repeated.

/// Cumulative CPU time of all cores, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// Shares of the machine's CPU time over an interval, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuShare {
    pub busy: f64,
    pub steal: f64,
}

impl CpuTimes {
    pub fn now() -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        parse(&stat).ok_or_else(|| anyhow::anyhow!("no cpu line in /proc/stat"))
    }

    /// What happened between `earlier` and `self`.
    pub fn share_since(self, earlier: Self) -> CpuShare {
        let busy = self.busy.saturating_sub(earlier.busy) as f64;
        let idle = self.idle.saturating_sub(earlier.idle) as f64;
        let steal = self.steal.saturating_sub(earlier.steal) as f64;
        let total = busy + idle + steal;
        if total == 0.0 {
            return CpuShare::default();
        }
        CpuShare {
            busy: 100.0 * busy / total,
            steal: 100.0 * steal / total,
        }
    }
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`;
/// guest time is already counted in user.
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: get(0) + get(1) + get(2) + get(5) + get(6),
        idle: get(3) + get(4),
        steal: get(7),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_busy_idle_and_stolen_time() {
        let a = parse("cpu  100 0 50 800 10 0 5 20 0 0\ncpu0 1 2 3\n").unwrap();
        let b = parse("cpu  200 0 100 850 10 0 5 120 0 0\n").unwrap();
        let s = b.share_since(a);
        // busy 150, idle 50, steal 100 of 300 ticks.
        assert_eq!(s.busy, 50.0);
        assert!((s.steal - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(a.share_since(a), CpuShare::default());
        assert_eq!(parse("intr 1 2 3"), None);
    }

    #[test]
    fn reads_this_machine() {
        let t = CpuTimes::now().unwrap();
        assert!(t.busy + t.idle > 0);
    }
}
