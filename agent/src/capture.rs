//! Traffic capture (`--capture iptables` or `--capture nftables`), as
//! Istio's init container sets it up: the application's outgoing TCP is
//! redirected to the outbound listener and incoming TCP to the inbound
//! listener. The host's outgoing DNS (UDP and TCP to port 53, whatever the
//! server, a local one included) is redirected to the DNS proxy. The
//! agent's own connections carry [`CAPTURE_MARK`] and are let through, as
//! is other loopback traffic.
//!
//! IPv4 and IPv6 alike: an IPv6 connection the rules left alone would
//! bypass the mesh (and, inbound, reach a STRICT workload in plaintext).
//!
//! The rules are written once ([`Capture::rules`]) and rendered for either
//! backend. With iptables they live in two chains of the `nat` table of
//! `iptables` and of `ip6tables`, flushed and refilled on install (left
//! alone if they hold these rules already: a hot restart); with
//! nftables in a table of their own, `inet trellis` (both families),
//! replaced whole in one transaction. Installing is idempotent either way;
//! [`Capture::remove`] undoes it on clean shutdown.
use std::io::Write;
use std::process::{Command, Stdio};

use trellis_transport::connect::CAPTURE_MARK;

/// Which netfilter front end installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Iptables,
    Nftables,
}

/// An IP version: each has its own loopback network, and its own
/// iptables command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// The chain a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chain {
    /// Entered from PREROUTING for TCP.
    Inbound,
    /// Entered from OUTPUT for TCP and UDP. UDP matters for DNS only;
    /// without DNS capture nothing there matches it.
    Outbound,
}

impl Chain {
    fn iptables(self) -> &'static str {
        match self {
            Chain::Inbound => "TRELLIS_INBOUND",
            Chain::Outbound => "TRELLIS_OUTPUT",
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Chain::Inbound => "inbound",
            Chain::Outbound => "outbound",
        }
    }
}

/// What a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every packet of a protocol (`tcp`, `udp`).
    Proto(&'static str),
    /// A protocol and destination port.
    Port(&'static str, u16),
    /// Packets of sockets carrying [`CAPTURE_MARK`]: the agent's own.
    AgentMark,
    /// Packets leaving on the loopback interface.
    OutLoopback,
    /// Packets to the loopback network of a family: 127.0.0.0/8, ::1.
    ToLoopback(Family),
}

/// What a matching packet gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Left alone.
    Return,
    /// Redirected to a local port.
    Redirect(u16),
}

/// One NAT rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: Chain,
    pub when: Match,
    pub then: Action,
}

impl Rule {
    /// Whether the rule applies to packets of `family`.
    fn applies_to(&self, family: Family) -> bool {
        match self.when {
            Match::ToLoopback(f) => f == family,
            _ => true,
        }
    }

    /// As arguments of `iptables -t nat` (or `ip6tables`).
    fn iptables(&self) -> String {
        let when = match self.when {
            Match::Proto(p) => format!("-p {p}"),
            Match::Port(p, port) => format!("-p {p} --dport {port}"),
            Match::AgentMark => format!("-m mark --mark {CAPTURE_MARK}"),
            Match::OutLoopback => "-o lo".to_string(),
            Match::ToLoopback(Family::V4) => "-d 127.0.0.0/8".to_string(),
            Match::ToLoopback(Family::V6) => "-d ::1/128".to_string(),
        };
        let then = match self.then {
            Action::Return => "-j RETURN".to_string(),
            Action::Redirect(port) => format!("-j REDIRECT --to-ports {port}"),
        };
        format!("-A {} {when} {then}", self.chain.iptables())
    }

    /// As an nft rule statement, inside its chain.
    fn nft(&self) -> String {
        let when = match self.when {
            Match::Proto(p) => format!("meta l4proto {p}"),
            Match::Port(p, port) => format!("{p} dport {port}"),
            Match::AgentMark => format!("meta mark {CAPTURE_MARK}"),
            Match::OutLoopback => r#"oifname "lo""#.to_string(),
            Match::ToLoopback(Family::V4) => "ip daddr 127.0.0.0/8".to_string(),
            Match::ToLoopback(Family::V6) => "ip6 daddr ::1".to_string(),
        };
        let then = match self.then {
            Action::Return => "return".to_string(),
            Action::Redirect(port) => format!("redirect to :{port}"),
        };
        format!("{when} {then}")
    }
}

/// The nftables table the rules live in: `inet`, for both families
/// (Linux 5.2 and nft 0.9.1 or later for NAT there).
const NFT_TABLE: &str = "inet trellis";

