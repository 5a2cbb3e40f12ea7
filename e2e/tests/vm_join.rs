//! `trellis vm join` and `trellis vm leave` on a booted Debian 12 (systemd
//! as PID 1 under systemd-nspawn, in a network namespace on a test
//! bridge) with the trellis-agent .deb installed and a real control plane
//! on the host side. Join with capture and `--dns`: the unit is active
//! through `Type=notify`, the settings and the identity are where the unit
//! finds them, mesh names resolve in the VM and other names still do
//! (through the resolver it had, a test resolver on the host side); a
//! second identical join changes nothing; leave puts everything back byte
//! for byte. And every refusal: not root, an expired, used or tampered
//! token, an unreachable control plane, an already joined VM, each with
//! its reason and nothing written. And `--dns` with systemd-resolved
//! running (its package, from the host's mirror, installed in the test's
//! copy only): the drop-in, resolved's stub answering through the agent,
//! and resolved as before after leave. Skipped where namespaces or
//! systemd-nspawn are missing.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use trellis_agent::dns::testing::Upstream;
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::netns::Host;
use trellis_e2e::vm::{self, Vm};
use trellis_e2e::wait_for_blocking;
use trellis_identity::join_token::JoinToken;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [240.240.0.1]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 10.255.255.1}]
"#;

/// The address the host side's resolver answers `outside.example.org` with.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A control plane on a test network and a booted Debian on it with the
/// agent's package installed. The VM goes first (field order is drop
/// order).
struct Booted {
    vm: Vm,
    _host: Host,
    env: MeshEnv,
}

impl Booted {
    async fn start(label: &str) -> anyhow::Result<Option<Booted>> {
        let Some(vm::OnMesh { vm, host, env }) = vm::OnMesh::boot(label).await? else {
            return Ok(None);
        };
        vm.install(&vm::deb(vm::debs()?, "trellis-agent")?)?;
        Ok(Some(Booted {
            vm,
            _host: host,
            env,
        }))
    }

    /// A resolver on the host side, port 53, that answers
    /// `outside.example.org` with [`OUTSIDE`] and counts its queries.
    async fn upstream(&self) -> anyhow::Result<Upstream> {
        let at = SocketAddr::new(self.env.net.gateway().into(), 53);
        Ok(Upstream::start_at(at, &[("outside.example.org", OUTSIDE)]).await?)
    }

    /// [`MESH`] applied on the control plane.
    fn apply_mesh(&self) -> anyhow::Result<()> {
        let config = self.env.write("mesh.yaml", MESH)?;
        self.env
            .cp
            .cli(&["apply", "-f", &config.display().to_string()])
            .map(drop)
    }

    /// A VM token for default/vm with `extra` flags.
    fn token(&self, extra: &[&str]) -> anyhow::Result<String> {
        let args = [&["--kind", "vm", "--identity", "default/vm"], extra].concat();
        self.env.cp.token(&args)
    }

    /// `trellis ARGS` in the VM as root: whether it succeeded, and what it
    /// printed (stdout, then stderr).
    fn trellis(&self, args: &str) -> anyhow::Result<(bool, String)> {
        self.run(&format!("trellis {args}"))
    }

