//! The report of `vm`: each stage of the runs from `dpkg -i` (p50 and
//! max), the goal beside the time to the first request, the idle memory
//! of the installed agent, and the sizes of the packages measured.
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use crate::report::percentile;
use crate::table::render as table;

/// The goal: from `dpkg -i` and the join to the first request, at most.
pub const GOAL: Duration = Duration::from_secs(5);

/// One run, each stage from the start of `dpkg -i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// `dpkg -i` returned.
    pub dpkg: Duration,
    /// The join returned: the unit READY.
    pub ready: Duration,
    /// The first request from the VM answered.
    pub first: Duration,
    /// VmRSS of the agent after the idle time, KiB.
    pub rss_kib: u64,
    /// The unit's `MemoryCurrent`, bytes, if accounted.
    pub memory_current: Option<u64>,
}

impl Run {
    pub fn total(&self) -> Duration {
        self.first
    }
}

/// The packages measured: which build, and each .deb's name and size.
pub struct Packages {
    pub release: bool,
    pub files: Vec<(String, u64)>,
}

impl Packages {
    /// The .debs in `dir`; a release build unless this executable is a
    /// debug one (the packages follow its profile).
    pub fn of(dir: &Path) -> anyhow::Result<Self> {
        let profile = trellis_e2e::profile_dir()?;
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".deb") {
                files.push((name, e.metadata()?.len()));
            }
        }
        files.sort();
        Ok(Self {
            release: profile.file_name().is_some_and(|p| p != "debug"),
            files,
        })
    }

    fn label(&self) -> &'static str {
        if self.release {
            "release (packaging/build-deb.sh)"
        } else {
            "DEBUG (packaging/build-deb.sh --dev): not the figures of a release"
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn render(packages: &Packages, idle_seconds: u64, runs: &[Run]) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "== VM join: dpkg -i trellis-agent + join -> first request through the mesh from the VM ==\n\
         Debian 12 booted under systemd-nspawn; packages: {}; {} runs; {cores} cores\n\n",
        packages.label(),
        runs.len()
    );
    let sorted = |f: &dyn Fn(&Run) -> Duration| {
        let mut v: Vec<Duration> = runs.iter().map(f).collect();
        v.sort();
        v
    };
    let mut rows = vec![[
        "stage".to_string(),
        "p50".into(),
        "max".into(),
        "goal".into(),
    ]];
    let total = sorted(&|r| r.total());
    let max = total.last().copied().unwrap_or_default();
    let verdict = if max < GOAL { "met" } else { "MISSED" };
    for (name, v, goal) in [
        ("dpkg -i", sorted(&|r| r.dpkg), String::new()),
        (
            "join -> READY (trellis vm join)",
            sorted(&|r| r.ready - r.dpkg),
            String::new(),
        ),
        (
            "READY -> first request answered",
            sorted(&|r| r.first - r.ready),
            String::new(),
        ),
        (
            "dpkg -i + join -> first request",
            total,
            format!("max < {}: {verdict}", secs(GOAL)),
        ),
    ] {
        rows.push([
            name.to_string(),
            percentile(&v, 50.0).map(secs).unwrap_or_default(),
            v.last().copied().map(secs).unwrap_or_default(),
            goal,
        ]);
    }
    let memory = |f: &dyn Fn(&Run) -> Option<u64>| {
        let mut v: Vec<u64> = runs.iter().filter_map(f).collect();
        v.sort_unstable();
        let p50 = percentile(&v, 50.0).map(mib);
        let max = v.last().copied().map(mib);
        [p50.unwrap_or("n/a".into()), max.unwrap_or("n/a".into())]
    };
    let [p50, max] = memory(&|r| Some(r.rss_kib * 1024));
    rows.push([
        format!("idle RSS of the agent (VmRSS, after {idle_seconds} s)"),
        p50,
        max,
        String::new(),
    ]);
    let [p50, max] = memory(&|r| r.memory_current);
    let note = if runs.iter().any(|r| r.memory_current.is_none()) {
        "[not set] in a run: no memory cgroup for the unit"
    } else {
        ""
    };
    rows.push([
        "the unit's MemoryCurrent".to_string(),
        p50,
        max,
        note.to_string(),
    ]);
    out += &table(&rows);
    out += "\npackages:\n";
    for (name, size) in &packages.files {
        out += &format!("  {name}  {}\n", mib(*size));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dpkg: u64, ready: u64, first: u64, rss_kib: u64) -> Run {
        Run {
            dpkg: Duration::from_millis(dpkg),
            ready: Duration::from_millis(ready),
            first: Duration::from_millis(first),
            rss_kib,
            memory_current: None,
        }
    }

    #[test]
    fn stages_are_split_and_the_goal_is_held_to_the_slowest_run() {
        let packages = Packages {
            release: true,
            files: vec![("trellis-agent_0.1.0-1_amd64.deb".into(), 5 << 20)],
        };
        let runs = [run(1000, 2000, 2500, 10240), run(1500, 2600, 3000, 20480)];
        let out = render(&packages, 5, &runs);
        assert!(out.contains("packages: release"), "{out}");
        // A row, its cells one space apart.
        let line = |start: &str| {
            out.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("{start}: {out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(line("dpkg -i ").contains("1.00 s 1.50 s"), "{out}");
        assert!(line("join -> READY").contains("1.00 s 1.10 s"), "{out}");
        assert!(line("READY -> first").contains("0.40 s 0.50 s"), "{out}");
        let total = line("dpkg -i + join");
        assert!(total.contains("2.50 s 3.00 s max < 5.00 s: met"), "{out}");
        assert!(line("idle RSS").contains("10.0 MiB 20.0 MiB"), "{out}");
        assert!(
            line("the unit's MemoryCurrent").contains("n/a n/a [not set]"),
            "{out}"
        );
        assert!(line("  trellis-agent_").ends_with("5.0 MiB"), "{out}");
        let slow = [run(1000, 2000, 5000, 1)];
        assert!(render(&packages, 5, &slow).contains("MISSED"));
    }
}