/// Where agents before IPv6 capture kept the rules; removed with the
/// current table, so that one left by an unclean stop does not capture
/// beside it.
const NFT_OLD_TABLE: &str = "ip trellis";

/// Where the iptables chains are entered from: built-in chain, protocol,
/// chain.
const JUMPS: [(&str, &str, Chain); 3] = [
    ("PREROUTING", "tcp", Chain::Inbound),
    ("OUTPUT", "tcp", Chain::Outbound),
    ("OUTPUT", "udp", Chain::Outbound),
];

/// What to capture.
#[derive(Clone, Debug)]
pub struct Capture {
    pub backend: Backend,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// The DNS proxy's port, if outgoing DNS is to be captured.
    pub dns_port: Option<u16>,
    /// Inbound ports left alone (the agent's own, ssh...).
    pub exclude_inbound: Vec<u16>,
    /// The host has IPv6, and the agent listens for what IPv6 capture
    /// redirects. Without it, IPv6 is left alone.
    pub ipv6: bool,
}

/// A failed iptables or nft command.
#[derive(Debug, thiserror::Error)]
#[error("{command} {args}: {reason}; capture needs root (CAP_NET_ADMIN) and the {command} command")]
pub struct CaptureError {
    command: &'static str,
    args: String,
    reason: String,
}

impl Capture {
    /// The rules, in order, for either backend (pure, for tests).
    pub fn rules(&self) -> Vec<Rule> {
        let rule = |chain, when, then| Rule { chain, when, then };
        let mut r: Vec<Rule> = self
            .exclude_inbound
            .iter()
            .map(|&p| rule(Chain::Inbound, Match::Port("tcp", p), Action::Return))
            .collect();
        r.push(rule(
            Chain::Inbound,
            Match::Proto("tcp"),
            Action::Redirect(self.inbound_port),
        ));
        r.push(rule(Chain::Outbound, Match::AgentMark, Action::Return));
        if let Some(port) = self.dns_port {
            for proto in ["udp", "tcp"] {
                r.push(rule(
                    Chain::Outbound,
                    Match::Port(proto, 53),
                    Action::Redirect(port),
                ));
            }
        }
        r.push(rule(Chain::Outbound, Match::OutLoopback, Action::Return));
        for family in Family::ALL {
            r.push(rule(
                Chain::Outbound,
                Match::ToLoopback(family),
                Action::Return,
            ));
        }
        r.push(rule(
            Chain::Outbound,
            Match::Proto("tcp"),
            Action::Redirect(self.outbound_port),
        ));
        r
    }

    /// The rules of `family` as arguments of `iptables -t nat` (or
    /// `ip6tables`).
    pub fn iptables_rules(&self, family: Family) -> Vec<String> {
        self.rules()
            .iter()
            .filter(|r| r.applies_to(family))
            .map(Rule::iptables)
            .collect()
    }

