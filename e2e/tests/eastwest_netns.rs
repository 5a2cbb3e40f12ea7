//! Two networks in network namespaces, their workload subnets not routed
//! to each other: a client agent on network A calls reviews, whose only
//! endpoint is on network B, and the call goes through B's east-west
//! gateway, with mTLS end to end. Only the gateway has an address on the
//! shared "WAN" bridge (with a router from A's subnet to it); the control
//! plane runs in the root namespace on the WAN bridge's address. Skipped
//! where namespaces cannot be made (not root, say). A gateway stopped is
//! dropped by the client at once, and used again once restarted.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use trellis_e2e::netns::{self, Host, Net};
use trellis_e2e::{bin, wait_for, Cluster, Proc};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews}
spec:
  metadata: {labels: {app: reviews, version: v3}}
  template: {serviceAccount: reviews}
"#;

/// The networks, their hosts and processes; dropped in field order: the
/// processes, the control plane, then the namespaces.
struct Networks {
    gateway_proc: Proc,
    /// How the gateway was started: again the same way after a stop.
    gateway_args: Vec<String>,
    _procs: Vec<Proc>,
    cp: Cluster,
    client: Host,
    reviews: Host,
    gateway: Host,
    /// Where other networks reach the gateway.
    advertise: String,
    _nets: [Net; 3],
}

