//! Hosts for multi-host tests: each [`Host`] is a real Linux network
//! namespace with its own address on a [`Net`], a bridge in the root
//! namespace that the hosts' `eth0` veths plug into. Processes run inside a
//! host through [`Host::command`]; the bridge address
//! ([`Net::gateway`]) reaches the root namespace, where tests may run
//! servers too.
//!
//! Needs root and iproute2: a test calls [`unavailable`] first and skips
//! when it says why not. Dropping a [`Net`] removes everything it made
//! (processes left inside its hosts, namespaces, their `/etc/netns` files,
//! veths, bridge, firewall rules), on panics too; a [`Partition`] cuts
//! hosts off a `Net` with iptables until it is dropped. Each `Net` takes its own random /24 in
//! 10.128.0.0/9, and the /64 `fd00:7472:ID::/64` of the same id for IPv6
//! (every host has both), and names its devices after it, so tests in
//! parallel, and in parallel processes, do not clash.
use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// Why this process cannot make network namespaces (not root, no `ip`,
/// a sandbox that forbids it), or `None` when it can. Probed once.
pub fn unavailable() -> Option<&'static str> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(probe).as_deref()
}

fn probe() -> Option<String> {
    if !is_root() {
        return Some("network namespaces need root".into());
    }
    // Every host gets an IPv6 address too.
    if std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        return Some("the hosts need IPv6, which this machine has turned off".into());
    }
    let ns = format!("trellis-probe-{}", std::process::id());
    match ip(&["netns", "add", &ns]) {
        Ok(_) => {
            let _ = ip(&["netns", "del", &ns]);
            None
        }
        Err(e) => Some(format!("cannot make a network namespace: {e:#}")),
    }
}

/// Effective uid 0, from `/proc/self/status` (no `unsafe` geteuid).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// How many random subnets [`Net::new`] tries before giving up.
const ATTEMPTS: usize = 32;

/// A bridge with a /24 of its own, and the hosts plugged into it.
pub struct Net {
    label: String,
    /// Random; picks the subnet and names the devices.
    id: u16,
    bridge: String,
    gateway: Ipv4Addr,
    /// Made so far, to remove on drop.
    namespaces: Vec<String>,
    veths: Vec<String>,
    /// The commands (`iptables`, `ip6tables`) a FORWARD rule was added with.
    forward_rules: Vec<&'static str>,
}

impl Net {
    /// A new bridge, up, with address `.1` of a free subnet. `label`
    /// (letters, digits, `-`) goes into the namespace names, to tell whose
    /// they are.
    pub fn new(label: &str) -> anyhow::Result<Net> {
        check_name("label", label)?;
        for _ in 0..ATTEMPTS {
            let id = RandomState::new().hash_one(std::process::id()) as u16 & 0x7fff;
            let gateway = address(id, 1);
            let bridge = format!("tr-{id:04x}");
            // Another Net (here or in another process) holds this id, or
            // the machine uses the subnet.
            if Path::new("/sys/class/net").join(&bridge).exists() || subnet_in_use(gateway)? {
                continue;
            }
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            let mut net = Net {
                label: label.to_string(),
                id,
                bridge,
                gateway,
                namespaces: Vec::new(),
                veths: Vec::new(),
                forward_rules: Vec::new(),
            };
            // From here on, dropping `net` undoes what is done.
            ip(&["addr", "add", &format!("{gateway}/24"), "dev", &net.bridge])?;
            // `nodad`: usable at once, not after duplicate detection.
            let gateway6 = address6(id, 1);
            ip(&[
                "addr",
                "add",
                &format!("{gateway6}/64"),
                "dev",
                &net.bridge,
                "nodad",
            ])?;
            ip(&["link", "set", &net.bridge, "up"])?;
            allow_forwarding(&net.bridge, &mut net.forward_rules)?;
            return Ok(net);
        }
        bail!(
            "no free subnet in 10.128.0.0/9 after {ATTEMPTS} tries; \
             leftovers of killed tests? see `ip -br link | grep tr-`"
        )
    }

