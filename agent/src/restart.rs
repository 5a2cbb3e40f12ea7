//! Hot restart, as Envoy and nginx do it: on SIGHUP the agent starts the
//! agent binary anew from its installed path (after a package upgrade,
//! the new one), with its own arguments and environment, and hands it its
//! listening sockets ([`trellis_transport::handoff`]). The successor
//! takes them instead of binding, starts from the certificate and the
//! config cached in the data directory, leaves capture rules that are
//! already in place as they are, and says when it serves. Then this
//! process tells systemd the successor is the service's main process
//! (`MAINPID=`), confirms, stops accepting and drains, and exits without
//! removing capture: at no moment is a port closed, or traffic left
//! uncaptured. If the successor fails before it serves, it is killed and
//! this process serves on, having logged why.
//!
//! Each attempt's outcome is written to [`RESULT_FILE`] in the data
//! directory, where `trellis-agent --hot-restart PID` ([`request`], the
//! unit's `ExecReload=`) waits for it.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use trellis_dataplane::admin::Readiness;
use trellis_transport::handoff::{self, HandoffError, Offer};

/// How long a successor may take to connect, and then to serve.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(60);

/// The file in the data directory that tells how the last hot restart
/// went: `ok PID` or `failed: REASON`.
pub const RESULT_FILE: &str = "hot-restart";

/// Why a hot restart failed.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error("finding the agent binary: {0}")]
    Exe(std::io::Error),
    #[error("starting {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error("the new agent exited before it served ({0}); see its log lines above")]
    Exited(String),
}

/// Starts a successor, hands it `sockets` and waits until it serves;
/// then makes it systemd's main process (through `ready`). Its PID.
pub async fn hand_over(sockets: &[OwnedFd], ready: &Readiness) -> Result<u32, RestartError> {
    let exe = installed_exe().map_err(RestartError::Exe)?;
    let offer = Offer::new()?;
    tracing::info!(binary = %exe.display(), "hot restart: starting the new agent");
    let mut child = tokio::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(handoff::ENV, offer.address())
        // systemd's watchdog is this process's until the handoff; then the
        // successor's (no WATCHDOG_PID: whoever is the main process).
        .env_remove("WATCHDOG_PID")
        .spawn()
        .map_err(|e| RestartError::Spawn(exe.clone(), e))?;
    let pid = child.id().unwrap_or_default();
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
    let mut claimed = false;
    let handoff = async {
        let mut h = offer.send(pid, &fds, HANDOFF_TIMEOUT).await?;
        h.wait_ready(HANDOFF_TIMEOUT).await?;
        ready.main_pid(pid);
        claimed = true;
        h.confirm().await
    };
    let done = tokio::select! {
        done = handoff => done.map_err(RestartError::from),
        status = child.wait() => Err(RestartError::Exited(match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        })),
    };
    if let Err(e) = done {
        if claimed {
            ready.main_pid(std::process::id());
        }
        // Killed rather than asked to drain: a drain would remove the
        // capture rules this process still serves.
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e);
    }
    Ok(pid)
}

/// The path the running binary was started from, even once a package
/// upgrade replaced it (`/proc/self/exe` then names the old, deleted file).
fn installed_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// Writes the outcome of a hot restart for [`request`] (best effort:
/// logged if the data directory cannot be written).
pub fn record(data_dir: &Path, outcome: &Result<u32, RestartError>) {
    let text = match outcome {
        Ok(pid) => format!("ok {pid}\n"),
        Err(e) => format!("failed: {e}\n"),
    };
    let path = data_dir.join(RESULT_FILE);
    if let Err(e) = std::fs::write(&path, text) {
        tracing::warn!(file = %path.display(), error = %e, "writing the hot restart's outcome");
    }
}

/// Asks the agent of process `pid` (whose data directory is `data_dir`)
/// for a hot restart and waits up to `timeout` for its outcome: the
/// successor's PID, or why it failed.
pub fn request(pid: u32, data_dir: &Path, timeout: Duration) -> Result<u32, String> {
    let path = data_dir.join(RESULT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let target = rustix::process::Pid::from_raw(pid as i32).ok_or("PID 0")?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .map_err(|e| format!("signalling process {pid}: {e}"))?;
    let start = std::time::Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            // Written whole, ending in a newline.
            if let Some(line) = text.strip_suffix('\n') {
                return match line.strip_prefix("ok ") {
                    Some(new) => new
                        .parse()
                        .map_err(|_| format!("{}: {line}", path.display())),
                    None => Err(line.to_string()),
                };
            }
        }
        if start.elapsed() > timeout {
            return Err(format!("no outcome from process {pid} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
