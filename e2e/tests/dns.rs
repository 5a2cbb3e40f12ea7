//! The DNS proxy end to end: an unmodified client (glibc's resolver, through
//! `getent`) in a network namespace whose agent captures DNS with iptables.
//! The namespace's resolv.conf names a server that does not exist, so every
//! answer the client gets came through the capture: mesh names from the
//! agent, other names from a test resolver in the root namespace that the
//! agent forwards to. The agent takes its config from the control plane,
//! on a marked connection capture lets out.
//!
//! Each test starts its own [`Dns`] (1-2 s): the tests count the queries
//! the test resolver got, and change the client's resolv.conf.
use std::net::{IpAddr, Ipv4Addr};

use trellis_agent::dns::testing::Upstream;
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::netns::{self, Host};

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
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: default}
spec:
  hosts: ["*.partner.example.com"]
  addresses: [240.240.1.1]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls}]
  endpoints: [{address: 10.255.255.2}]
"#;

/// The address the test resolver answers `outside.example.org` with.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// The control plane with [`MESH`] applied, and a client host whose
/// resolv.conf names a server that does not exist, behind an agent with
/// iptables capture that forwards names outside the mesh to a test
/// resolver. Before the agent started, the host had the nftables tables
/// an earlier nftables agent that did not stop cleanly would leave.
struct Dns {
    upstream: Upstream,
    client: Host,
    /// An address on the client's network that no host has.
    nowhere: Ipv4Addr,
    env: MeshEnv,
}

impl Dns {
    /// `None` where network namespaces cannot be made.
    async fn start(label: &str) -> anyhow::Result<Option<Dns>> {
        if let Some(why) = netns::unavailable() {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
        let mut env = MeshEnv::new(label).await?;
        let client = env.host("client")?;
        // No host has .254: without capture, the client's queries go nowhere.
        let [a, b, c, _] = env.net.gateway().octets();
        let nowhere = Ipv4Addr::new(a, b, c, 254);
        client.set_resolv_conf(&format!(
            "nameserver {nowhere}\noptions timeout:2 attempts:1\n"
        ))?;
        let upstream = Upstream::start(
            IpAddr::V4(env.net.gateway()),
            &[("outside.example.org", OUTSIDE)],
        )
        .await?;
        // The mesh comes from the control plane, over a connection that
        // capture must let out rather than redirect to the agent itself.
        let config = env.write("mesh.yaml", MESH)?;
        env.cp
            .cli(&["apply", "-f", &config.display().to_string()])?;
        // Left by earlier nftables agents (this version's table, and that
        // of versions before IPv6 capture) that did not stop cleanly: an
        // iptables agent removes them, so that only its own rules capture.
        for table in ["inet trellis", "ip trellis"] {
            sh(
                &client,
                &format!("nft add table {table} && nft add chain {table} stale"),
            )
            .await?;
        }
        env.agent(
            &client,
            "default/client",
            None,
            &["--dns-upstream", &upstream.addr().to_string()],
        )
        .await?;
        Ok(Some(Dns {
            upstream,
            client,
            nowhere,
            env,
        }))
    }
}

async fn sh(host: &Host, script: &str) -> anyhow::Result<String> {
    let h = host.clone();
    let script = script.to_string();
    tokio::task::spawn_blocking(move || h.sh(&script)).await?
}

/// The IPv4 addresses `getent ahostsv4 NAME` prints, or its error.
async fn resolve(host: &Host, name: &str) -> String {
    let out = sh(
        host,
        &format!("getent ahostsv4 {name} | cut -d' ' -f1 | sort -u"),
    )
    .await;
    out.map_or_else(|e| format!("{e:#}"), |o| o.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_stream_carries_the_capture_mark_and_is_not_captured() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-mark").await? else {
        return Ok(());
    };
    let cp_port = dns
        .env
        .cp
        .node(1)
        .addr
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    let to_cp = sh(
        &dns.client,
        &format!("ss -tnHe state established '( dport = :{cp_port} )'"),
    )
    .await?;
    assert!(
        !to_cp.is_empty() && to_cp.lines().all(|l| l.contains("fwmark:0x539")),
        "the config stream's socket carries the capture mark: {to_cp}"
    );
    let captured = sh(
        &dns.client,
        "ss -tnH state established '( sport = :15001 )'",
    )
    .await?;
    assert!(captured.is_empty(), "captured by the agent: {captured}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iptables_agent_removes_the_tables_earlier_nftables_agents_left() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-stale").await? else {
        return Ok(());
    };
    for table in ["inet trellis", "ip trellis"] {
        let stale = sh(&dns.client, &format!("nft list table {table}")).await;
        assert!(stale.is_err(), "{table} was left: {stale:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_are_redirected_to_the_agents_dns_proxy() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-rules").await? else {
        return Ok(());
    };
    let rules = sh(&dns.client, "iptables -t nat -S TRELLIS_OUTPUT").await?;
    assert!(
        rules.contains("-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"),
        "{rules}"
    );
    Ok(())
}

/// Mesh names, short and long, and a wildcard host: from the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_names_short_long_and_wildcard_are_answered_by_the_agent() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-mesh").await? else {
        return Ok(());
    };
    for name in [
        "reviews",
        "reviews.default",
        "reviews.default.svc.cluster.local",
        "REVIEWS.default.svc",
    ] {
        assert_eq!(resolve(&dns.client, name).await, "240.240.0.1", "{name}");
    }
    assert_eq!(
        resolve(&dns.client, "api.partner.example.com").await,
        "240.240.1.1"
    );
    assert_eq!(dns.upstream.queries(), 0, "mesh names never left the agent");
    Ok(())
}

