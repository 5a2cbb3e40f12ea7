//! Traffic capture with iptables (`--capture iptables`), as Istio's init
//! container sets it up: the application's outgoing TCP is redirected to
//! the outbound listener and incoming TCP to the inbound listener. The
//! agent's own connections carry [`CAPTURE_MARK`] and are let through, as
//! is loopback traffic. Installing is idempotent (chains are flushed and
//! refilled); [`Capture::remove`] undoes it on clean shutdown.
use std::process::Command;

use crate::proxy::connect::CAPTURE_MARK;

const INBOUND_CHAIN: &str = "TRELLIS_INBOUND";
const OUTPUT_CHAIN: &str = "TRELLIS_OUTPUT";

/// What to capture.
#[derive(Clone, Debug)]
pub struct Capture {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Inbound ports left alone (the agent's own, ssh...).
    pub exclude_inbound: Vec<u16>,
}

/// A failed iptables command.
#[derive(Debug, thiserror::Error)]
#[error("iptables {args}: {reason}; capture needs root (CAP_NET_ADMIN) and the iptables command")]
pub struct CaptureError {
    args: String,
    reason: String,
}

impl Capture {
    /// The rules, as arguments of `iptables -t nat` (pure, for tests and
    /// dry runs).
    pub fn rules(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .exclude_inbound
            .iter()
            .map(|p| format!("-A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN"))
            .collect();
        r.push(format!(
            "-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        r.push(format!(
            "-A {OUTPUT_CHAIN} -m mark --mark {CAPTURE_MARK} -j RETURN"
        ));
        r.push(format!("-A {OUTPUT_CHAIN} -o lo -j RETURN"));
        r.push(format!("-A {OUTPUT_CHAIN} -d 127.0.0.0/8 -j RETURN"));
        r.push(format!(
            "-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        r
    }

    /// Installs the rules (again, if they were there).
    pub fn install(&self) -> Result<(), CaptureError> {
        for (chain, hook) in [(INBOUND_CHAIN, "PREROUTING"), (OUTPUT_CHAIN, "OUTPUT")] {
            if run(&["-t", "nat", "-N", chain]).is_err() {
                run(&["-t", "nat", "-F", chain])?;
            }
            if run(&["-t", "nat", "-C", hook, "-p", "tcp", "-j", chain]).is_err() {
                run(&["-t", "nat", "-A", hook, "-p", "tcp", "-j", chain])?;
            }
        }
        for rule in self.rules() {
            let args: Vec<&str> = ["-t", "nat"]
                .into_iter()
                .chain(rule.split_whitespace())
                .collect();
            run(&args)?;
        }
        Ok(())
    }

    /// Removes the rules and chains (best effort: what is already gone is fine).
    pub fn remove(&self) {
        for (chain, hook) in [(INBOUND_CHAIN, "PREROUTING"), (OUTPUT_CHAIN, "OUTPUT")] {
            while run(&["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain]).is_ok() {}
            let _ = run(&["-t", "nat", "-F", chain]);
            let _ = run(&["-t", "nat", "-X", chain]);
        }
    }
}

fn run(args: &[&str]) -> Result<(), CaptureError> {
    let err = |reason: String| CaptureError {
        args: args.join(" "),
        reason,
    };
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_skip_excluded_ports_marked_and_loopback_traffic() {
        let c = Capture {
            inbound_port: 15006,
            outbound_port: 15001,
            exclude_inbound: vec![15006, 22],
        };
        assert_eq!(
            c.rules(),
            [
                "-A TRELLIS_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A TRELLIS_INBOUND -p tcp --dport 22 -j RETURN",
                "-A TRELLIS_INBOUND -p tcp -j REDIRECT --to-ports 15006",
                "-A TRELLIS_OUTPUT -m mark --mark 1337 -j RETURN",
                "-A TRELLIS_OUTPUT -o lo -j RETURN",
                "-A TRELLIS_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A TRELLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }
}