    fn run(&self, script: &str) -> anyhow::Result<(bool, String)> {
        let out = self
            .vm
            .command("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    /// `trellis ARGS`, which must fail saying `why`.
    fn refused(&self, args: &str, why: &str) -> anyhow::Result<String> {
        let (ok, out) = self.trellis(args)?;
        assert!(!ok, "`trellis {args}` succeeded: {out}");
        assert!(out.contains(why), "`trellis {args}`: {why:?} not in: {out}");
        Ok(out)
    }

    /// What join may change: agent.env, the resolver, the join record, the
    /// agent's state, the unit's state, capture rules.
    fn snapshot(&self) -> anyhow::Result<String> {
        self.vm.sh(
            "set -e; cat /etc/resolv.conf; echo ---; cat /etc/trellis/agent.env; echo ---; \
             stat -c '%a %U' /etc/trellis/agent.env; ls -A /var/lib/trellis /var/lib/trellis/agent; \
             ls /etc/systemd/system/trellis-agent.service.d 2>/dev/null || true; \
             systemctl is-enabled trellis-agent || true; systemctl is-active trellis-agent || true; \
             (iptables -t nat -S; nft list tables) | grep -i trellis || true",
        )
    }

    fn journal(&self) -> String {
        self.vm
            .sh("journalctl -u trellis-agent --no-pager -n 40")
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// The IPv4 addresses `getent ahostsv4 NAME` gives in the VM.
    fn resolve(&self, name: &str) -> String {
        self.vm
            .sh(&format!("getent ahostsv4 {name} | cut -d' ' -f1 | sort -u"))
            .map_or_else(|e| format!("{e:#}"), |o| o.trim().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_dns_serves_mesh_names_and_leave_restores_the_vm() -> anyhow::Result<()> {
    let Some(b) = Booted::start("vmjoin").await? else {
        return Ok(());
    };
    let vm = &b.vm;
    let gateway = b.env.net.gateway();
    // The VM's resolver before the join: one on the host side, port 53.
    let upstream = b.upstream().await?;
    vm.sh(&format!(
        "printf 'nameserver {gateway}\\noptions timeout:2 attempts:1\\n' > /etc/resolv.conf"
    ))?;
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    b.apply_mesh()?;
    let before = b.snapshot()?;

    // One use: the identical join below must not use the token again.
    let token = b.token(&["--uses", "1"])?;
    let join = format!("vm join --token {token} --capture iptables --dns");
    let (ok, out) = b.trellis(&join)?;
    assert!(ok, "{out}\n{}", b.journal());
    for want in [
        "joined the mesh as spiffe://",
        "/ns/default/sa/vm",
        "capture: iptables",
        "DNS: /etc/resolv.conf names the agent at 127.0.0.1:53",
        "trellis-agent.service: active (running), enabled",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }
    vm.notify_running("trellis-agent")?;
    let env = vm.sh("stat -c '%a %U' /etc/trellis/agent.env; cat /etc/trellis/agent.env")?;
    assert!(env.starts_with("600 root\n"), "{env}");
    for want in [
        &format!("\nTRELLIS_TOKEN={token}\n"),
        "\nTRELLIS_CAPTURE=iptables\n",
        "\nTRELLIS_DNS=127.0.0.1:53\n",
        &format!("\nTRELLIS_DNS_UPSTREAM={gateway}:53\n"),
        // The packaged comments stay.
        "# Control-plane addresses, comma-separated",
    ] {
        assert!(env.contains(want), "{want:?} not in agent.env: {env}");
    }
    let state =
        vm.sh("stat -c '%U %a' /var/lib/trellis/agent /var/lib/trellis/agent/cert-chain.pem")?;
    assert_eq!(state, "trellis 700\ntrellis 600\n");
    let rules = vm.sh("iptables -t nat -S")?;
    assert!(rules.contains("-j TRELLIS_OUTPUT"), "{rules}");

    // A mesh name, from the agent (once its config arrived); another name,
    // forwarded to the resolver the VM had.
    wait_for_blocking(Duration::from_secs(20), "a mesh name resolves", || {
        (b.resolve("reviews.default.svc.cluster.local") == "240.240.0.1").then_some(())
    })
    .with_context(|| b.journal())?;
    let queries = upstream.queries();
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    assert!(upstream.queries() > queries, "not forwarded upstream");

    // The same join again: nothing to do, and no use of the token (it has
    // none left).
    let (ok, again) = b.trellis(&join)?;
    assert!(ok, "{again}");
    assert!(again.contains("already joined as spiffe://"), "{again}");
    assert!(again.contains("is running"), "{again}");
    // Another join: refused, saying how to rejoin.
    let other = b.token(&[])?;
    b.refused(
        &format!("vm join --token {other} --capture nftables"),
        "run `trellis vm leave` first",
    )?;

    let (ok, left) = b.trellis("vm leave")?;
    assert!(ok, "{left}");
    assert!(left.contains("left the mesh"), "{left}");
    assert!(left.contains("resolver restored"), "{left}");
    let after = b.snapshot()?;
    assert_eq!(after, before, "the VM is not as before the join");
    let props = vm.sh("systemctl show -p ActiveState,UnitFileState trellis-agent")?;
    assert!(props.contains("ActiveState=inactive"), "{props}");
    assert!(props.contains("UnitFileState=disabled"), "{props}");
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    assert!(!b
        .resolve("reviews.default.svc.cluster.local")
        .contains("240.240.0.1"));

    let (ok, again) = b.trellis("vm leave")?;
    assert!(ok, "{again}");
    assert!(again.contains("has not joined the mesh"), "{again}");
    // The used token does not join again, and changes nothing.
    b.refused(&join, "is used up")?;
    assert_eq!(b.snapshot()?, before);

    // Joined again, then the package removed: its prerm undoes the join,
    // the resolver included.
    let resolv = vm.sh("cat /etc/resolv.conf")?;
    let token = b.token(&[])?;
    let (ok, out) = b.trellis(&format!("vm join --token {token} --capture iptables --dns"))?;
    assert!(ok, "{out}");
    assert_ne!(vm.sh("cat /etc/resolv.conf")?, resolv);
    vm.sh("dpkg -r trellis-agent")?;
    assert_eq!(vm.sh("cat /etc/resolv.conf")?, resolv);
    let rules = vm.sh("iptables -t nat -S")?;
    assert!(!rules.contains("TRELLIS"), "{rules}");
    assert_eq!(vm.sh("ls -A /var/lib/trellis/agent")?, "");
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_with_a_reason_and_writes_nothing() -> anyhow::Result<()> {
    let Some(b) = Booted::start("vmjoin-err").await? else {
        return Ok(());
    };
    let before = b.snapshot()?;
    let token = b.token(&[])?;

    let (ok, out) = b.run(&format!(
        "setpriv --reuid nobody --regid nogroup --clear-groups trellis vm join --token {token}"
    ))?;
    assert!(!ok && out.contains("run it as root"), "{out}");

    let expired = b.token(&["--ttl", "1s"])?;
    std::thread::sleep(Duration::from_millis(1500));
    b.refused(&format!("vm join --token {expired}"), "expired at")?;

    let gateway = b.env.net.gateway();
    b.refused(
        &format!("vm join --token {token} --control-plane {gateway}:1"),
        &format!("cannot reach the control plane at {gateway}:1"),
    )?;

    // The token's secret is valid, its pin is another root's.
    let mut tampered = JoinToken::parse(&token)?;
    tampered.root_pin[0] ^= 0xff;
    b.refused(
        &format!("vm join --token {}", tampered.encode()),
        "does not match the token's pin",
    )?;

    b.refused(
        &format!("vm join --token {token} --workload-group other/g"),
        "--workload-group other/g: the token's identity is in namespace default",
    )?;
    assert_eq!(b.snapshot()?, before, "a refused join changed the VM");

    // Without the agent's unit.
    b.vm.sh("mv /usr/lib/systemd/system/trellis-agent.service /root/ && systemctl daemon-reload")?;
    b.refused(
        &format!("vm join --token {token}"),
        "the trellis-agent package is not installed",
    )?;
    Ok(())
}

/// The same join with systemd-resolved running in the VM (Debian's
/// package, at the root's systemd version, installed in this test's copy
/// only), its upstream the host side's resolver set in resolved.conf, as
/// an admin would: join writes resolved's drop-in, resolved sends every
/// name to the agent, which answers mesh names and forwards the rest to
/// that upstream (not to resolved's stub: no loop); leave removes the
/// drop-in and resolved is as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_dns_through_systemd_resolved_and_leave_restores_it() -> anyhow::Result<()> {
    let Some(b) = Booted::start("vmjoin-rsv").await? else {
        return Ok(());
    };
    let resolved = match vm::debian_deb("systemd-resolved", "systemd")? {
        Ok(deb) => deb,
        Err(why) => {
            eprintln!("skipping: {why}");
            return Ok(());
        }
    };
    let vm = &b.vm;
    let gateway = b.env.net.gateway();
    let upstream = b.upstream().await?;
    // Its postinst starts resolved and points /etc/resolv.conf at its stub.
    vm.install(&resolved)?;
    vm.sh(&format!(
        "sed -i 's/^#DNS=$/DNS={gateway}/' /etc/systemd/resolved.conf && \
         grep -qx 'DNS={gateway}' /etc/systemd/resolved.conf && \
         systemctl restart systemd-resolved"
    ))?;
    assert_eq!(
        vm.sh("readlink /etc/resolv.conf; systemctl is-active systemd-resolved")?,
        "../run/systemd/resolve/stub-resolv.conf\nactive\n"
    );
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    b.apply_mesh()?;
    // What join may change, resolved's servers included.
    let resolved_state = || {
        vm.sh(
            "set -e; resolvectl dns; resolvectl domain; cat /run/systemd/resolve/resolv.conf; \
             ls -A /etc/systemd/resolved.conf.d 2>/dev/null || true",
        )
    };
    let before = (b.snapshot()?, resolved_state()?);
    assert!(before.1.contains(&gateway.to_string()), "{}", before.1);

    let token = b.token(&[])?;
    let (ok, out) = b.trellis(&format!("vm join --token {token} --capture iptables --dns"))?;
    assert!(ok, "{out}\n{}", b.journal());
    for want in [
        "joined the mesh as spiffe://",
        "DNS: systemd-resolved forwards to the agent at 127.0.0.1:15053 \
         (/etc/systemd/resolved.conf.d/trellis.conf)",
        "trellis-agent.service: active (running), enabled",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }
    let dropin = vm.sh("cat /etc/systemd/resolved.conf.d/trellis.conf")?;
    assert!(dropin.contains("\nDNS=127.0.0.1:15053\n"), "{dropin}");
    // The agent listens where resolved sends, and forwards to the
    // upstream resolved had, not to resolved's stub (127.0.0.53).
    let env = vm.sh("cat /etc/trellis/agent.env")?;
    for want in [
        "\nTRELLIS_DNS=127.0.0.1:15053\n".to_string(),
        format!("\nTRELLIS_DNS_UPSTREAM={gateway}:53\n"),
    ] {
        assert!(env.contains(&want), "{want:?} not in agent.env: {env}");
    }
    // Port 15053 needs no capability: no unit drop-in.
    assert!(!vm
        .path("/etc/systemd/system/trellis-agent.service.d/trellis-dns.conf")
        .exists());
    // resolved's only global server is the agent.
    let servers = vm.sh("resolvectl dns")?;
    assert!(servers.contains("Global: 127.0.0.1:15053\n"), "{servers}");

    // A mesh name through resolved's stub, from the agent; another name
    // through the agent to the upstream (resolved's cache went with its
    // restart).
    wait_for_blocking(Duration::from_secs(20), "a mesh name resolves", || {
        (b.resolve("reviews.default.svc.cluster.local") == "240.240.0.1").then_some(())
    })
    .with_context(|| b.journal())?;
    let query = vm.sh("resolvectl query --cache=no reviews.default.svc.cluster.local")?;
    assert!(query.contains("240.240.0.1"), "{query}");
    let queries = upstream.queries();
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    assert!(upstream.queries() > queries, "not forwarded upstream");

    let (ok, left) = b.trellis("vm leave")?;
    assert!(ok, "{left}");
    assert!(left.contains("resolver restored"), "{left}");
    assert!(!vm
        .path("/etc/systemd/resolved.conf.d/trellis.conf")
        .exists());
    assert_eq!((b.snapshot()?, resolved_state()?), before);
    assert_eq!(b.resolve("outside.example.org"), OUTSIDE.to_string());
    assert!(!b
        .resolve("reviews.default.svc.cluster.local")
        .contains("240.240.0.1"));
    Ok(())
}