/// A and AAAA together, as most programs ask: the AAAA gets NODATA, not a
/// forward, and the A answer stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aaaa_query_for_a_mesh_name_gets_nodata_not_a_forward() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-aaaa").await? else {
        return Ok(());
    };
    let both = sh(
        &dns.client,
        "getent ahosts reviews | cut -d' ' -f1 | sort -u",
    )
    .await?;
    assert_eq!(both.trim(), "240.240.0.1");
    assert_eq!(dns.upstream.queries(), 0, "mesh names never left the agent");
    Ok(())
}

/// Anything else: forwarded by the agent to the upstream, answers and
/// NXDOMAIN alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_are_forwarded_to_the_upstream() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-forward").await? else {
        return Ok(());
    };
    assert_eq!(
        resolve(&dns.client, "outside.example.org").await,
        OUTSIDE.to_string()
    );
    assert_eq!(dns.upstream.queries(), 1);
    assert_eq!(
        resolve(&dns.client, "missing.example.org").await,
        "",
        "NXDOMAIN"
    );
    assert_eq!(dns.upstream.queries(), 2);
    Ok(())
}

/// Over TCP (glibc's `use-vc`), captured the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tcp_is_captured_the_same_way() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-tcp").await? else {
        return Ok(());
    };
    dns.client.set_resolv_conf(&format!(
        "nameserver {}\noptions use-vc timeout:2 attempts:1\n",
        dns.nowhere
    ))?;
    assert_eq!(resolve(&dns.client, "reviews").await, "240.240.0.1");
    let before = dns.upstream.queries();
    assert_eq!(
        resolve(&dns.client, "outside.example.org").await,
        OUTSIDE.to_string()
    );
    assert!(dns.upstream.queries() > before);
    Ok(())
}

/// To an IPv6 server, over UDP: captured by ip6tables into the DNS proxy's
/// IPv6 twin (nothing answers at that address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_to_an_ipv6_server_are_captured_by_ip6tables() -> anyhow::Result<()> {
    let Some(dns) = Dns::start("dns-ipv6").await? else {
        return Ok(());
    };
    dns.client
        .set_resolv_conf("nameserver fd00:53::1\noptions timeout:2 attempts:1\n")?;
    assert_eq!(resolve(&dns.client, "reviews").await, "240.240.0.1");
    Ok(())
}

