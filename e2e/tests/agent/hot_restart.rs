//! Hot restart and drain as a keep-alive client sees them: a client
//! sending 200 requests a second over keep-alive through the client
//! agent's upstream listener to the echo server while the agent hot
//! restarts (SIGHUP, through `trellis-agent --hot-restart PID`, as the
//! unit's `ExecReload=`) three times, its binary replaced on disk once
//! as a package upgrade does; and while it drains on SIGTERM. Also what
//! systemd hears during a hot restart (the test plays its notify
//! socket), and a successor that fails: the agent serves on.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use trellis_e2e::steady::Steady;
use trellis_e2e::{bin, wait_for};

use crate::fixture::Loopback;

/// Kills the agent of the last successor, whoever started it, when the
/// test ends.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

/// Whether process `pid` has exited (gone, or a zombie not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE ...`
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// `trellis-agent --hot-restart PID`: the successor's PID.
fn hot_restart(pid: u32, data: &Path) -> anyhow::Result<u32> {
    let out = Command::new(bin("trellis-agent"))
        .args(["--hot-restart", &pid.to_string(), "--data-dir"])
        .arg(data)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "hot restart of {pid}: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no PID in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hot_restarts_and_a_binary_upgrade_fail_no_keep_alive_request() -> anyhow::Result<()>
{
    let mut lb = Loopback::start().await?;
    // The agent runs from a copy, replaced on disk as dpkg does (a new
    // file renamed over it) before the second restart.
    let exe = lb.dir.join("bin/trellis-agent");
    std::fs::create_dir_all(exe.parent().unwrap())?;
    std::fs::copy(bin("trellis-agent"), &exe)?;
    lb.restart_client_from(&exe, &["--drain-timeout", "2s"])
        .await?;
    let mut pid = lb.client.pid().context("the client agent's PID")?;
    let mut reaper = Reaper(pid);
    let data = lb.dir.join("client");
    let load = Steady::start(&lb.upstream(), 200, Duration::from_secs(5))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..3 {
        if round == 1 {
            let new = lb.dir.join("bin/trellis-agent.new");
            std::fs::copy(bin("trellis-agent"), &new)?;
            std::fs::rename(&new, &exe)?;
        }
        let next = hot_restart(pid, &data)?;
        ensure!(next != pid, "the same PID after a hot restart");
        // Not a new Reaper: dropping the old one would kill the draining
        // agent.
        reaper.0 = next;
        let old = pid;
        wait_for(Duration::from_secs(10), "the old agent to exit", || async {
            exited(old).then_some(())
        })
        .await?;
        pid = next;
        ensure!(!exited(pid), "the new agent {pid} exited");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = load.stop().await;
    ensure!(
        counts.failed == 0,
        "{} of {} requests failed: {:?}\n{}",
        counts.failed,
        counts.total,
        counts.errors,
        lb.client.output()
    );
    ensure!(counts.total > 400, "only {} requests sent", counts.total);
    let log = lb.client.output();
    ensure!(
        log.matches("took over from the agent that ran before")
            .count()
            == 3,
        "three successors took over:\n{log}"
    );
    drop(reaper);
    Ok(())
}

/// What systemd hears: the new process made the main one (`MAINPID=`),
/// and no `STOPPING=1`, which would stop the unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_restart_tells_systemd_the_new_main_pid_and_not_stopping() -> anyhow::Result<()> {
    let mut lb = Loopback::start().await?;
    let path = lb.dir.join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path)?;
    systemd.set_read_timeout(Some(Duration::from_millis(500)))?;
    let socket = path.display().to_string();
    lb.restart_client_env(
        &bin("trellis-agent"),
        &["--drain-timeout", "1s"],
        &[("NOTIFY_SOCKET", &socket)],
    )
    .await?;
    let pid = lb.client.pid().context("the client agent's PID")?;
    let mut reaper = Reaper(pid);
    let next = hot_restart(pid, &lb.dir.join("client"))?;
    reaper.0 = next;
    wait_for(Duration::from_secs(10), "the old agent to exit", || async {
        exited(pid).then_some(())
    })
    .await?;
    // Everything sent until then (watchdog pings aside: none without
    // WATCHDOG_USEC).
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = systemd.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let main = format!("MAINPID={next}\n");
    ensure!(
        heard.iter().any(|m| m.starts_with(&main)),
        "no {main:?} in {heard:?}"
    );
    ensure!(
        !heard.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 during a hot restart: {heard:?}"
    );
    drop(reaper);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_fails_leaves_the_agent_serving() -> anyhow::Result<()> {
    let mut lb = Loopback::start().await?;
    let exe = lb.dir.join("bin/trellis-agent");
    std::fs::create_dir_all(exe.parent().unwrap())?;
    std::fs::copy(bin("trellis-agent"), &exe)?;
    lb.restart_client_from(&exe, &[]).await?;
    let pid = lb.client.pid().context("the client agent's PID")?;
    let load = Steady::start(&lb.upstream(), 200, Duration::from_secs(5))?;
    // A bad upgrade: what is installed now does not run.
    let new = lb.dir.join("bin/trellis-agent.new");
    std::fs::write(&new, "#!/bin/sh\necho broken >&2\nexit 3\n")?;
    std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::rename(&new, &exe)?;
    let Err(e) = hot_restart(pid, &lb.dir.join("client")) else {
        bail!("a hot restart to a broken binary succeeded");
    };
    ensure!(
        e.to_string().contains("exited before it served"),
        "why: {e}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    lb.client.check_running()?;
    let counts = load.stop().await;
    ensure!(counts.failed == 0 && counts.total > 50, "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_drain_ends_keep_alive_connections_with_connection_close() -> anyhow::Result<()> {
    let mut lb = Loopback::start().await?;
    lb.restart_client_with(&["--drain-timeout", "5s"]).await?;
    let upstream: std::net::SocketAddr = format!("{}:19080", lb.client_ip()).parse()?;
    let tcp = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let get = || {
        hyper::Request::get("/")
            .header("host", "echo")
            .body(Empty::<Bytes>::new())
    };
    let first = sender.send_request(get()?).await?;
    ensure!(first.headers().get("connection").is_none());
    first.into_body().collect().await?;
    let pid = lb.client.pid().context("the client agent's PID")?;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    // Draining: the idle connection stays, and answers once more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !conn.is_finished(),
        "the idle connection was closed at once"
    );
    sender.ready().await?;
    let last = sender.send_request(get()?).await?;
    ensure!(last.status() == 200, "status {}", last.status());
    ensure!(
        last.headers().get("connection").map(|v| v.as_bytes()) == Some(b"close".as_slice()),
        "headers: {:?}",
        last.headers()
    );
    last.into_body().collect().await?;
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .context("the connection closes after its last response")???;
    // With its last connection gone, the agent exits before the deadline.
    wait_for(Duration::from_secs(4), "the agent to exit", || async {
        exited(pid).then_some(())
    })
    .await?;
    Ok(())
}