    /// The families capture covers: IPv6 only where the host has it
    /// (`ip6tables` fails on a kernel without it).
    fn families(&self) -> &'static [Family] {
        if self.ipv6 {
            &Family::ALL
        } else {
            &[Family::V4]
        }
    }

    /// The script `nft -f -` runs to install the rules: it removes the
    /// tables (creating each first, so that deleting cannot fail) and
    /// defines the table anew, all in one transaction, so the rules in
    /// force are never half replaced. The base chains sit at priority
    /// -100, where DNAT runs (nft names it `dstnat` on prerouting only).
    /// Without IPv6 only IPv4 enters them.
    pub fn nft_script(&self) -> String {
        let rules = self.rules();
        let chain = |c: Chain| {
            let body: String = rules
                .iter()
                .filter(|r| r.chain == c)
                .map(|r| format!("\t\t{}\n", r.nft()))
                .collect();
            format!("\tchain {} {{\n{body}\t}}\n", c.nft())
        };
        let inbound = Chain::Inbound.nft();
        let outbound = Chain::Outbound.nft();
        let only = if self.ipv6 { "" } else { "meta nfproto ipv4 " };
        format!(
            "{}\
             table {NFT_TABLE} {{\n\
             {}{}\
             \tchain prerouting {{\n\
             \t\ttype nat hook prerouting priority -100; policy accept;\n\
             \t\t{only}meta l4proto tcp jump {inbound}\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype nat hook output priority -100; policy accept;\n\
             \t\t{only}meta l4proto {{ tcp, udp }} jump {outbound}\n\
             \t}}\n\
             }}\n",
            nft_delete_tables(),
            chain(Chain::Inbound),
            chain(Chain::Outbound),
        )
    }

    /// Installs the rules (again, if they were there), after removing any
    /// the other front end left: an unclean stop, then a switch of
    /// `--capture`, would leave both capturing. What fails is undone
    /// whole: half the rules (IPv4 without IPv6, say) would redirect
    /// traffic to an agent that is not going to run.
    pub fn install(&self) -> Result<(), CaptureError> {
        let other = match self.backend {
            Backend::Iptables => Backend::Nftables,
            Backend::Nftables => Backend::Iptables,
        };
        other.remove();
        let installed = match self.backend {
            Backend::Iptables => self.install_iptables(),
            Backend::Nftables => nft(&["-f", "-"], Some(&self.nft_script())),
        };
        if installed.is_err() {
            self.remove();
        }
        installed
    }

    fn install_iptables(&self) -> Result<(), CaptureError> {
        for &family in self.families() {
            if self.iptables_in_place(family) {
                continue;
            }
            let iptables = |args: &[&str]| iptables(family, args);
            for chain in [Chain::Inbound, Chain::Outbound].map(Chain::iptables) {
                if iptables(&["-t", "nat", "-N", chain]).is_err() {
                    iptables(&["-t", "nat", "-F", chain])?;
                }
            }
            for (hook, proto, chain) in JUMPS {
                let jump = |op| ["-t", "nat", op, hook, "-p", proto, "-j", chain.iptables()];
                if iptables(&jump("-C")).is_err() {
                    iptables(&jump("-A"))?;
                }
            }
            for rule in self.iptables_rules(family) {
                let args: Vec<&str> = ["-t", "nat"]
                    .into_iter()
                    .chain(rule.split_whitespace())
                    .collect();
                iptables(&args)?;
            }
        }
        Ok(())
    }

    /// Whether `family`'s chains hold these rules and no others, and are
    /// jumped to: then installing leaves them alone. Flushing and refilling
    /// them would let connections made meanwhile bypass the agent: an agent
    /// taking over from another (a hot restart) finds them in place.
    fn iptables_in_place(&self, family: Family) -> bool {
        let rules = self.iptables_rules(family);
        let listed: usize = [Chain::Inbound, Chain::Outbound]
            .iter()
            .map(|c| {
                iptables_output(family, &["-t", "nat", "-S", c.iptables()])
                    .map(|out| out.lines().filter(|l| l.starts_with("-A ")).count())
                    .unwrap_or(usize::MAX / 4)
            })
            .sum();
        let check = |args: Vec<&str>| iptables(family, &args).is_ok();
        listed == rules.len()
            && rules.iter().all(|r| {
                let rule = r.strip_prefix("-A ").unwrap_or(r);
                check(
                    ["-t", "nat", "-C"]
                        .into_iter()
                        .chain(rule.split_whitespace())
                        .collect(),
                )
            })
            && JUMPS.iter().all(|(hook, proto, chain)| {
                check(vec![
                    "-t",
                    "nat",
                    "-C",
                    hook,
                    "-p",
                    proto,
                    "-j",
                    chain.iptables(),
                ])
            })
    }

    /// Removes the rules and chains (best effort: what is already gone is fine).
    pub fn remove(&self) {
        self.backend.remove();
    }
}

impl Backend {
    const ALL: [Backend; 2] = [Backend::Iptables, Backend::Nftables];

    /// Removes the rules and chains this front end installs, whatever
    /// ports they redirect to (best effort: what is already gone, or a
    /// front end that is not installed, is fine).
    pub fn remove(self) {
        match self {
            Backend::Iptables => {
                // Both, whatever `ipv6` says now: an earlier run may have
                // had it.
                for family in Family::ALL {
                    let iptables = |args: &[&str]| iptables(family, args);
                    for (hook, proto, chain) in JUMPS {
                        let jump = ["-t", "nat", "-D", hook, "-p", proto, "-j", chain.iptables()];
                        while iptables(&jump).is_ok() {}
                    }
                    for chain in [Chain::Inbound, Chain::Outbound].map(Chain::iptables) {
                        let _ = iptables(&["-t", "nat", "-F", chain]);
                        let _ = iptables(&["-t", "nat", "-X", chain]);
                    }
                }
            }
            Backend::Nftables => {
                let _ = nft(&["-f", "-"], Some(&nft_delete_tables()));
            }
        }
    }
}

