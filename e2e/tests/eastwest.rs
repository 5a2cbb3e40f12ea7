//! The east-west gateway with real processes on loopback: a control plane,
//! reviews (v3) behind its agent on network `net-b`, that network's
//! gateway (its certificate from a gateway token), and a client agent on
//! `net-a`. The client is sent reviews' endpoint behind the gateway (split
//! horizon) and reaches it there with mTLS end to end; the gateway only
//! splices. Each test checks one thing of the shared fixture.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use trellis_e2e::loopback::Block;
use trellis_e2e::shared::Shared;
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
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v3, labels: {version: v3}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v3}}]}]
"#;

/// An endpoint of ratings on net-b whose address is reviews' agent: what
/// answers there presents reviews' identity, not ratings'.
fn impostor(reviews_ip: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  workloadSelector: {{labels: {{app: ratings}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-1}}
spec:
  address: {reviews_ip}
  network: net-b
  labels: {{app: ratings}}
  serviceAccount: ratings
"#
    )
}

/// Host numbers in the test's block, and its series: `127.40.N.0/24`.
const CLIENT: u8 = 10;
const REVIEWS: u8 = 20;
const GATEWAY: u8 = 30;
/// A gateway of net-c (no endpoints there), started and stopped by a test.
const SPARE: u8 = 31;
const SERIES: u8 = 40;

struct EastWest {
    // Field order is drop order: the data plane before the control plane.
    _client: Proc,
    _reviews_agent: Proc,
    _gateway: Proc,
    _echo: Proc,
    cp: Cluster,
    block: Block,
}

impl EastWest {
    async fn start() -> anyhow::Result<EastWest> {
        let agent_ports = [15000, 15001, 15006, 15020, 15053];
        let listeners: Vec<(u8, u16)> = [CLIENT, REVIEWS]
            .iter()
            .flat_map(|&h| agent_ports.map(|p| (h, p)))
            .chain(
                [GATEWAY, SPARE]
                    .iter()
                    .flat_map(|&h| [15000, 15020, 15021, 15443].map(|p| (h, p))),
            )
            .chain([(REVIEWS, 9080), (CLIENT, 19080), (CLIENT, 19081)])
            .collect();
        let block = Block::take(SERIES, &listeners)?;
        let ip = |h: u8| block.ip(h).to_string();
        let cp = Cluster::init(&[]).await?;
        let dir = cp.root.path().to_path_buf();
        apply(&cp, &dir, "mesh.yaml", MESH)?;
        apply(&cp, &dir, "ratings.yaml", &impostor(&ip(REVIEWS)))?;

        let echo = Proc::spawn(
            "echo",
            Command::new(bin("trellis-echo")).args([
                "--http",
                &format!("{}:9080", ip(REVIEWS)),
                "--name",
                "reviews",
                "--version",
                "v3",
            ]),
            &dir.join("echo.log"),
        )?;
        let t = cp.token(&["--kind", "vm", "--workload-group", "default/reviews"])?;
        let mut args = agent_args(&ip(REVIEWS), &dir.join("reviews"), "net-b");
        args.extend(["--token".into(), t]);
        let reviews_agent = spawn(&dir, "agent-reviews", "trellis-agent", &args)?;

        let gateway = spawn_gateway(&cp, "net-b", &gateway_listeners(&block, GATEWAY))?;

        let t = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
        let c = ip(CLIENT);
        let mut args = agent_args(&c, &dir.join("client"), "net-a");
        args.extend([
            "--token".into(),
            t,
            "--upstream".into(),
            format!("{c}:19080=reviews.default.svc.cluster.local:9080"),
            "--upstream".into(),
            format!("{c}:19081=ratings.default.svc.cluster.local:9080"),
        ]);
        let client = spawn(&dir, "agent-client", "trellis-agent", &args)?;
        let env = EastWest {
            _client: client,
            _reviews_agent: reviews_agent,
            _gateway: gateway,
            _echo: echo,
            cp,
            block,
        };
        for url in [
            format!("http://{}:15000/ready", ip(CLIENT)),
            format!("http://{}:15000/ready", ip(REVIEWS)),
            format!("http://{}:15021/healthz/ready", ip(GATEWAY)),
        ] {
            wait_for(Duration::from_secs(20), &url, || async {
                (curl(&[&url]).0 == 200).then_some(())
            })
            .await?;
        }
        Ok(env)
    }

    fn ip(&self, h: u8) -> String {
        self.block.ip(h).to_string()
    }

