//! Setting a service up under systemd from the command that creates it
//! (`trellis vm join`, `trellis-controlplane init --systemd`): checks that
//! the host can run the unit, rewrites its environment file in place,
//! runs `systemctl`, and waits for the unit to be `active` — for a
//! `Type=notify` unit, once the service sent READY=1 ([`crate::notify`]).
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Why the unit cannot be set up or did not start; the message says what
/// to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(pub String);

fn err(msg: impl Into<String>) -> UnitError {
    UnitError(msg.into())
}

/// `text` (an environment file) with each `KEY=VALUE` of `vars` set: the
/// first line setting KEY, or its commented-out default `#KEY=...`, is
/// replaced in place, so the packaged comments stay beside it; a KEY with
/// no such line is appended. Any later line setting KEY is commented out,
/// so that the value given is the one in force.
pub fn set_vars(text: &str, vars: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (key, value) in vars {
        let set = format!("{key}={value}");
        let mut placed = false;
        for line in lines.iter_mut() {
            let bare = line.trim_start().trim_start_matches('#').trim_start();
            if !bare.starts_with(&format!("{key}=")) {
                continue;
            }
            let active = !line.trim_start().starts_with('#');
            if !placed {
                *line = set.clone();
                placed = true;
            } else if active {
                *line = format!("#{line}");
            }
        }
        if !placed {
            lines.push(set);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// The value `text` (an environment file) sets KEY to, if a line sets it
/// (the last one wins, as systemd reads it).
pub fn get_var(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// `text` with every line setting KEY commented out.
pub fn unset_var(text: &str, key: &str) -> String {
    let mut out: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(&format!("{key}=")) {
                format!("#{}", l.trim_start())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// Checks that `unit` can be set up here by `command`: run as root,
/// systemd running, and the unit (from `package`) installed.
pub fn preflight(command: &str, unit: &str, package: &str) -> Result<(), UnitError> {
    if !rustix::process::geteuid().is_root() {
        return Err(err(format!(
            "{command} changes the host (its services and files under /etc and /var/lib): \
             run it as root (sudo {command} ...)"
        )));
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return Err(err(format!(
            "systemd is not running on this host (/run/systemd/system is missing): {unit} \
             needs it; without systemd, run the binary yourself"
        )));
    }
    let load = systemctl(&["show", "-p", "LoadState", "--value", unit])?;
    if load.trim() != "loaded" {
        return Err(err(format!(
            "the {package} package is not installed ({unit}: {}): install it first, \
             e.g. apt install ./{package}_VERSION_amd64.deb",
            load.trim()
        )));
    }
    Ok(())
}

/// ActiveState and SubState of `unit`.
pub fn state(unit: &str) -> Result<(String, String), UnitError> {
    let out = systemctl(&["show", "-p", "ActiveState,SubState", unit])?;
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_default()
            .to_string()
    };
    Ok((get("ActiveState"), get("SubState")))
}

/// Enables and starts `unit`, and waits until it is active (READY=1 for
/// a `Type=notify` unit); on a failure, or after `timeout`, the error
/// carries the end of its journal.
pub fn enable_and_wait(unit: &str, timeout: Duration) -> Result<(), UnitError> {
    systemctl(&["enable", "--now", "--no-block", unit])?;
    let start = Instant::now();
    loop {
        let (active, sub) = state(unit)?;
        match (active.as_str(), sub.as_str()) {
            ("active", _) => return Ok(()),
            ("failed", _) | (_, "auto-restart") => {
                return Err(err(format!(
                    "{unit} failed to start ({active}/{sub}):\n{}",
                    journal(unit)
                )))
            }
            _ if start.elapsed() > timeout => {
                return Err(err(format!(
                    "{unit} not ready after {timeout:?} ({active}/{sub}):\n{}",
                    journal(unit)
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The last lines of `unit`'s journal.
pub fn journal(unit: &str) -> String {
    run("journalctl", &["-u", unit, "--no-pager", "-n", "20"])
        .unwrap_or_else(|e| format!("(no journal: {e})"))
}

pub fn systemctl(args: &[&str]) -> Result<String, UnitError> {
    run("systemctl", args)
}

/// Runs `program`; its stdout, or an error with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, UnitError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| err(format!("running {program}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{program} {}: {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGED: &str = "# Settings.\n\n# The token.\n#TRELLIS_TOKEN=\n\n#TRELLIS_CAPTURE=none\n#TRELLIS_LOG=info\n";

    #[test]
    fn set_vars_replaces_the_commented_default_in_place_and_keeps_comments() {
        let out = set_vars(
            PACKAGED,
            &[
                ("TRELLIS_TOKEN", "tok".into()),
                ("TRELLIS_CAPTURE", "iptables".into()),
                ("TRELLIS_DNS_UPSTREAM", "10.0.0.2:53".into()),
            ],
        );
        assert_eq!(
            out,
            "# Settings.\n\n# The token.\nTRELLIS_TOKEN=tok\n\nTRELLIS_CAPTURE=iptables\n\
             #TRELLIS_LOG=info\nTRELLIS_DNS_UPSTREAM=10.0.0.2:53\n"
        );
        assert_eq!(get_var(&out, "TRELLIS_TOKEN").as_deref(), Some("tok"));
        assert_eq!(get_var(&out, "TRELLIS_LOG"), None);
    }

    #[test]
    fn set_vars_comments_out_a_later_setting_so_the_given_value_wins() {
        let text = "TRELLIS_CAPTURE=none\nX=1\nTRELLIS_CAPTURE=nftables\n";
        let out = set_vars(text, &[("TRELLIS_CAPTURE", "iptables".into())]);
        assert_eq!(
            out,
            "TRELLIS_CAPTURE=iptables\nX=1\n#TRELLIS_CAPTURE=nftables\n"
        );
        assert_eq!(
            get_var(&out, "TRELLIS_CAPTURE").as_deref(),
            Some("iptables")
        );
        // A prefix of another key is not that key.
        let out = set_vars("#TRELLIS_DNS_UPSTREAM=\n", &[("TRELLIS_DNS", "a".into())]);
        assert_eq!(out, "#TRELLIS_DNS_UPSTREAM=\nTRELLIS_DNS=a\n");
    }

    #[test]
    fn get_var_reads_the_last_setting_and_unset_var_comments_it_out() {
        let text = "TRELLIS_TOKEN=a\n  TRELLIS_TOKEN=\"b\"\n#TRELLIS_TOKEN=c\n";
        assert_eq!(get_var(text, "TRELLIS_TOKEN").as_deref(), Some("b"));
        let out = unset_var(text, "TRELLIS_TOKEN");
        assert_eq!(get_var(&out, "TRELLIS_TOKEN"), None);
        assert_eq!(
            out,
            "#TRELLIS_TOKEN=a\n#TRELLIS_TOKEN=\"b\"\n#TRELLIS_TOKEN=c\n"
        );
    }
}