    /// A new host: namespace `trellis-LABEL-ID-NAME` with `lo` and `eth0`
    /// up, `eth0` on the bridge with the next free address (IPv4 and
    /// IPv6), and default routes through the bridge.
    pub fn host(&mut self, name: &str) -> anyhow::Result<Host> {
        check_name("host name", name)?;
        let (n, last) = self.next_address()?;
        let addr = address(self.id, last);
        let netns = format!("trellis-{}-{:04x}-{name}", self.label, self.id);
        ip(&["netns", "add", &netns])?;
        self.namespaces.push(netns.clone());
        // At most 11 characters: interface names have 15.
        let veth = format!("trv{:04x}-{n}", self.id);
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        self.veths.push(veth.clone());
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        let inside = |args: &[&str]| ip(&[&["-n", netns.as_str()], args].concat());
        let addr6 = address6(self.id, last);
        inside(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        inside(&[
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        inside(&["link", "set", "lo", "up"])?;
        inside(&["link", "set", "eth0", "up"])?;
        inside(&["route", "add", "default", "via", &self.gateway.to_string()])?;
        let gateway6 = address6(self.id, 1).to_string();
        inside(&["-6", "route", "add", "default", "via", &gateway6])?;
        Ok(Host {
            name: name.to_string(),
            netns,
            addr,
            addr6,
        })
    }

    /// The number of the next veth, and the last byte of its address.
    fn next_address(&self) -> anyhow::Result<(usize, u8)> {
        let n = self.veths.len() + 2;
        let last = u8::try_from(n)
            .ok()
            .filter(|&n| n < 255)
            .context("a Net has room for 253 hosts")?;
        Ok((n, last))
    }

    /// Plugs `host`, a host of another net, into this one too, as `dev`
    /// with the next free address (IPv4 only; its routes stay as they
    /// are): a host with a foot on two networks, as an east-west gateway
    /// or a router has. Returns its address here.
    pub fn attach(&mut self, host: &Host, dev: &str) -> anyhow::Result<Ipv4Addr> {
        let (n, last) = self.next_address()?;
        let addr = address(self.id, last);
        let veth = format!("trv{:04x}-{n}", self.id);
        ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            dev,
            "netns",
            &host.netns,
        ])?;
        self.veths.push(veth.clone());
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        let inside = |args: &[&str]| ip(&[&["-n", host.netns.as_str()], args].concat());
        inside(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        inside(&["link", "set", dev, "up"])?;
        Ok(addr)
    }

    /// Cuts `addrs`, addresses of hosts on this net (as [`Net::attach`]
    /// gives them), off its bridge until the [`Partition`] heals or drops:
    /// iptables in the root namespace drops every packet from or to them
    /// on the bridge, bridged to another host (FORWARD, which sees bridged
    /// packets as `br_netfilter` is loaded; checked) or to the root
    /// namespace itself (INPUT, OUTPUT). Connections already open stall,
    /// as over a cut link. `name` (with the process id and a count) is the
    /// rules' comment.
    pub fn cut_off(&self, name: &str, addrs: &[Ipv4Addr]) -> anyhow::Result<Partition> {
        check_name("cut name", name)?;
        let bridged = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        if !std::fs::read_to_string(bridged).is_ok_and(|v| v.trim() == "1") {
            bail!("{bridged} is not 1: iptables would not see bridged packets (modprobe br_netfilter)");
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let comment = format!("trellis-partition-{name}-{}-{n}", std::process::id());
        let mut cut = Partition {
            comment,
            rules: Vec::new(),
            healed: false,
        };
        for addr in addrs {
            let addr = addr.to_string();
            for (chain, dir, side) in [
                ("FORWARD", "-i", "-s"),
                ("FORWARD", "-o", "-d"),
                ("INPUT", "-i", "-s"),
                ("OUTPUT", "-o", "-d"),
            ] {
                let rule: Vec<String> = [
                    chain,
                    dir,
                    &self.bridge,
                    side,
                    &addr,
                    "-m",
                    "comment",
                    "--comment",
                    &cut.comment,
                    "-j",
                    "DROP",
                ]
                .map(String::from)
                .to_vec();
                iptables("-I", &rule)?;
                // From here on, dropping `cut` removes it.
                cut.rules.push(rule);
            }
        }
        Ok(cut)
    }

    /// The net's IPv4 subnet, `10.X.Y.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c, _] = self.gateway.octets();
        format!("{a}.{b}.{c}.0/24")
    }

    /// Name of the bridge in the root namespace.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's address: the hosts' default route, and how they reach
    /// servers in the root namespace.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Best effort throughout: a leftover is better than a panic in drop.
        for ns in &self.namespaces {
            // A namespace lives on while a process is inside.
            let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).output();
            }
            let _ = ip(&["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(etc_netns(ns));
        }
        // Usually gone with their namespace already.
        for veth in &self.veths {
            let _ = ip(&["link", "del", veth]);
        }
        for command in &self.forward_rules {
            let _ = run(Command::new(command).args(forward_rule("-D", &self.bridge)));
        }

        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// Hosts' addresses on a [`Net`] cut off from it while this lives (see
/// [`Net::cut_off`]): iptables rules in the root namespace, each with a
/// comment unique to the cut, removed by [`Partition::heal`] or on drop,
/// whatever happened in between.
pub struct Partition {
    comment: String,
    /// Each rule's chain and match, as added with `-I` and deleted with `-D`.
    rules: Vec<Vec<String>>,
    healed: bool,
}

impl Partition {
    /// Removes the rules: the addresses are reachable again.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        if self.healed {
            return Ok(());
        }
        self.healed = true;
        let failed: Vec<String> = self
            .rules
            .iter()
            .filter_map(|rule| iptables("-D", rule).err())
            .map(|e| format!("{e:#}"))
            .collect();
        if !failed.is_empty() {
            bail!("healing {}: {}", self.comment, failed.join("; "));
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("{e:#}");
        }
    }
}

/// A network namespace on a [`Net`]. Plain data: the [`Net`] owns it.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: String,
    /// Address of its `eth0`.
    pub addr: Ipv4Addr,
    /// IPv6 address of its `eth0`.
    pub addr6: Ipv6Addr,
}