/// A clean shutdown removes the chains and the jumps to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_removes_the_chains_and_the_jumps_to_them() -> anyhow::Result<()> {
    let Some(mut dns) = Dns::start("dns-stop").await? else {
        return Ok(());
    };
    let status = dns.env.terminate(&dns.client, "agent")?;
    assert!(
        status.success(),
        "{status}: {}",
        dns.env.log(&dns.client, "agent")
    );
    for iptables in ["iptables", "ip6tables"] {
        let nat = sh(&dns.client, &format!("{iptables} -t nat -S")).await?;
        assert!(!nat.contains("TRELLIS"), "{iptables}: left behind: {nat}");
    }
    Ok(())
}

/// After an agent that did not stop cleanly (SIGKILL), `trellis-agent
/// --remove-capture` (systemd's `ExecStopPost=`) removes its iptables and
/// ip6tables chains and any nftables table, with the agent's settings in
/// its environment as a unit's EnvironmentFile puts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_capture_clears_what_a_killed_agent_left() -> anyhow::Result<()> {
    let Some(mut dns) = Dns::start("dns-kill").await? else {
        return Ok(());
    };
    dns.env.kill(&dns.client, "agent");
    sh(&dns.client, "nft add table inet trellis").await?;
    for iptables in ["iptables", "ip6tables"] {
        let nat = sh(&dns.client, &format!("{iptables} -t nat -S")).await?;
        assert!(nat.contains("-j TRELLIS_OUTPUT"), "{iptables}: {nat}");
    }
    let out = dns
        .client
        .command(trellis_e2e::bin("trellis-agent"))
        .arg("--remove-capture")
        .envs([("TRELLIS_TOKEN", "t"), ("TRELLIS_CAPTURE", "iptables")])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    for iptables in ["iptables", "ip6tables"] {
        let nat = sh(&dns.client, &format!("{iptables} -t nat -S")).await?;
        assert!(!nat.contains("TRELLIS"), "{iptables}: left behind: {nat}");
    }
    let tables = sh(&dns.client, "nft list tables").await?;
    assert!(!tables.contains("trellis"), "left behind: {tables}");
    Ok(())
}

/// `trellis-agent --install-capture` (an injected pod's init container)
/// installs exactly the rules the agent installs at start, and exits
/// leaving them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_capture_installs_the_agents_rules_and_exits() -> anyhow::Result<()> {
    let Some(mut dns) = Dns::start("dns-init").await? else {
        return Ok(());
    };
    dns.env.kill(&dns.client, "agent");
    let mut agents = Vec::new();
    for iptables in ["iptables", "ip6tables"] {
        agents.push(sh(&dns.client, &format!("{iptables} -t nat -S")).await?);
    }
    let agent = |args: &[&str]| -> anyhow::Result<()> {
        let out = dns
            .client
            .command(trellis_e2e::bin("trellis-agent"))
            .args(args)
            .output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {out:?}");
        Ok(())
    };
    agent(&["--remove-capture"])?;
    agent(&["--capture", "iptables", "--install-capture"])?;
    for (iptables, by_agent) in ["iptables", "ip6tables"].into_iter().zip(agents) {
        let nat = sh(&dns.client, &format!("{iptables} -t nat -S")).await?;
        assert!(nat.contains("-j TRELLIS_OUTPUT"), "{iptables}: {nat}");
        assert_eq!(nat, by_agent, "{iptables}");
    }
    let refused = dns
        .client
        .command(trellis_e2e::bin("trellis-agent"))
        .arg("--install-capture")
        .output()?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--install-capture needs --capture"),
        "{stderr}"
    );
    Ok(())
}
