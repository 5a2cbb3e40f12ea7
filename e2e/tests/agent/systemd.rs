//! What systemd hears from a `Type=notify` unit with `WatchdogSec=`: the
//! test plays systemd's side of `sd_notify(3)` (a datagram socket named by
//! `NOTIFY_SOCKET`, `WATCHDOG_USEC`) for a real agent and a real
//! control-plane node. The units themselves are tested under a booted
//! systemd with the packages.
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, Cluster, Proc};

use crate::fixture::status;

/// systemd's end: a socket in `dir`, and the messages it receives.
struct Systemd {
    socket: UnixDatagram,
    path: String,
}

impl Systemd {
    fn bind(dir: &Path) -> anyhow::Result<Systemd> {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Systemd {
            socket,
            path: path.display().to_string(),
        })
    }

    /// The next message, other than a watchdog ping if `skip_pings`.
    fn next(&self, skip_pings: bool) -> anyhow::Result<String> {
        let mut buf = [0u8; 512];
        loop {
            let n = self.socket.recv(&mut buf)?;
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !(skip_pings && m == "WATCHDOG=1") {
                return Ok(m);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_systemd_ready_after_its_first_config_feeds_the_watchdog_and_stops(
) -> anyhow::Result<()> {
    let block = Block::take(11, &[(41, 15000)])?;
    let ip = block.ip(41).to_string();
    let cp = Cluster::init(&[]).await?;
    let token = cp.token(&["--kind", "vm", "--identity", "default/notified"])?;
    let systemd = Systemd::bind(cp.root.path())?;
    let data = cp.root.path().join("agent-data");
    let mut cmd = Command::new(bin("trellis-agent"));
    cmd.args(["--token", &token, "--data-dir", &data.display().to_string()]);
    trellis_e2e::agent_listeners(&mut cmd, &ip);
    cmd.args(["--app-host", &ip, "--address", &ip]);
    // systemd's variables, as a unit with WatchdogSec=1 would set them.
    cmd.env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", "1000000");
    let started = Instant::now();
    let mut agent = Proc::spawn("trellis-agent", &mut cmd, &cp.root.path().join("agent.log"))?;

    let ready = systemd.next(true)?;
    assert_eq!(
        ready,
        "READY=1\nSTATUS=serving the control plane's config",
        "{}",
        agent.output()
    );
    // READY comes after /ready says so, never before.
    assert_eq!(status(&[&format!("http://{ip}:15000/ready")]), 200);
    // Fed at half the interval: a ping within the next second.
    let ping = Instant::now();
    assert_eq!(systemd.next(false)?, "WATCHDOG=1");
    assert!(
        ping.elapsed() < Duration::from_millis(900),
        "{:?}",
        ping.elapsed()
    );

    let exit = agent.terminate()?;
    assert_eq!(systemd.next(true)?, "STOPPING=1\nSTATUS=draining");
    assert!(exit.success(), "{exit:?}");
    eprintln!("READY=1 {:?} after the agent started", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_control_plane_node_tells_systemd_ready_once_it_is_a_member() -> anyhow::Result<()>
{
    let mut cp = Cluster::init(&[]).await?;
    let systemd = Systemd::bind(cp.root.path())?;
    cp.node_env = vec![
        ("NOTIFY_SOCKET".into(), systemd.path.clone()),
        ("WATCHDOG_USEC".into(), "1000000".into()),
    ];
    // Returns once the node serves and is a member.
    let id = cp.join(false).await?;
    let ready = systemd.next(true)?;
    assert!(
        ready.starts_with(&format!("READY=1\nSTATUS=node {id} serving on ")),
        "{ready}"
    );
    assert_eq!(systemd.next(false)?, "WATCHDOG=1");
    cp.stop(id)?;
    assert_eq!(systemd.next(true)?, "STOPPING=1\nSTATUS=draining");
    Ok(())
}
