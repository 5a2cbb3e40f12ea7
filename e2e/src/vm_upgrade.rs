//! What a client sees while the agent's package is upgraded, or its unit
//! restarted, on a booted Debian 12 ([`crate::vm`]): the agent installed
//! from its `.deb`, started by its unit with a VM token and iptables
//! capture, an echo server in the VM (run by the VM's systemd), and a
//! steady client ([`crate::steady`]) on the host sending 200 requests a
//! second over keep-alive to the VM's address, which capture takes to the
//! agent's inbound listener. Used by `e2e/tests/vm_upgrade.rs` (which
//! asserts) and `trellis-bench upgrade` (which reports).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::mesh::MeshEnv;
use crate::netns::Host;
use crate::steady::{Counts, Steady};
use crate::vm::{self, Vm};
use crate::{bin, profile_dir, wait_for_blocking};

/// The version of the "newer" package: the same binaries, a version above
/// the workspace's.
pub const NEWER: &str = "99.0.0-upgrade";

/// The port the echo server listens on in the VM.
const ECHO_PORT: u16 = 8080;

/// The steady client's rate, requests a second.
pub const RATE: u32 = 200;

/// The agent's packages, the current version's and [`NEWER`]'s, built
/// from the binaries of this profile into `TARGET/debian-upgrade/`.
pub struct Debs {
    pub current: PathBuf,
    pub newer: PathBuf,
}

impl Debs {
    pub fn build() -> anyhow::Result<Debs> {
        let mut built = Vec::new();
        for (dir, version) in [("current", None), ("newer", Some(NEWER))] {
            let out = format!("debian-upgrade/{dir}");
            let _ = std::fs::remove_dir_all(profile_dir()?.join("..").join(&out));
            let mut args = vec!["--only", "trellis-agent"];
            if let Some(v) = version {
                args.extend(["--deb-version", v]);
            }
            let dir = vm::build_packages("--deb", &args, &out)?;
            built.push(vm::deb(&dir, "trellis-agent")?);
        }
        let newer = built.pop().context("no newer package")?;
        let current = built.pop().context("no current package")?;
        Ok(Debs { current, newer })
    }
}

/// A booted Debian whose agent serves the echo server in it, with a
/// control plane on the host. The VM goes first (field order is drop
/// order).
pub struct Scenario {
    pub vm: Vm,
    pub host: Host,
    pub env: MeshEnv,
    debs: Debs,
}

/// What a client saw during one event, and what the unit did.
#[derive(Debug)]
pub struct Seen {
    pub counts: Counts,
    pub main_pid: (u32, u32),
    pub restarts: (u32, u32),
    /// Moments (samples every 100 ms) the capture rules differed from
    /// what they were before: missing, or changed.
    pub rules_changed: Vec<String>,
    /// Connections the inbound capture chain redirected, before and after
    /// (iptables' packet counters of the nat chain, which count a
    /// connection's first packet): fewer after means the rules were
    /// replaced meanwhile, however briefly.
    pub redirected: (u64, u64),
    pub active_after: bool,
}

impl Scenario {
    /// `None` (after saying why) where namespaces or systemd-nspawn are
    /// missing. `label` names the network (unique per test).
    pub async fn start(label: &str) -> anyhow::Result<Option<Scenario>> {
        let Some(vm::OnMesh { vm, host, env }) = vm::OnMesh::boot(label).await? else {
            return Ok(None);
        };
        let debs = Debs::build()?;
        let s = Scenario {
            vm,
            host,
            env,
            debs,
        };
        s.install(&s.debs.current, "dpkg -i")?;
        let token = s
            .env
            .cp
            .token(&["--kind", "vm", "--identity", "default/vm"])?;
        let env_file = s.vm.path("/etc/trellis/agent.env");
        let mut settings = std::fs::read_to_string(&env_file)?;
        settings += &format!("TRELLIS_TOKEN={token}\nTRELLIS_CAPTURE=iptables\n");
        std::fs::write(&env_file, settings)?;
        s.vm.sh("systemctl start trellis-agent")
            .with_context(|| s.journal())?;
        std::fs::copy(
            bin("trellis-echo"),
            s.vm.path("/usr/local/bin/trellis-echo"),
        )?;
        s.vm.sh(&format!(
            "systemd-run --unit=echo /usr/local/bin/trellis-echo --http 0.0.0.0:{ECHO_PORT}"
        ))?;
        let url = s.url();
        wait_for_blocking(Duration::from_secs(20), "echo through the agent", || {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .ok()?;
            (out.stdout == b"200").then_some(())
        })
        .with_context(|| s.journal())?;
        Ok(Some(s))
    }

