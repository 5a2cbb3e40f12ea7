//! `trellis-bench upgrade`: the requests a client sees fail while the
//! agent's package is upgraded, and while its unit is restarted, on a
//! booted Debian 12 (systemd-nspawn; needs root).
//!
//! The bed is the upgrade test's ([`trellis_e2e::vm_upgrade`]): the agent
//! installed from this build's `.deb` and started by its unit with a VM
//! token and iptables capture, an echo server in the VM, and a client on
//! the host sending 200 requests a second over HTTP/1.1 keep-alive to the
//! VM's address, which capture takes through the agent. Each event runs
//! under that load from a second before to two seconds after it:
//! `apt install ./newer.deb` (the same binaries, version
//! [`trellis_e2e::vm_upgrade::NEWER`]), which reloads the unit (a hot
//! restart), then `--restarts` times `systemctl restart trellis-agent`.
//! A bare `kill -TERM` is not measured apart: the agent exits 0 after
//! its drain, so `Restart=on-failure` does not start it again, and a
//! `systemctl start` after it is a restart with a longer gap.
use crate::flags::Build;
use trellis_e2e::vm_upgrade::{Scenario, Seen, RATE};

#[derive(clap::Args)]
pub struct Args {
    /// `systemctl restart` rounds after the upgrade.
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    #[command(flatten)]
    build: Build,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.build.binaries(&[
        "trellis-controlplane",
        "trellis",
        "trellis-agent",
        "trellis-echo",
    ])?;
    eprintln!("building the packages and booting Debian ...");
    let Some(s) = Scenario::start("bench-up").await? else {
        anyhow::bail!("no booted Debian here (see above)");
    };
    eprintln!("apt install ./newer.deb under load ...");
    let mut rows = vec![(
        "apt install ./newer.deb (reload)".to_string(),
        s.upgrade().await?,
    )];
    for i in 1..=args.restarts {
        eprintln!("systemctl restart {i} of {} under load ...", args.restarts);
        rows.push((format!("systemctl restart #{i}"), s.restart().await?));
    }
    println!("{}", report(&rows));
    Ok(())
}

/// One line per event: failed and total requests, whether the unit's main
/// process changed and it restarted, and for how long capture was not as
/// before (100 ms samples).
fn report(rows: &[(String, Seen)]) -> String {
    let mut out = format!(
        "Failed requests, a client at {RATE} requests/s over keep-alive through the agent\n\
         | event | failed / total | MainPID changed | NRestarts | capture not as before |\n\
         |---|---|---|---|---|\n"
    );
    for (event, seen) in rows {
        out += &format!(
            "| {event} | {} / {} | {} | {} -> {} | {} ms |\n",
            seen.counts.failed,
            seen.counts.total,
            if seen.main_pid.0 != seen.main_pid.1 {
                "yes"
            } else {
                "no"
            },
            seen.restarts.0,
            seen.restarts.1,
            seen.rules_changed.len() * 100,
        );
    }
    out
}