    fn gateway_metrics(&self) -> String {
        curl(&[&format!(
            "http://{}:15020/stats/prometheus",
            self.ip(GATEWAY)
        )])
        .1
    }
}

async fn env() -> anyhow::Result<Arc<EastWest>> {
    static SHARED: Shared<EastWest> = Shared::new();
    SHARED.get(EastWest::start).await
}

#[tokio::test]
async fn a_call_to_another_network_goes_through_its_gateway_with_mtls_end_to_end(
) -> anyhow::Result<()> {
    let env = env().await?;
    let url = format!("http://{}:19080/hello", env.ip(CLIENT));
    let body = wait_for(
        Duration::from_secs(20),
        "reviews through the gateway",
        || {
            let (code, body) = curl(&[&url]);
            async move { (code == 200).then_some(body) }
        },
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(answer["version"], "v3", "{body}");
    // The client was sent reviews behind the gateway, not its address.
    let clusters = curl(&[&format!("http://{}:15000/clusters", env.ip(CLIENT))]).1;
    let gw = format!("{}:15443", env.ip(GATEWAY));
    let reviews: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with("outbound|9080|v3|reviews"))
        .collect();
    assert!(
        reviews.iter().any(|l| l.contains(&gw))
            && !reviews.iter().any(|l| l.contains(&env.ip(REVIEWS))),
        "{clusters}"
    );
    assert!(
        reviews
            .iter()
            .any(|l| l.ends_with("identity::spiffe://e2e.trellis.test/ns/default/sa/reviews")),
        "{clusters}"
    );
    // The gateway carried it, to the agent of reviews.
    let m = env.gateway_metrics();
    let opened = m.lines().find(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("destination_service=\"reviews.default.svc.cluster.local\"")
            && l.contains("destination_version=\"v3\"")
    });
    assert!(opened.is_some(), "{m}");
    // It never saw HTTP: the client agent's request metrics show mTLS to
    // reviews' principal, which only reviews' agent could prove.
    let client_metrics = curl(&[&format!("http://{}:15020/stats/prometheus", env.ip(CLIENT))]).1;
    assert!(
        client_metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains(
                    "destination_principal=\"spiffe://e2e.trellis.test/ns/default/sa/reviews\""
                )
                && l.contains("response_code=\"200\"")),
        "{client_metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn an_endpoint_presenting_another_identity_is_refused_by_the_client() -> anyhow::Result<()> {
    let env = env().await?;
    let url = format!("http://{}:19081/", env.ip(CLIENT));
    // ratings' endpoint is reviews' agent: the gateway splices to it, and
    // the client refuses the identity it proves.
    let gw_carried = || {
        env.gateway_metrics().lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("destination_service=\"ratings.default.svc.cluster.local\"")
        })
    };
    wait_for(
        Duration::from_secs(20),
        "a call to ratings through the gateway",
        || {
            let (code, _) = curl(&[&url]);
            let r = (code != 200 && gw_carried()).then_some(());
            async move { r }
        },
    )
    .await?;
    for _ in 0..3 {
        let (code, body) = curl(&[&url]);
        assert_eq!(code, 503, "{body}");
    }
    Ok(())
}

#[tokio::test]
async fn a_connection_naming_an_unknown_service_is_refused_and_counted() -> anyhow::Result<()> {
    let env = env().await?;
    let gw = format!("{}:15443", env.ip(GATEWAY));
    for (sni, reason) in [
        (
            "outbound_.9080_.__.nope.default.svc.cluster.local",
            "unknown_service",
        ),
        ("reviews.default.svc.cluster.local", "bad_sni"),
    ] {
        let mut s = std::net::TcpStream::connect(&gw)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&client_hello(sni))?;
        let mut buf = [0u8; 64];
        // Closed without a byte: not passed anywhere.
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "{sni}");
        let line = format!("trellis_connections_refused_total{{reason=\"{reason}\"}} ");
        let m = env.gateway_metrics();
        assert!(m.lines().any(|l| l.starts_with(&line)), "{reason}: {m}");
    }
    Ok(())
}

