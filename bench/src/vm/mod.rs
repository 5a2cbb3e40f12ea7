//! `trellis-bench vm`: a VM joining the mesh with the packages, on a
//! booted Debian 12 (systemd-nspawn, as `tests/vm_mesh.rs` boots it:
//! [`trellis_e2e::vm_mesh`]). Needs root and systemd-nspawn.
//!
//! The bed: a one-node control plane, `ratings` (a network namespace with
//! its agent and an echo server), PeerAuthentication STRICT, and the VM,
//! a workload of WorkloadGroup `reviews`. A run, `--runs` times in the
//! same container: `dpkg -i` of the agent's package, the join (its token
//! in `/etc/trellis/agent.env`, `systemctl enable --now trellis-agent`,
//! which returns at READY), then `curl` in the VM calls ratings by its
//! mesh name until it is answered (through capture, the agent's DNS and
//! mTLS); after `--idle-seconds` of quiet, the agent's memory; then
//! `dpkg --purge`, for the next run to start from nothing. The packages
//! are those of this executable's profile (`packaging/build-deb.sh
//! --no-build`, with `--dev` for a debug build): a release
//! `trellis-bench` measures the release packages.
mod report;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trellis_e2e::vm::{self, Vm};
use trellis_e2e::vm_mesh::{VmMesh, RATINGS_URL};

use self::report::{Packages, Run};
use crate::flags::Build;
use crate::process::parse_status_kib;

/// How long the first request may take to be answered after READY.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Between attempts at the first request.
const RETRY: Duration = Duration::from_millis(20);

#[derive(clap::Args)]
pub struct Args {
    /// Installs, each timed from `dpkg -i` to the first request.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Seconds the agent is left idle before its memory is read.
    #[arg(long, default_value_t = 5)]
    idle_seconds: u64,
    #[command(flatten)]
    build: Build,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.runs == 0 {
            bail!("--runs: must be at least 1");
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    if let Some(why) = vm::unavailable() {
        bail!("cannot boot a container here: {why}");
    }
    args.build.binaries(&[
        "trellis-controlplane",
        "trellis",
        "trellis-agent",
        "trellis-echo",
        "trellis-eastwest",
    ])?;
    eprintln!("building the packages (packaging/build-deb.sh --no-build) ...");
    let debs = vm::debs()?;
    let packages = Packages::of(debs)?;
    eprintln!("booting Debian 12, starting the control plane and ratings ...");
    let name = format!("trellis-vmbench-{}", std::process::id());
    let m = VmMesh::start("vmbench", &name).await?;
    let deb = vm::deb(debs, "trellis-agent")?;
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let run = one_run(&m, &deb, Duration::from_secs(args.idle_seconds))
            .with_context(|| format!("run {i}"))?;
        eprintln!(
            "run {i}: {:.2} s to the first request",
            run.total().as_secs_f64()
        );
        runs.push(run);
    }
    println!("{}", report::render(&packages, args.idle_seconds, &runs));
    Ok(())
}

/// Installs, joins, calls until answered, reads the idle memory, purges.
fn one_run(m: &VmMesh, deb: &std::path::Path, idle: Duration) -> anyhow::Result<Run> {
    // Made beforehand, as an operator does on the control plane.
    let token = m.token()?;
    let start = Instant::now();
    m.vm.install(deb)?;
    let dpkg = start.elapsed();
    m.join(&token)?;
    let ready = start.elapsed();
    let first = loop {
        if m.call_from_vm(RATINGS_URL).is_ok() {
            break start.elapsed();
        }
        if start.elapsed() - ready > FIRST_REQUEST_TIMEOUT {
            bail!(
                "no answer from ratings {FIRST_REQUEST_TIMEOUT:?} after READY\n{}",
                m.journal()
            );
        }
        std::thread::sleep(RETRY);
    };
    std::thread::sleep(idle);
    let (rss_kib, memory_current) = memory(&m.vm)?;
    m.vm.sh("systemctl disable --now trellis-agent && dpkg --purge trellis-agent")?;
    Ok(Run {
        dpkg,
        ready,
        first,
        rss_kib,
        memory_current,
    })
}

/// The agent's VmRSS (KiB) and the unit's `MemoryCurrent` (bytes; `None`
/// where the container has no memory accounting).
fn memory(vm: &Vm) -> anyhow::Result<(u64, Option<u64>)> {
    let status = vm.sh("cat /proc/$(systemctl show -p MainPID --value trellis-agent)/status")?;
    let rss = parse_status_kib(&status, "VmRSS").context("no VmRSS in the agent's status")?;
    let current = vm.sh("systemctl show -p MemoryCurrent --value trellis-agent")?;
    Ok((rss, current.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Cli, Command};

    #[test]
    fn defaults_and_bad_flags() {
        let cli = Cli::try_parse_from(["trellis-bench", "vm"]).unwrap();
        let Command::Vm(args) = cli.command else {
            panic!("not the vm suite");
        };
        assert_eq!((args.runs, args.idle_seconds), (5, 5));
        assert!(!args.build.no_build);
        assert!(args.validate().is_ok());
        let cli = Cli::try_parse_from(["trellis-bench", "vm", "--runs", "0"]).unwrap();
        let Command::Vm(args) = cli.command else {
            panic!("not the vm suite");
        };
        let err = args.validate().unwrap_err().to_string();
        assert!(err.contains("--runs"), "{err}");
    }
}
