//! Traffic capture with iptables (`--capture iptables`), as Istio's init
//! container sets it up: the application's outgoing TCP is redirected to
//! the outbound listener and incoming TCP to the inbound listener. The
//! host's outgoing DNS (UDP and TCP to port 53, whatever the server, a
//! local one included) is redirected to the DNS proxy. The agent's own
//! connections carry [`CAPTURE_MARK`] and are let through, as is other
//! loopback traffic. Installing is idempotent (chains are flushed and
//! refilled); [`Capture::remove`] undoes it on clean shutdown.
use std::process::Command;

use crate::proxy::connect::CAPTURE_MARK;

const INBOUND_CHAIN: &str = "TRELLIS_INBOUND";
const OUTPUT_CHAIN: &str = "TRELLIS_OUTPUT";
/// Where the chains are entered from: built-in chain, protocol, chain.
/// UDP enters the output chain for DNS only; without DNS capture nothing
/// there matches it.
const JUMPS: [(&str, &str, &str); 3] = [
    ("PREROUTING", "tcp", INBOUND_CHAIN),
    ("OUTPUT", "tcp", OUTPUT_CHAIN),
    ("OUTPUT", "udp", OUTPUT_CHAIN),
];

/// What to capture.
#[derive(Clone, Debug)]
pub struct Capture {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// The DNS proxy's port, if outgoing DNS is to be captured.
    pub dns_port: Option<u16>,
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
        if let Some(port) = self.dns_port {
            for proto in ["udp", "tcp"] {
                r.push(format!(
                    "-A {OUTPUT_CHAIN} -p {proto} --dport 53 -j REDIRECT --to-ports {port}"
                ));
            }
        }
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
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            if run(&["-t", "nat", "-N", chain]).is_err() {
                run(&["-t", "nat", "-F", chain])?;
            }
        }
        for (hook, proto, chain) in JUMPS {
            if run(&["-t", "nat", "-C", hook, "-p", proto, "-j", chain]).is_err() {
                run(&["-t", "nat", "-A", hook, "-p", proto, "-j", chain])?;
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
        for (hook, proto, chain) in JUMPS {
            while run(&["-t", "nat", "-D", hook, "-p", proto, "-j", chain]).is_ok() {}
        }
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
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
            dns_port: None,
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

    #[test]
    fn dns_from_anyone_but_the_agent_goes_to_the_dns_proxy() {
        let c = Capture {
            inbound_port: 15006,
            outbound_port: 15001,
            dns_port: Some(15053),
            exclude_inbound: vec![15053],
        };
        let rules = c.rules();
        let at = |r: &str| {
            rules
                .iter()
                .position(|x| x == r)
                .unwrap_or_else(|| panic!("{r} in {rules:?}"))
        };
        let mark = at("-A TRELLIS_OUTPUT -m mark --mark 1337 -j RETURN");
        let udp = at("-A TRELLIS_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053");
        let tcp = at("-A TRELLIS_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports 15053");
        // The agent's own queries pass first; queries to a local resolver
        // (127.0.0.53) are captured too, before loopback is let through.
        let lo = at("-A TRELLIS_OUTPUT -o lo -j RETURN");
        assert!(
            mark < udp && mark < tcp && udp < lo && tcp < lo,
            "{rules:?}"
        );
        assert!(rules.contains(&"-A TRELLIS_INBOUND -p tcp --dport 15053 -j RETURN".to_string()));
    }
}
