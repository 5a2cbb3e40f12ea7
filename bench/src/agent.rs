//! One `trellis-agent` of a test bed (the pair of `proxy`, the DNS proxy
//! of `dns`): its certificate from a VM token of the bed's control plane,
//! its mesh config from a file (or, for `eastwest`, streamed from the
//! control plane), one worker and no access log, as the suites compare it
//! with one-worker Envoys and dnsmasq.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use trellis_e2e::{bin, remove_env_prefixed, Cluster, Proc};

/// The ports an agent listens on, at its address.
pub const PORTS: [u16; 4] = [15000, 15001, 15006, 15020];

/// Where the agent of `side` keeps its data in `dir`.
pub fn data_dir(dir: &Path, side: &str) -> PathBuf {
    dir.join(format!("{side}-agent"))
}

/// `trellis-agent` with identity `default/SIDE` on `ip`, its data and log
/// in `dir`, one worker, no access log, and `args`; its mesh config from
/// the file `config`, else streamed from `cp`.
pub fn spawn(
    cp: &Cluster,
    dir: &Path,
    config: Option<&Path>,
    log: &str,
    side: &str,
    ip: &str,
    args: &[String],
) -> anyhow::Result<Proc> {
    let identity = format!("default/{side}");
    let token = cp.token(&["--kind", "vm", "--identity", &identity])?;
    let mut cmd = Command::new(bin("trellis-agent"));
    cmd.args(["--token", &token, "--data-dir"])
        .arg(data_dir(dir, side))
        .args(
            config
                .map(|c| [Path::new("--config-file"), c])
                .into_iter()
                .flatten(),
        )
        .args(["--inbound", &format!("{ip}:15006")])
        .args(["--outbound", &format!("{ip}:15001")])
        .args(["--admin", &format!("{ip}:15000")])
        .args(["--metrics", &format!("{ip}:15020")])
        .args(["--app-host", "127.0.0.1"])
        .args(["--concurrency", "1", "--access-log", "false"])
        .args(args);
    remove_env_prefixed(&mut cmd, "TRELLIS_");
    cmd.env("TRELLIS_LOG", log);
    let name = format!("{side} agent");
    Proc::spawn(&name, &mut cmd, &dir.join(format!("{side}-agent.log")))
}

/// `trellis-agent --version`, e.g. `0.1.0`.
pub fn version() -> anyhow::Result<String> {
    let out = Command::new(bin("trellis-agent"))
        .arg("--version")
        .output()
        .context("running trellis-agent --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string())
}
