//! One `trellis-eastwest` of a test bed (`eastwest`, `propagation`,
//! `failover`): its identity from a gateway token of the bed's control
//! plane, its endpoints streamed from it, one worker and no access log, as
//! the Envoy `eastwest` compares it with.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use trellis_e2e::{bin, remove_env_prefixed, Proc};

/// The gateway port, Istio's.
pub const PORT: u16 = 15443;
/// The ports a `trellis-eastwest` listens on, at its address.
pub const PORTS: [u16; 4] = [PORT, 15000, 15020, 15021];

/// A `trellis-eastwest` on `ip` with gateway token `token`, advertising
/// `advertise` (else its listener), its data and log in `dir`.
pub fn spawn(
    dir: &Path,
    name: &str,
    token: &str,
    ip: Ipv4Addr,
    advertise: Option<SocketAddr>,
    log: &str,
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin("trellis-eastwest"));
    cmd.args(["--token", token, "--data-dir"])
        .arg(dir.join(name))
        .args(["--listen", &format!("{ip}:{PORT}")])
        .args(["--health", &format!("{ip}:15021")])
        .args(["--metrics", &format!("{ip}:15020")])
        .args(["--admin", &format!("{ip}:15000")])
        .args(["--concurrency", "1", "--access-log", "false"]);
    if let Some(a) = advertise {
        cmd.args(["--advertise", &a.to_string()]);
    }
    remove_env_prefixed(&mut cmd, "TRELLIS_");
    cmd.env("TRELLIS_LOG", log);
    Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))
}