    /// The echo server, through the VM's agent.
    pub fn url(&self) -> String {
        format!("http://{}:{ECHO_PORT}/", self.host.addr)
    }

    /// Copies `deb` into the VM and runs `how` on it (`dpkg -i`, `apt
    /// install -y`); what it printed.
    fn install(&self, deb: &Path, how: &str) -> anyhow::Result<String> {
        let name = deb.file_name().context("a .deb")?.to_string_lossy();
        std::fs::copy(deb, self.vm.path(&format!("/root/{name}")))?;
        self.vm.sh(&format!("cd /root && {how} ./{name}"))
    }

    /// The end of the agent's journal but its access log, for failure
    /// messages.
    pub fn journal(&self) -> String {
        self.vm
            .sh("journalctl -u trellis-agent --no-pager | grep -v '\"response_code\"' | tail -n 60")
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// A property of the agent's unit.
    pub fn property(&self, name: &str) -> anyhow::Result<String> {
        Ok(self
            .vm
            .sh(&format!("systemctl show -p {name} --value trellis-agent"))?
            .trim()
            .to_string())
    }

    fn number(&self, name: &str) -> anyhow::Result<u32> {
        let v = self.property(name)?;
        v.parse().with_context(|| format!("{name}={v}"))
    }

    /// The capture rules in force (iptables' and ip6tables' nat chains).
    pub fn rules(&self) -> anyhow::Result<String> {
        self.vm
            .sh("iptables -t nat -S; ip6tables -t nat -S")
            .map(|all| {
                all.lines()
                    .filter(|l| l.contains("TRELLIS"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
    }

    /// Packets the inbound capture chain's rules matched
    /// (`iptables -t nat -L TRELLIS_INBOUND -v -x`), summed.
    pub fn redirected(&self) -> anyhow::Result<u64> {
        let listed = self.vm.sh("iptables -t nat -L TRELLIS_INBOUND -n -v -x")?;
        // Two header lines, then `PKTS BYTES TARGET ...` per rule.
        Ok(listed
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// `apt install ./newer.deb` while the client runs.
    pub async fn upgrade(&self) -> anyhow::Result<Seen> {
        self.during(|| {
            let out = self.install(&self.debs.newer, "apt-get install -y")?;
            let version = self.vm.sh("dpkg-query -W -f '${Version}' trellis-agent")?;
            if version.trim() != NEWER {
                bail!("trellis-agent {version} after the upgrade: {out}");
            }
            Ok(())
        })
        .await
    }

    /// `systemctl restart trellis-agent` while the client runs.
    pub async fn restart(&self) -> anyhow::Result<Seen> {
        self.during(|| self.vm.sh("systemctl restart trellis-agent").map(drop))
            .await
    }

    /// `event` while the steady client runs (from a second before to two
    /// after), the capture rules sampled meanwhile. On a multi-threaded
    /// runtime: the client runs on while `event` blocks.
    async fn during(&self, event: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Seen> {
        let before_rules = self.rules()?;
        if before_rules.is_empty() {
            bail!("no capture rules before: {}", self.journal());
        }
        let main_before = self.number("MainPID")?;
        // Ten connections first, so that counters reset by a flush show
        // below what they were.
        for _ in 0..10 {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", &self.url()])
                .status()?;
        }
        let redirected_before = self.redirected()?;
        let restarts_before = self.number("NRestarts")?;
        let steady = Steady::start(&self.url(), RATE, Duration::from_secs(5))?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let stop = AtomicBool::new(false);
        let changed = Mutex::new(Vec::new());
        let outcome = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let now = self.rules().unwrap_or_else(|e| format!("{e:#}"));
                        if now != before_rules {
                            changed.lock().unwrap_or_else(|p| p.into_inner()).push(now);
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
                let done = event();
                std::thread::sleep(Duration::from_secs(2));
                stop.store(true, Ordering::Relaxed);
                done
            })
        });
        let counts = steady.stop().await;
        outcome.with_context(|| self.journal())?;
        let rules_changed = changed.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(Seen {
            counts,
            main_pid: (main_before, self.number("MainPID")?),
            restarts: (restarts_before, self.number("NRestarts")?),
            rules_changed,
            redirected: (redirected_before, self.redirected()?),
            active_after: self.property("ActiveState")? == "active",
        })
    }
}
