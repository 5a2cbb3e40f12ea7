//! The trellis-agent .deb on a booted Debian 12 (systemd as PID 1, under
//! systemd-nspawn, in a network namespace on a test bridge) with a real
//! control plane on the host: install, a VM token in
//! /etc/trellis/agent.env, `systemctl start` reaches `active` through
//! `Type=notify`, the agent runs as `trellis` and captures; `systemctl
//! stop` removes the rules, and so does a crash (ExecStopPost, then
//! Restart=on-failure); purge leaves no rule, file or user behind. With
//! iptables (its nf_tables and its legacy back end) and with nftables.
//! The package is built from the debug binaries (`packaging/build-deb.sh
//! --dev --no-build`). Skipped where namespaces or systemd-nspawn are
//! missing; the root filesystem is made (debootstrap) when not cached.
use std::time::Duration;

use anyhow::Context;
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::netns::Host;
use trellis_e2e::vm::{self, Vm};
use trellis_e2e::wait_for_blocking;

/// The unit's properties, `KEY=VALUE` lines.
fn show(vm: &Vm) -> anyhow::Result<String> {
    vm.sh("systemctl show -p ActiveState,SubState,NRestarts,Type,MainPID trellis-agent")
}

/// The end of the unit's journal, for failure messages.
fn journal(vm: &Vm) -> String {
    vm.sh("journalctl -u trellis-agent --no-pager -n 40")
        .unwrap_or_else(|e| format!("{e:#}"))
}

/// Prints `systemd-analyze security UNIT`'s verdict, for docs/vm.md.
fn print_security_score(vm: &Vm, unit: &str) {
    if let Ok(score) = vm.sh(&format!(
        "systemd-analyze security {unit} --no-pager | tail -1"
    )) {
        eprintln!("systemd-analyze security {unit}: {}", score.trim());
    }
}

/// The capture rules in force: iptables and ip6tables nat chains and
/// nftables tables that name trellis.
fn rules(vm: &Vm) -> anyhow::Result<String> {
    vm.sh("iptables -t nat -S; ip6tables -t nat -S; nft list tables")
        .map(|all| {
            all.lines()
                .filter(|l| l.to_lowercase().contains("trellis"))
                .collect::<Vec<_>>()
                .join("\n")
        })
}

