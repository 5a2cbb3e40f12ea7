//! `trellis-controlplane init|join --systemd`: makes this host's node for
//! `trellis-controlplane.service` and leaves it running under the unit.
//!
//! As root, with the package installed: writes the settings `run` needs
//! that the node's state does not keep (`--listen`, `--advertise`,
//! `--ca-key-file`) to `/etc/trellis/controlplane.env`; runs this same
//! command without `--systemd` as the `trellis` user (`setpriv`), in the
//! unit's data directory, until the node says READY=1 — it has made its
//! state and serves, as a member — then stops it (SIGTERM: it drains) and
//! starts the unit, which runs the node from that state, and waits for
//! the unit's READY. A failure on the way puts controlplane.env back and
//! empties the data directory. A node already made there is started, not
//! made again.
use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trellis_controlplane::bootstrap::local::LocalState;
use trellis_identity::files::write_private;
use trellis_transport::unit::{self, set_vars, systemctl};

pub const UNIT: &str = "trellis-controlplane.service";
/// The unit's state directory, where the node is made.
pub const DATA_DIR: &str = "/var/lib/trellis/controlplane";
const ENV_FILE: &str = "/etc/trellis/controlplane.env";
/// How long the node has to be made, and the unit to be ready (the unit's
/// TimeoutStartSec).
const TIMEOUT: Duration = Duration::from_secs(120);

/// Sets the node up under the unit; `vars` are the TRELLIS_* settings for
/// controlplane.env.
pub fn set_up(vars: &[(&str, String)]) -> anyhow::Result<()> {
    unit::preflight(
        "trellis-controlplane --systemd",
        UNIT,
        "trellis-controlplane",
    )?;
    let dir = Path::new(DATA_DIR);
    if LocalState::exists(dir) {
        let (active, _) = unit::state(UNIT)?;
        if active != "active" {
            unit::enable_and_wait(UNIT, TIMEOUT)?;
        }
        println!(
            "the node in {DATA_DIR} exists already; {UNIT} {} (settings unchanged: \
             edit {ENV_FILE} and restart the unit to change them)",
            if active == "active" {
                "is running"
            } else {
                "started"
            }
        );
        return status();
    }
    let before =
        std::fs::read_to_string(ENV_FILE).with_context(|| format!("reading {ENV_FILE}"))?;
    write_private(Path::new(ENV_FILE), set_vars(&before, vars).as_bytes())
        .with_context(|| format!("writing {ENV_FILE}"))?;
    if let Err(e) = make_node().and_then(|()| Ok(unit::enable_and_wait(UNIT, TIMEOUT)?)) {
        let _ = systemctl(&["disable", "--now", UNIT]);
        let undo = empty(dir).and_then(|()| {
            write_private(Path::new(ENV_FILE), before.as_bytes()).map_err(Into::into)
        });
        return Err(e.context(match undo {
            Ok(()) => format!("rolled back: {ENV_FILE} restored, {DATA_DIR} emptied"),
            Err(u) => format!("rolling back failed too: {u:#}"),
        }));
    }
    println!("{UNIT} runs the node from {DATA_DIR}; settings in {ENV_FILE}");
    status()
}

/// Runs this command again, without `--systemd`, as the unit would: user
/// `trellis`, the unit's data directory, a notify socket of ours; stops it
/// once it said READY=1.
fn make_node() -> anyhow::Result<()> {
    let name = format!("trellis-controlplane-setup-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)
        .context("binding the notify socket")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let exe = std::env::current_exe()?;
    let args = std::env::args_os().skip(1).filter(|a| a != "--systemd");
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            "trellis",
            "--regid",
            "trellis",
            "--init-groups",
            "--",
        ])
        .arg(exe)
        .args(args)
        .env("TRELLIS_DATA_DIR", DATA_DIR)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .current_dir("/")
        .spawn()
        .context("running setpriv (util-linux) to make the node as the user trellis")?;
    let ready = wait_ready(&socket, &mut child);
    // Whatever happened: SIGTERM (the node drains and exits), and wait,
    // so that nothing is left writing to the data directory.
    if matches!(child.try_wait(), Ok(None)) {
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("stopping the node")?;
    }
    child.wait()?;
    ready
}

fn wait_ready(socket: &UnixDatagram, child: &mut Child) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < TIMEOUT {
        match socket.recv(&mut buf) {
            Ok(n)
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1") =>
            {
                return Ok(())
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading the notify socket"),
        }
        if let Some(status) = child.try_wait()? {
            bail!("making the node failed ({status}); its errors are above");
        }
    }
    bail!("the node was not ready after {TIMEOUT:?}")
}

fn empty(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

fn status() -> anyhow::Result<()> {
    let (active, sub) = unit::state(UNIT)?;
    let enabled = systemctl(&["is-enabled", UNIT]).unwrap_or_default();
    println!("  {UNIT}: {active} ({sub}), {}", enabled.trim());
    let admin = Path::new(DATA_DIR).join("admin.yaml");
    if admin.exists() {
        println!(
            "  admin config: {0} (as root: export TRELLIS_CONFIG={0})",
            admin.display()
        );
    }
    Ok(())
}