/// Removes what either front end installed, as `trellis-agent
/// --remove-capture` does after the agent stopped, cleanly or not
/// (systemd's `ExecStopPost=`).
pub fn remove_all() {
    for backend in Backend::ALL {
        backend.remove();
    }
}

/// nft statements that delete the current and the old table, whether
/// they are there or not.
fn nft_delete_tables() -> String {
    [NFT_OLD_TABLE, NFT_TABLE]
        .map(|t| format!("add table {t}\ndelete table {t}\n"))
        .concat()
}

fn iptables(family: Family, args: &[&str]) -> Result<(), CaptureError> {
    iptables_output(family, args).map(drop)
}

/// What `iptables args` (or `ip6tables`) printed.
fn iptables_output(family: Family, args: &[&str]) -> Result<String, CaptureError> {
    run(family.iptables(), &[&["-w", "5"], args].concat(), None)
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), CaptureError> {
    run("nft", args, stdin).map(drop)
}

/// Runs `command args`, feeding it `stdin` if given; what it printed.
fn run(command: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, CaptureError> {
    let err = |reason: String| CaptureError {
        command,
        args: args.join(" "),
        reason,
    };
    let mut child = Command::new(command)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    // Written, then the pipe closed; waited for even if the write failed,
    // whose cause is then in what the command printed.
    let written = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => pipe.write_all(input.as_bytes()),
        _ => Ok(()),
    };
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    written.map_err(|e| err(e.to_string()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(dns_port: Option<u16>, exclude_inbound: Vec<u16>) -> Capture {
        Capture {
            backend: Backend::Iptables,
            inbound_port: 15006,
            outbound_port: 15001,
            dns_port,
            exclude_inbound,
            ipv6: true,
        }
    }

    #[test]
    fn rules_skip_excluded_ports_marked_and_loopback_traffic() {
        let c = capture(None, vec![15006, 22]);
        assert_eq!(
            c.iptables_rules(Family::V4),
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
    fn ip6tables_gets_the_same_rules_with_its_own_loopback() {
        let c = capture(Some(15053), vec![22]);
        let (v4, v6) = (c.iptables_rules(Family::V4), c.iptables_rules(Family::V6));
        let loopback = |f| Rule {
            chain: Chain::Outbound,
            when: Match::ToLoopback(f),
            then: Action::Return,
        };
        let swapped: Vec<String> = v4
            .iter()
            .map(|r| {
                if *r == loopback(Family::V4).iptables() {
                    loopback(Family::V6).iptables()
                } else {
                    r.clone()
                }
            })
            .collect();
        assert_eq!(v6, swapped);
        assert!(v6.contains(&"-A TRELLIS_OUTPUT -d ::1/128 -j RETURN".to_string()));
        assert_eq!(c.families(), [Family::V4, Family::V6]);
        let v4_only = Capture { ipv6: false, ..c };
        assert_eq!(v4_only.families(), [Family::V4]);
    }

    #[test]
    fn dns_from_anyone_but_the_agent_goes_to_the_dns_proxy() {
        let c = capture(Some(15053), vec![15053]);
        let rules = c.iptables_rules(Family::V4);
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

    #[test]
    fn nftables_gets_the_same_rules_in_one_table_replaced_whole() {
        let script = capture(Some(15053), vec![22]).nft_script();
        assert_eq!(
            script,
            "add table ip trellis
delete table ip trellis
add table inet trellis
delete table inet trellis
table inet trellis {
\tchain inbound {
\t\ttcp dport 22 return
\t\tmeta l4proto tcp redirect to :15006
\t}
\tchain outbound {
\t\tmeta mark 1337 return
\t\tudp dport 53 redirect to :15053
\t\ttcp dport 53 redirect to :15053
\t\toifname \"lo\" return
\t\tip daddr 127.0.0.0/8 return
\t\tip6 daddr ::1 return
\t\tmeta l4proto tcp redirect to :15001
\t}
\tchain prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta l4proto tcp jump inbound
\t}
\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta l4proto { tcp, udp } jump outbound
\t}
}
"
        );
    }

    #[test]
    fn without_ipv6_nftables_leaves_it_alone() {
        let script = Capture {
            ipv6: false,
            ..capture(None, vec![22])
        }
        .nft_script();
        assert!(
            script.contains("\t\tmeta nfproto ipv4 meta l4proto tcp jump inbound\n")
                && script
                    .contains("\t\tmeta nfproto ipv4 meta l4proto { tcp, udp } jump outbound\n"),
            "{script}"
        );
    }
}