/// How the VM's agent captures.
#[derive(Clone, Copy)]
enum Netfilter {
    /// `iptables` of Debian 12: its nf_tables back end.
    IptablesNft,
    /// `iptables` switched to its legacy back end (`update-alternatives`),
    /// which takes the lock `/run/xtables.lock`.
    IptablesLegacy,
    /// `TRELLIS_CAPTURE=nftables`.
    Nftables,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_deb_installs_starts_as_notify_stops_and_purges_clean() -> anyhow::Result<()> {
    package_lifecycle("vmpkg", Netfilter::IptablesNft).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_unit_captures_with_legacy_iptables_as_user_trellis() -> anyhow::Result<()> {
    package_lifecycle("vmpkg-legacy", Netfilter::IptablesLegacy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_unit_captures_with_nftables() -> anyhow::Result<()> {
    package_lifecycle("vmpkg-nft", Netfilter::Nftables).await
}

/// A control plane on a test network and a booted Debian on it, with the
/// packages built. The VM goes first (field order is drop order).
struct Booted {
    vm: Vm,
    host: Host,
    env: MeshEnv,
}

impl Booted {
    /// `None` where namespaces or systemd-nspawn are missing.
    async fn start(label: &str) -> anyhow::Result<Option<Booted>> {
        let Some(vm::OnMesh { vm, host, env }) = vm::OnMesh::boot(label).await? else {
            return Ok(None);
        };
        vm::debs()?;
        Ok(Some(Booted { vm, host, env }))
    }

    /// `dpkg -i` of `package`'s .deb in the VM; what it printed.
    fn install(&self, package: &str) -> anyhow::Result<String> {
        self.vm.install(&vm::deb(vm::debs()?, package)?)
    }
}

async fn package_lifecycle(label: &str, netfilter: Netfilter) -> anyhow::Result<()> {
    let Some(booted) = Booted::start(label).await? else {
        return Ok(());
    };
    let (vm, env) = (&booted.vm, &booted.env);
    let installed = booted.install("trellis-agent")?;
    assert!(installed.contains("not enabled"), "{installed}");
    assert!(vm
        .sh("getent passwd trellis")?
        .contains("/usr/sbin/nologin"));
    let enabled = vm.sh("systemctl is-enabled trellis-agent || true")?;
    assert_eq!(enabled.trim(), "disabled", "nothing enabled before a token");

    let token = env
        .cp
        .token(&["--kind", "vm", "--identity", "default/vm"])?;
    let env_file = vm.path("/etc/trellis/agent.env");
    let mut settings = std::fs::read_to_string(&env_file)?;
    let capture = match netfilter {
        Netfilter::IptablesNft => "iptables",
        Netfilter::IptablesLegacy => {
            vm.sh(
                "update-alternatives --set iptables /usr/sbin/iptables-legacy \
                   && update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy",
            )?;
            "iptables"
        }
        Netfilter::Nftables => "nftables",
    };
    settings += &format!("TRELLIS_TOKEN={token}\nTRELLIS_CAPTURE={capture}\n");
    std::fs::write(&env_file, settings)?;

    // Returns once the agent said READY=1 (Type=notify), or fails.
    vm.sh("systemctl start trellis-agent")
        .with_context(|| journal(vm))?;
    vm.notify_running("trellis-agent")?;
    let user = vm.sh("stat -c %U /proc/$(systemctl show -p MainPID --value trellis-agent)")?;
    assert_eq!(user.trim(), "trellis", "{}", journal(vm));
    assert!(vm.path("/var/lib/trellis/agent/cert-chain.pem").exists());
    let installed = rules(vm)?;
    let want = match netfilter {
        Netfilter::IptablesNft | Netfilter::IptablesLegacy => "-A OUTPUT -p tcp -j TRELLIS_OUTPUT",
        Netfilter::Nftables => "table inet trellis",
    };
    assert!(installed.contains(want), "{installed}\n{}", journal(vm));
    print_security_score(vm, "trellis-agent");

    // A crash: ExecStopPost removes the rules, Restart=on-failure brings
    // the agent back (from its state: the token was used), and it
    // installs them again.
    vm.sh("systemctl kill -s KILL trellis-agent")?;
    // Between the crash and the restart (RestartSec=2s).
    wait_for_blocking(
        Duration::from_secs(10),
        "the unit waiting to restart",
        || {
            show(vm)
                .ok()?
                .contains("SubState=auto-restart")
                .then_some(())
        },
    )
    .with_context(|| journal(vm))?;
    let left = rules(vm)?;
    assert!(left.is_empty(), "left after a crash: {left}");
    wait_for_blocking(Duration::from_secs(30), "the agent restarted", || {
        let props = show(vm).ok()?;
        (props.contains("NRestarts=1") && props.contains("SubState=running")).then_some(())
    })
    .with_context(|| journal(vm))?;
    let log = journal(vm);
    assert!(
        log.contains("trellis-agent.service: Main process exited, code=killed"),
        "{log}"
    );
    assert!(!rules(vm)?.is_empty(), "capture back after the restart");

    vm.sh("systemctl stop trellis-agent")?;
    let left = rules(vm)?;
    assert!(left.is_empty(), "left after stop: {left}");

    vm.sh("dpkg --purge trellis-agent")?;
    let left = rules(vm)?;
    assert!(left.is_empty(), "left after purge: {left}");
    for path in ["/var/lib/trellis", "/etc/trellis", "/usr/bin/trellis-agent"] {
        assert!(!vm.path(path).exists(), "{path} left after purge");
    }
    let user = vm.sh("getent passwd trellis");
    assert!(user.is_err(), "user trellis left after purge: {user:?}");
    Ok(())
}

/// The east-west gateway's package beside the agent's: its unit (no
/// capabilities, no netlink) reaches `active` through `Type=notify` as
/// `trellis`; purging it leaves the agent's state and the user they
/// share, purging the agent then removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eastwest_deb_starts_and_shares_the_user_with_the_agent() -> anyhow::Result<()> {
    let Some(booted) = Booted::start("vmpkg-ew").await? else {
        return Ok(());
    };
    let (vm, env) = (&booted.vm, &booted.env);
    booted.install("trellis-agent")?;
    let installed = booted.install("trellis-eastwest")?;
    assert!(
        installed.contains("trellis-eastwest: installed, not enabled"),
        "{installed}"
    );
    let token = env
        .cp
        .token(&["--kind", "gateway", "--network", "net-vm"])?;
    let env_file = vm.path("/etc/trellis/eastwest.env");
    let mut settings = std::fs::read_to_string(&env_file)?;
    let advertise = format!("{}:15443", booted.host.addr);
    settings += &format!("TRELLIS_TOKEN={token}\nTRELLIS_ADVERTISE={advertise}\n");
    std::fs::write(&env_file, settings)?;
    let journal = || {
        vm.sh("journalctl -u trellis-eastwest --no-pager -n 40")
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    vm.sh("systemctl start trellis-eastwest")
        .with_context(journal)?;
    let props = vm.sh("systemctl show -p ActiveState,SubState,Type trellis-eastwest")?;
    for want in ["Type=notify", "ActiveState=active", "SubState=running"] {
        assert!(props.contains(want), "{want}: {props}\n{}", journal());
    }
    let user = vm.sh("stat -c %U /proc/$(systemctl show -p MainPID --value trellis-eastwest)")?;
    assert_eq!(user.trim(), "trellis", "{}", journal());
    print_security_score(vm, "trellis-eastwest");

    vm.sh("dpkg --purge trellis-eastwest")?;
    for path in ["/var/lib/trellis/eastwest", "/etc/trellis/eastwest.env"] {
        assert!(!vm.path(path).exists(), "{path} left after purge");
    }
    assert!(vm.path("/var/lib/trellis/agent").exists());
    vm.sh("getent passwd trellis")
        .context("the agent's user went with the gateway")?;
    vm.sh("dpkg --purge trellis-agent")?;
    for path in ["/var/lib/trellis", "/etc/trellis"] {
        assert!(!vm.path(path).exists(), "{path} left after purge");
    }
    assert!(vm.sh("getent passwd trellis").is_err(), "user trellis left");
    Ok(())
}

/// The control plane's package: `trellis-controlplane init --systemd`
/// makes the node as `trellis` in the unit's data directory, writes its
/// settings and starts the unit: `active` through `Type=notify` (once it
/// serves), as `trellis`, with no capability. Again: the node exists,
/// nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controlplane_unit_runs_a_node_made_by_init() -> anyhow::Result<()> {
    let Some(booted) = Booted::start("vmpkg-cp").await? else {
        return Ok(());
    };
    let vm = &booted.vm;
    booted.install("trellis-controlplane")?;
    let journal = || {
        vm.sh("journalctl -u trellis-controlplane --no-pager -n 40")
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    let init = "trellis-controlplane init --systemd --trust-domain vm.test \
                --listen 0.0.0.0:15012 --advertise 127.0.0.1:15012 2>&1";
    let out = vm.sh(init).with_context(journal)?;
    for want in [
        "initialized mesh vm.test",
        "trellis-controlplane.service: active (running), enabled",
        "admin config: /var/lib/trellis/controlplane/admin.yaml",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }
    let env =
        vm.sh("stat -c '%a %U' /etc/trellis/controlplane.env; cat /etc/trellis/controlplane.env")?;
    assert!(env.starts_with("600 root\n"), "{env}");
    assert!(env.contains("\nTRELLIS_LISTEN=0.0.0.0:15012\n"), "{env}");
    assert!(
        env.contains("\nTRELLIS_ADVERTISE=127.0.0.1:15012\n"),
        "{env}"
    );
    vm.notify_running("trellis-controlplane")?;
    let pid = vm.sh("systemctl show -p MainPID --value trellis-controlplane")?;
    let status = vm.sh(&format!(
        "stat -c %U /proc/{0}; grep CapEff /proc/{0}/status; \
         stat -c %U /var/lib/trellis/controlplane/node.json",
        pid.trim()
    ))?;
    assert!(status.starts_with("trellis\n"), "{status}");
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(
        status.ends_with("trellis\n"),
        "the node's state is trellis's: {status}"
    );
    // The unit listens where controlplane.env says.
    let listening = vm.sh("ss -Hltn 'sport = :15012'")?;
    assert!(listening.contains("0.0.0.0:15012"), "{listening}");
    print_security_score(vm, "trellis-controlplane");

    let again = vm.sh(init)?;
    assert!(again.contains("exists already"), "{again}");
    assert!(again.contains("is running"), "{again}");
    assert_eq!(
        vm.sh("systemctl show -p MainPID --value trellis-controlplane")?,
        pid
    );

    vm.sh("systemctl stop trellis-controlplane && dpkg --purge trellis-controlplane")?;
    for path in ["/var/lib/trellis", "/etc/trellis"] {
        assert!(!vm.path(path).exists(), "{path} left after purge");
    }
    Ok(())
}

/// `trellis-controlplane join --systemd` on the VM, a further voter of the
/// host side's mesh, as an operator does it: a control-plane token of
/// one use, and the mesh's CA key (a voter unseals the CA keys with it)
/// copied to `/etc/trellis/ca.key`, root's and readable by the group
/// `trellis`, passed as `--ca-key-file`. The join makes the node as
/// `trellis` and starts the unit (`active` through `Type=notify`); the
/// host's `trellis controlplane members` lists it, reachable, as a voter.
/// Again: the node exists, nothing changes (the token is not used again).
/// A restart: back, still a member. Removed from the membership and
/// purged: the host's mesh is left as it was, and only the operator's key
/// file stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controlplane_unit_runs_a_node_made_by_join() -> anyhow::Result<()> {
    let Some(booted) = Booted::start("vmpkg-cpj").await? else {
        return Ok(());
    };
    let (vm, env) = (&booted.vm, &booted.env);
    booted.install("trellis-controlplane")?;
    let journal = || {
        vm.sh("journalctl -u trellis-controlplane --no-pager -n 40")
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    std::fs::copy(env.cp.ca_key_file(), vm.path("/etc/trellis/ca.key"))?;
    vm.sh("chown root:trellis /etc/trellis/ca.key && chmod 640 /etc/trellis/ca.key")?;
    let token = env.cp.token(&["--kind", "controlplane", "--uses", "1"])?;
    let addr = format!("{}:15012", booted.host.addr);
    let join = format!(
        "trellis-controlplane join --systemd --token {token} --listen {addr} \
         --advertise {addr} --ca-key-file /etc/trellis/ca.key 2>&1"
    );
    let out = vm.sh(&join).with_context(journal)?;
    for want in [
        "joined mesh",
        "(voter)",
        "trellis-controlplane.service: active (running), enabled",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }
    let id: u64 = out
        .split(" as node ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no node id in: {out}"))?;
    let settings = "stat -c '%a %U' /etc/trellis/controlplane.env; \
                    cat /etc/trellis/controlplane.env";
    let written = vm.sh(settings)?;
    assert!(written.starts_with("600 root\n"), "{written}");
    for want in [
        format!("\nTRELLIS_LISTEN={addr}\n"),
        format!("\nTRELLIS_ADVERTISE={addr}\n"),
        "\nTRELLIS_CA_KEY_FILE=/etc/trellis/ca.key\n".to_string(),
    ] {
        assert!(written.contains(&want), "{want:?} not in: {written}");
    }
    assert!(!written.contains(&token), "the token is not a setting");
    vm.notify_running("trellis-controlplane")?;
    let pid = vm.sh("systemctl show -p MainPID --value trellis-controlplane")?;
    let owners = vm.sh(&format!(
        "stat -c %U /proc/{}; stat -c %U /var/lib/trellis/controlplane \
         /var/lib/trellis/controlplane/node.json",
        pid.trim()
    ))?;
    assert_eq!(owners, "trellis\ntrellis\ntrellis\n", "{}", journal());
    // The host's mesh lists the VM's node, reachable, as a voter.
    let member = |what: &str| {
        wait_for_blocking(Duration::from_secs(30), what, || {
            let members = env.cp.cli(&["controlplane", "members"]).ok()?;
            members
                .lines()
                .find(|l| l.contains(&addr))
                .filter(|l| {
                    l.split_whitespace().next() == Some(&id.to_string())
                        && l.contains(" voter ")
                        && !l.contains("unreachable")
                })
                .map(|_| ())
        })
        .with_context(journal)
    };
    member("the VM's node a reachable voter")?;

    let again = vm.sh(&join)?;
    assert!(again.contains("exists already"), "{again}");
    assert!(again.contains("is running"), "{again}");
    assert!(!again.contains("joined mesh"), "{again}");
    assert_eq!(vm.sh(settings)?, written);
    assert_eq!(
        vm.sh("systemctl show -p MainPID --value trellis-controlplane")?,
        pid
    );

    vm.sh("systemctl restart trellis-controlplane")
        .with_context(journal)?;
    let props = vm.sh("systemctl show -p ActiveState,SubState,MainPID trellis-controlplane")?;
    assert!(props.contains("ActiveState=active"), "{props}");
    assert!(
        !props.contains(&format!("MainPID={}", pid.trim())),
        "{props}"
    );
    member("the VM's node a member after a restart")?;

    env.cp.cli(&["controlplane", "remove", &id.to_string()])?;
    vm.sh("systemctl stop trellis-controlplane && dpkg --purge trellis-controlplane")?;
    for path in ["/var/lib/trellis", "/etc/trellis/controlplane.env"] {
        assert!(!vm.path(path).exists(), "{path} left after purge");
    }
    // The key is the operator's file, not the package's.
    assert!(vm.path("/etc/trellis/ca.key").exists());
    let members = env.cp.cli(&["controlplane", "members"])?;
    assert!(!members.contains(&addr), "{members}");
    // The host's node alone is a majority again: it writes.
    env.cp
        .token(&["--kind", "vm", "--identity", "default/vm"])?;
    Ok(())
}
