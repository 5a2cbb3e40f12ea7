//! The DNS proxy end to end: an unmodified client (glibc's resolver, through
//! `getent`) in a network namespace whose agent captures DNS with iptables.
//! The namespace's resolv.conf names a server that does not exist, so every
//! answer the client gets came through the capture: mesh names from the
//! agent, other names from a test resolver in the root namespace that the
//! agent forwards to. The agent takes its config from the control plane,
//! on a marked connection capture lets out.
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
async fn captured_dns_answers_mesh_names_and_forwards_the_rest() -> anyhow::Result<()> {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let mut env = MeshEnv::new("dns").await?;
    let client = env.host("client")?;
    // No host has .254: without capture, the client's queries go nowhere.
    let [a, b, c, _] = env.net.gateway().octets();
    let nowhere = Ipv4Addr::new(a, b, c, 254);
    client.set_resolv_conf(&format!(
        "nameserver {nowhere}\noptions timeout:2 attempts:1\n"
    ))?;
    let outside = Ipv4Addr::new(198, 51, 100, 7);
    let upstream = Upstream::start(
        IpAddr::V4(env.net.gateway()),
        &[("outside.example.org", outside)],
    )
    .await?;
    // The mesh comes from the control plane, over a connection that
    // capture must let out rather than redirect to the agent itself.
    let config = env.write("mesh.yaml", MESH)?;
    env.cp
        .cli(&["apply", "-f", &config.display().to_string()])?;
    // Left by earlier nftables agents (this version's table, and that of
    // versions before IPv6 capture) that did not stop cleanly: an iptables
    // agent removes them, so that only its own rules capture.
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
    let cp_port = env.cp.node(1).addr.rsplit_once(':').unwrap().1.to_string();
    let to_cp = sh(
        &client,
        &format!("ss -tnHe state established '( dport = :{cp_port} )'"),
    )
    .await?;
    assert!(
        !to_cp.is_empty() && to_cp.lines().all(|l| l.contains("fwmark:0x539")),
        "the config stream's socket carries the capture mark: {to_cp}"
    );
    let captured = sh(&client, "ss -tnH state established '( sport = :15001 )'").await?;
    assert!(captured.is_empty(), "captured by the agent: {captured}");

    for table in ["inet trellis", "ip trellis"] {
        let stale = sh(&client, &format!("nft list table {table}")).await;
        assert!(stale.is_err(), "{table} was left: {stale:?}");
    }
    let rules = sh(&client, "iptables -t nat -S TRELLIS_OUTPUT").await?;
    assert!(
        rules.contains("-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"),
        "{rules}"
    );

    // Mesh names, short and long, and a wildcard host: from the agent.
    for name in [
        "reviews",
        "reviews.default",
        "reviews.default.svc.cluster.local",
        "REVIEWS.default.svc",
    ] {
        assert_eq!(resolve(&client, name).await, "240.240.0.1", "{name}");
    }
    assert_eq!(
        resolve(&client, "api.partner.example.com").await,
        "240.240.1.1"
    );
    // A and AAAA together, as most programs ask: the AAAA gets NODATA, not
    // a forward, and the A answer stands.
    let both = sh(&client, "getent ahosts reviews | cut -d' ' -f1 | sort -u").await?;
    assert_eq!(both.trim(), "240.240.0.1");
    assert_eq!(upstream.queries(), 0, "mesh names never left the agent");

    // Anything else: forwarded by the agent to the upstream.
    assert_eq!(
        resolve(&client, "outside.example.org").await,
        outside.to_string()
    );
    assert_eq!(upstream.queries(), 1);
    assert_eq!(
        resolve(&client, "missing.example.org").await,
        "",
        "NXDOMAIN"
    );
    assert_eq!(upstream.queries(), 2);

    // Over TCP (glibc's `use-vc`), captured the same way.
    client.set_resolv_conf(&format!(
        "nameserver {nowhere}\noptions use-vc timeout:2 attempts:1\n"
    ))?;
    assert_eq!(resolve(&client, "reviews").await, "240.240.0.1");
    let before = upstream.queries();
    assert_eq!(
        resolve(&client, "outside.example.org").await,
        outside.to_string()
    );
    assert!(upstream.queries() > before);

    // To an IPv6 server, over UDP: captured by ip6tables into the DNS
    // proxy's IPv6 twin (nothing answers at that address).
    client.set_resolv_conf("nameserver fd00:53::1\noptions timeout:2 attempts:1\n")?;
    assert_eq!(resolve(&client, "reviews").await, "240.240.0.1");

    // A clean shutdown removes the chains and the jumps to them.
    let status = env.terminate(&client, "agent")?;
    assert!(status.success(), "{status}: {}", env.log(&client, "agent"));
    for iptables in ["iptables", "ip6tables"] {
        let nat = sh(&client, &format!("{iptables} -t nat -S")).await?;
        assert!(!nat.contains("TRELLIS"), "{iptables}: left behind: {nat}");
    }
    Ok(())
}