#[tokio::test]
async fn cluster_list_shows_each_gateway_healthy_until_it_stops() -> anyhow::Result<()> {
    let env = env().await?;
    let gateway = |network: &'static str| {
        let out = env.cp.cli(&["cluster", "list", "-o", "json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out.ok()?).ok()?;
        rows.iter()
            .flat_map(|c| c["gateways"].as_array().cloned().unwrap_or_default())
            .find(|g| g["network"] == network)
    };
    // The fixture's gateway, with reviews' endpoint behind it.
    let addr = format!("{}:15443", env.ip(GATEWAY));
    wait_for(
        Duration::from_secs(20),
        "net-b's gateway listed healthy with reviews behind it",
        || {
            let g = gateway("net-b").filter(|g| {
                g["healthy"] == true && g["endpoints"] == 1 && g["addresses"][0] == *addr
            });
            async move { g }
        },
    )
    .await?;
    // Another one comes and goes.
    let mut spare = spawn_gateway(&env.cp, "net-c", &gateway_listeners(&env.block, SPARE))?;
    let addr = format!("{}:15443", env.ip(SPARE));
    let listed = wait_for(Duration::from_secs(20), "net-c's gateway listed", || {
        let g = gateway("net-c").filter(|g| g["healthy"] == true);
        async move { g }
    })
    .await;
    listed.map_err(|e| anyhow::anyhow!("{e}: {}", spare.output()))?;
    assert_eq!(gateway("net-c").unwrap()["addresses"][0], *addr);
    let status = spare.terminate()?;
    assert!(status.success(), "{status}");
    wait_for(Duration::from_secs(10), "net-c's gateway gone", || {
        let gone = gateway("net-b").is_some() && gateway("net-c").is_none();
        async move { gone.then_some(()) }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn only_gateway_tokens_give_gateway_identities() -> anyhow::Result<()> {
    let env = env().await?;
    let refused = |args: &[&str], why: &str| {
        let out = env
            .cp
            .cli_raw(&[&["token", "create"], args].concat())
            .expect("trellis runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    };
    let gateway_id = "trellis-system/eastwest-gateway-net-b";
    refused(
        &["--kind", "vm", "--identity", gateway_id],
        "trellis-system",
    );
    refused(&["--kind", "gateway"], "--network");
    refused(&["--kind", "gateway", "--network", "Net B"], "network");
    refused(
        &[
            "--kind",
            "vm",
            "--identity",
            "default/web",
            "--network",
            "net-b",
        ],
        "network",
    );
    // The fixture's gateway token is listed with the identity it gave.
    let list = env.cp.cli(&["token", "list", "-o", "json"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list)?;
    assert!(
        rows.iter()
            .any(|r| r["kind"] == "gateway" && r["identity"] == gateway_id),
        "{list}"
    );
    Ok(())
}

/// The listeners of a gateway at host `h` of `block`.
fn gateway_listeners(block: &Block, h: u8) -> Vec<String> {
    let ip = block.ip(h);
    [
        ("--listen", 15443),
        ("--health", 15021),
        ("--metrics", 15020),
        ("--admin", 15000),
    ]
    .iter()
    .flat_map(|(flag, port)| [flag.to_string(), format!("{ip}:{port}")])
    .collect()
}

/// The gateway of `network`, with a token of its own and `listeners`.
fn spawn_gateway(cp: &Cluster, network: &str, listeners: &[String]) -> anyhow::Result<Proc> {
    let dir = cp.root.path();
    let t = cp.token(&["--kind", "gateway", "--network", network])?;
    let name = format!("gateway-{network}");
    let mut args = vec![
        "--token".to_string(),
        t,
        "--data-dir".into(),
        dir.join(&name).display().to_string(),
    ];
    args.extend_from_slice(listeners);
    spawn(dir, &name, "trellis-eastwest", &args)
}

/// The first flight of a rustls client asking for `sni`.
fn client_hello(sni: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("a DNS name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("a client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("a ClientHello");
    out
}

fn apply(cp: &Cluster, dir: &Path, name: &str, yaml: &str) -> anyhow::Result<String> {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, yaml)?;
    cp.cli(&["apply", "-f", &path.display().to_string()])
}

fn agent_args(ip: &str, data: &Path, network: &str) -> Vec<String> {
    [
        "--data-dir",
        &data.display().to_string(),
        "--inbound",
        &format!("{ip}:15006"),
        "--outbound",
        &format!("{ip}:15001"),
        "--admin",
        &format!("{ip}:15000"),
        "--metrics",
        &format!("{ip}:15020"),
        "--dns",
        &format!("{ip}:15053"),
        "--app-host",
        ip,
        "--network",
        network,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(dir: &Path, name: &str, program: &str, args: &[String]) -> anyhow::Result<Proc> {
    Proc::spawn(
        name,
        Command::new(bin(program)).args(args),
        &dir.join(format!("{name}.log")),
    )
}

/// `curl -s -m 5 ARGS`: the status code (0: none) and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