impl Host {
    /// `program` to run inside this host (`ip netns exec NETNS program`,
    /// which execs it: the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// [`Host::command`] for async code.
    pub fn tokio_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        self.command(program).into()
    }

    /// Makes `/etc/resolv.conf` read `text` for what runs inside this host
    /// from now on (`ip netns exec` mounts `/etc/netns/NETNS/resolv.conf`
    /// over it).
    pub fn set_resolv_conf(&self, text: &str) -> anyhow::Result<()> {
        let dir = etc_netns(&self.netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("resolv.conf"), text).context("writing resolv.conf")
    }

    /// Replaces the host's default routes by `routes` (destination, next
    /// hop): it then reaches its own subnets and what they name only,
    /// whatever the root namespace forwards. How tests keep networks apart.
    pub fn only_routes(&self, routes: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
        let inside = |args: &[&str]| ip(&[&["-n", self.netns.as_str()], args].concat());
        inside(&["route", "del", "default"])?;
        inside(&["-6", "route", "del", "default"])?;
        for (dest, via) in routes {
            inside(&["route", "replace", dest, "via", &via.to_string()])?;
        }
        Ok(())
    }

    /// Lets the host forward IPv4 between its interfaces: a router.
    pub fn forward(&self) -> anyhow::Result<()> {
        run(self
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"]))
        .map(|_| ())
    }

    /// Runs `script` with `sh -c` inside this host and returns its stdout;
    /// fails with its stderr. Blocks until the script ends.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        run(self.command("sh").args(["-c", script]))
    }
}

/// Files `ip netns exec` mounts over `/etc` in namespace `netns`.
fn etc_netns(netns: &str) -> std::path::PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// Address `last` of the subnet of `id`: 10.(128 + high 7 bits).(low 8
/// bits).last.
fn address(id: u16, last: u8) -> Ipv4Addr {
    let [hi, lo] = id.to_be_bytes();
    Ipv4Addr::new(10, 128 | hi, lo, last)
}

/// IPv6 address `last` of the /64 of `id`: `fd00:7472:ID::last` (`tr`
/// in ASCII).
fn address6(id: u16, last: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x7472, id, 0, 0, 0, 0, last.into())
}

/// Whether any route of the machine falls inside the /24 of `gateway`.
fn subnet_in_use(gateway: Ipv4Addr) -> anyhow::Result<bool> {
    let [a, b, c, _] = gateway.octets();
    let routes = ip(&["-4", "route", "show", "root", &format!("{a}.{b}.{c}.0/24")])?;
    Ok(!routes.trim().is_empty())
}

/// Lets traffic from the bridge's ports (to each other, and routed to
/// other `Net`s) through the FORWARD chains of iptables and ip6tables,
/// which see bridged packets when `br_netfilter` is loaded and may drop
/// them by default (Docker sets that policy).
/// Without the command no such rule can have been set: nothing to do;
/// nor when ip6tables fails (a kernel without its tables filters nothing).
/// What was added goes into `added`, for [`Net`]'s drop.
fn allow_forwarding(bridge: &str, added: &mut Vec<&'static str>) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for command in ["iptables", "ip6tables"] {
        if std::env::split_paths(&path).any(|dir| dir.join(command).is_file()) {
            let added_rule = run(Command::new(command).args(forward_rule("-I", bridge)));
            match (command, added_rule) {
                (_, Ok(_)) => added.push(command),
                ("ip6tables", Err(_)) => {}
                (_, Err(e)) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Arguments to add (`-I`) or delete (`-D`) the FORWARD rule of `bridge`.
fn forward_rule<'a>(op: &'a str, bridge: &'a str) -> [&'a str; 6] {
    [op, "FORWARD", "-i", bridge, "-j", "ACCEPT"]
}

/// `iptables -w OP RULE` (`RULE` starting with the chain).
fn iptables(op: &str, rule: &[String]) -> anyhow::Result<String> {
    run(Command::new("iptables").args(["-w", op]).args(rule))
}

/// Letters, digits and `-`, so names stay valid file and device names.
fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if name.is_empty() || !name.chars().all(ok) {
        bail!("{what} {name:?}: use letters, digits and '-'");
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Runs `cmd` to its end; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_stay_in_the_upper_half_of_10_8() {
        assert_eq!(address(0, 1), Ipv4Addr::new(10, 128, 0, 1));
        assert_eq!(address(0x7fff, 254), Ipv4Addr::new(10, 255, 255, 254));
        assert_eq!(address(0x1234, 2), Ipv4Addr::new(10, 128 + 0x12, 0x34, 2));
        assert_eq!(address6(0x1234, 2).to_string(), "fd00:7472:1234::2");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("label", "two-hosts").is_ok());
        for bad in ["", "a b", "a/b", "a.b"] {
            assert!(check_name("label", bad).is_err(), "{bad:?}");
        }
    }
}
