//! A child process that is killed when its guard is dropped (on success,
//! error or panic alike), with its output in a log file.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{bail, Context};

/// A running child process whose stdout and stderr go to a log file.
pub struct Proc {
    name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` with its output appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
        })
    }

    /// Process id, until it is killed or stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the process ended, if it has (without waiting).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was killed", self.name);
        };
        Ok(child.try_wait()?)
    }

    /// Fails, with the end of the log, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            let out = self.output();
            let tail: Vec<&str> = out.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{} exited ({status}):\n{}", self.name, tail.join("\n"));
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        Ok(c.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes from `cmd` the caller's environment variables named
/// `PREFIX...`: settings there would apply to every process started.
pub fn remove_env_prefixed(cmd: &mut Command, prefix: &str) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with(prefix) {
            cmd.env_remove(k);
        }
    }
}
