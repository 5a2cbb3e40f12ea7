//! A network cut between processes on loopback, where addresses cannot
//! tell them apart (every connection between loopback addresses leaves
//! from 127.0.0.1): each side's processes go into a cgroup (v2) of their
//! own, and iptables drops what one side sends to the other's listening
//! address (`-m cgroup --path`). A socket keeps the cgroup it was made
//! in, so the connections each side already had to the other are aborted
//! (`ss -K`): the new ones are made in the cgroup, and dropped.
//! [`Cut::heal`] (or drop) removes the rules and the cgroups, whatever
//! happened in between; each rule carries a comment unique to the cut.
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// Where cgroup v2 is mounted: its own mount on a hybrid host.
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .context("no cgroup v2 mount (needed to cut processes apart on loopback)")
}

/// One side of a cut: its processes, and the `ip:port` it listens on.
pub struct Side<'a> {
    pub pids: &'a [u32],
    pub listen: &'a str,
}

/// Two sides cut apart while this lives.
pub struct Cut {
    name: String,
    root: PathBuf,
    /// The `iptables` arguments of each rule, after `-A`/`-D OUTPUT`.
    rules: Vec<Vec<String>>,
    pids: Vec<u32>,
    healed: bool,
}

impl Cut {
    /// Cuts `a` and `b` apart: packets from `a`'s processes to `b`'s
    /// address, and back, are dropped. `name` (with the process id and a
    /// count) names its cgroups and rules.
    pub fn new(name: &str, a: Side, b: Side) -> anyhow::Result<Cut> {
        let root = cgroup2_root()?;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("trellis-cut-{name}-{}-{n}", std::process::id());
        let mut cut = Cut {
            name,
            root,
            rules: Vec::new(),
            pids: Vec::new(),
            healed: false,
        };
        for (i, (from, to)) in [(&a, &b), (&b, &a)].into_iter().enumerate() {
            let group = format!("{}-{i}", cut.name);
            let dir = cut.root.join(&group);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for pid in from.pids {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                    .with_context(|| format!("moving process {pid} into {}", dir.display()))?;
                cut.pids.push(*pid);
            }
            let (ip, port) = to
                .listen
                .rsplit_once(':')
                .with_context(|| format!("{} is not ip:port", to.listen))?;
            let rule: Vec<String> = [
                "-m",
                "cgroup",
                "--path",
                &group,
                "-p",
                "tcp",
                "-d",
                ip,
                "--dport",
                port,
                "-m",
                "comment",
                "--comment",
                &cut.name,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            iptables("-I", &rule)?;
            cut.rules.push(rule);
            for pid in from.pids {
                abort_connections(*pid, ip, port)?;
            }
        }
        Ok(cut)
    }

    /// Removes the rules and the cgroups (the processes go back to the
    /// root cgroup).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if self.healed {
            return Ok(());
        }
        self.healed = true;
        let mut failed = Vec::new();
        for rule in &self.rules {
            if let Err(e) = iptables("-D", rule) {
                failed.push(format!("{e:#}"));
            }
        }
        for pid in &self.pids {
            // A process that exited meanwhile is not there to move.
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
        for i in 0..2 {
            let dir = self.root.join(format!("{}-{i}", self.name));
            if dir.exists() {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    failed.push(format!("removing {}: {e}", dir.display()));
                }
            }
        }
        if !failed.is_empty() {
            bail!("healing cut {}: {}", self.name, failed.join("; "));
        }
        Ok(())
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("{e:#}");
        }
    }
}

/// Aborts the TCP connections of process `pid` to `ip:port`.
fn abort_connections(pid: u32, ip: &str, port: &str) -> anyhow::Result<()> {
    let filter = format!("dst {ip} dport = :{port}");
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .arg(&filter)
        .output()
        .context("running ss")?;
    let owner = format!("pid={pid},");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains(&owner) {
            continue;
        }
        // Recv-Q Send-Q Local:Port Peer:Port Process
        let Some(local) = line.split_whitespace().nth(2) else {
            continue;
        };
        let Some((_, sport)) = local.rsplit_once(':') else {
            continue;
        };
        let status = Command::new("ss")
            .arg("-K")
            .arg(format!("{filter} sport = :{sport}"))
            .output()
            .context("running ss -K")?;
        if !status.status.success() {
            bail!(
                "aborting {local} -> {ip}:{port}: {}",
                String::from_utf8_lossy(&status.stderr)
            );
        }
    }
    Ok(())
}

fn iptables(op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .args(["-w", op, "OUTPUT"])
        .args(rule)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {op} OUTPUT {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