impl Networks {
    /// Everything started and ready; `None` where namespaces cannot be made.
    async fn start() -> anyhow::Result<Option<Networks>> {
        if let Some(why) = netns::unavailable() {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
        let mut wan = Net::new("ew-wan")?;
        let mut net_a = Net::new("ew-a")?;
        let mut net_b = Net::new("ew-b")?;
        let mut cp = Cluster::new(&[])?;
        cp.host = wan.gateway().to_string();
        cp.spawn_init()?;
        cp.wait_ready(1).await?;
        cp.wait_writable(1).await?;
        let dir = cp.root.path().to_path_buf();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, MESH)?;
        cp.cli(&["apply", "-f", &mesh.display().to_string()])?;

        let client = net_a.host("client")?;
        let reviews = net_b.host("reviews")?;
        let gateway = net_b.host("gateway")?;
        let router = wan.host("router")?;
        let gateway_wan = wan.attach(&gateway, "eth1")?;
        let router_a = net_a.attach(&router, "eth1")?;
        router.forward()?;
        // Each host reaches its own subnet and the control plane; A's
        // reach the WAN through the router, the gateway A through it back.
        // Nothing leads from A's subnet to B's.
        let cp_route = |net: &Net| (format!("{}/32", wan.gateway()), net.gateway());
        client.only_routes(&[cp_route(&net_a), (wan.subnet(), router_a)])?;
        reviews.only_routes(&[cp_route(&net_b)])?;
        gateway.only_routes(&[(net_a.subnet(), router.addr)])?;

        let mut procs = Vec::new();
        let echo_args = [
            "--http",
            "127.0.0.1:9080",
            "--name",
            "reviews",
            "--version",
            "v3",
        ];
        procs.push(spawn(&dir, &reviews, "echo", "trellis-echo", &echo_args)?);
        let t = cp.token(&["--kind", "vm", "--workload-group", "default/reviews"])?;
        let data = dir.join("reviews-data").display().to_string();
        let args = ["--token", &t, "--data-dir", &data, "--network", "net-b"];
        procs.push(spawn(&dir, &reviews, "agent", "trellis-agent", &args)?);
        let t = cp.token(&["--kind", "gateway", "--network", "net-b"])?;
        let data = dir.join("gateway-data").display().to_string();
        let advertise = format!("{gateway_wan}:15443");
        let gateway_args: Vec<String> = [
            "--token",
            &t,
            "--data-dir",
            &data,
            "--advertise",
            &advertise,
        ]
        .map(String::from)
        .into();
        let gateway_proc = spawn_gateway(&dir, &gateway, &gateway_args)?;
        let t = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
        let data = dir.join("client-data").display().to_string();
        let upstream = "127.0.0.1:19080=reviews.default.svc.cluster.local:9080";
        let args = [
            "--token",
            &t,
            "--data-dir",
            &data,
            "--network",
            "net-a",
            "--upstream",
            upstream,
        ];
        procs.push(spawn(&dir, &client, "agent", "trellis-agent", &args)?);
        for (host, name, url) in [
            (&reviews, "agent", "127.0.0.1:15000/ready"),
            (&client, "agent", "127.0.0.1:15000/ready"),
            (&gateway, "gateway", "127.0.0.1:15021/healthz/ready"),
        ] {
            let what = format!("{} {url}", host.name);
            wait_for(Duration::from_secs(30), &what, || {
                let ok = host.sh(&format!("curl -sf {url}")).ok();
                async move { ok }
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e}: {}", log(&dir, host, name)))?;
        }
        Ok(Some(Networks {
            gateway_proc,
            gateway_args,
            _procs: procs,
            cp,
            client,
            reviews,
            gateway,
            advertise,
            _nets: [wan, net_a, net_b],
        }))
    }

    /// reviews' answer to the client, once it has one.
    async fn call(&self) -> anyhow::Result<String> {
        let dir = self.cp.root.path();
        wait_for(Duration::from_secs(30), "reviews from network A", || {
            let body = self
                .client
                .sh("curl -sf -m 5 http://127.0.0.1:19080/hello")
                .ok();
            async move { body }
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", log(dir, &self.client, "agent")))
    }
}

#[tokio::test]
async fn a_call_to_a_service_only_on_another_network_crosses_its_gateway() -> anyhow::Result<()> {
    let Some(env) = Networks::start().await? else {
        return Ok(());
    };
    // The premise: reviews' host is out of the client's reach (its agent's
    // metrics port answers on its own network).
    let metrics_of = |addr: Ipv4Addr| format!("curl -sf -m 2 http://{addr}:15020/stats/prometheus");
    assert!(env.gateway.sh(&metrics_of(env.reviews.addr)).is_ok());
    assert!(env.client.sh(&metrics_of(env.reviews.addr)).is_err());

    let body = env.call().await?;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(answer["version"], "v3", "{body}");

    let m = env
        .gateway
        .sh("curl -sf 127.0.0.1:15020/stats/prometheus")?;
    let carried = m.lines().find(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("destination_service=\"reviews.default.svc.cluster.local\"")
            && l.contains(
                "destination_principal=\"spiffe://e2e.trellis.test/ns/default/sa/reviews\"",
            )
    });
    assert!(carried.is_some(), "{m}");
    let clusters = env.client.sh("curl -sf 127.0.0.1:15000/clusters")?;
    assert!(clusters.contains(&env.advertise), "{clusters}");
    assert!(
        !clusters.contains(&env.reviews.addr.to_string()),
        "{clusters}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stopped_gateway_is_dropped_at_once_and_used_again_once_restarted() -> anyhow::Result<()>
{
    let Some(mut env) = Networks::start().await? else {
        return Ok(());
    };
    env.call().await?;
    // SIGTERM: it drains and its stream ends, which unregisters it.
    let status = env.gateway_proc.terminate()?;
    assert!(status.success(), "{status}");
    let advertise = env.advertise.clone();
    let clusters = |env: &Networks| env.client.sh("curl -sf 127.0.0.1:15000/clusters").ok();
    wait_for(
        Duration::from_secs(5),
        "the client to drop the gateway",
        || {
            let gone = clusters(&env)
                .filter(|c| !c.contains(&advertise))
                .map(|_| ());
            async move { gone }
        },
    )
    .await?;
    // Nothing else serves reviews: a prompt 503 (no healthy upstream),
    // not a wait on an address that no longer answers.
    let started = std::time::Instant::now();
    let code = env
        .client
        .sh("curl -s -o /dev/null -m 5 -w '%{http_code}' http://127.0.0.1:19080/hello")?;
    assert_eq!(code.trim(), "503");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The operator sees net-b cut off.
    let out = env.cp.cli_raw(&["cluster", "list"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("network net-b has no healthy east-west gateway"),
        "{stderr}"
    );

    // Started again as at first (its certificate is kept in its data
    // directory): registered again, sent to the client, and carrying
    // the client's calls within seconds.
    let restarted = std::time::Instant::now();
    env.gateway_proc = spawn_gateway(env.cp.root.path(), &env.gateway, &env.gateway_args)?;
    wait_for(
        Duration::from_secs(10),
        "the client to be sent the gateway again",
        || {
            let back = clusters(&env)
                .filter(|c| c.contains(&advertise))
                .map(|_| ());
            async move { back }
        },
    )
    .await?;
    let body = env.call().await?;
    assert!(body.contains("\"v3\""), "{body}");
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "used again after {:?}",
        restarted.elapsed()
    );
    // The new process carried it.
    let m = env
        .gateway
        .sh("curl -sf 127.0.0.1:15020/stats/prometheus")?;
    assert!(
        m.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("destination_service=\"reviews.default.svc.cluster.local\"")),
        "{m}"
    );
    let out = env.cp.cli_raw(&["cluster", "list"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("net-b"), "{stderr}");
    Ok(())
}

/// The gateway of net-b on `host`, with `args`.
fn spawn_gateway(dir: &Path, host: &Host, args: &[String]) -> anyhow::Result<Proc> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn(dir, host, "gateway", "trellis-eastwest", &args)
}

fn spawn(
    dir: &Path,
    host: &Host,
    name: &str,
    program: &str,
    args: &[&str],
) -> anyhow::Result<Proc> {
    let mut cmd = host.command(bin(program));
    cmd.args(args);
    Proc::spawn(
        name,
        &mut cmd,
        &dir.join(format!("{}-{name}.log", host.name)),
    )
}

fn log(dir: &Path, host: &Host, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{}-{name}.log", host.name))).unwrap_or_default()
}
