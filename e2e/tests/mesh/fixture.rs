//! What the data-plane tests run on: [`Dataplane`], workloads in network
//! namespaces behind agents that capture their traffic, started once for
//! the whole binary ([`dataplane`]); and the helpers the tests drive it
//! with (curl and shell in a host, echo stats, metrics).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::netns::{self, Host};
use trellis_e2e::shared::Shared;
use trellis_e2e::wait_for;

/// The mesh, with `R1`, `R2`, `R3`, `RT1`, `RT2` and `OUTSIDER` for the
/// hosts' addresses.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [240.240.0.1, "fd00:f0::1"]
  resolution: STATIC
  ports:
  - {number: 9080, name: http}
  - {number: 9000, name: tcp-echo}
  - {number: 9090, name: grpc}
  endpoints:
  - {address: R1, labels: {app: reviews, version: v1}, serviceAccount: reviews}
  - {address: R2, labels: {app: reviews, version: v2}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: [240.240.0.4]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: RT1, labels: {app: ratings, version: v1}, serviceAccount: ratings}
  - {address: RT2, labels: {app: ratings, version: v2}, serviceAccount: ratings}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: default}
spec:
  hosts: [shadow.default.svc.cluster.local]
  addresses: [240.240.0.2]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: R3, labels: {app: shadow}, serviceAccount: shadow}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: impostor, namespace: default}
spec:
  hosts: [impostor.default.svc.cluster.local]
  addresses: [240.240.0.3]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: R1, serviceAccount: someone-else}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.default.svc.cluster.local]
  addresses: [240.240.0.5]
  resolution: STATIC
  ports: [{number: 9080, name: http}, {number: 9081, name: http-idle}, {number: 9082, name: http-upgraded}, {number: 9083, name: http-recycled}, {number: 9999, name: http-dropped}]
  endpoints: [{address: OUTSIDER, labels: {security.istio.io/tlsMode: disabled}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy, namespace: default}
spec:
  host: legacy
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 300ms}, http: {maxRequestsPerConnection: 2}}
    portLevelSettings:
    - port: {number: 9081}
      connectionPool: {http: {idleTimeout: 3s}}
    - port: {number: 9082}
      connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-retry: {exact: "yes"}}}]
    retries: {attempts: 10, retryOn: 5xx}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-retry: {exact: "no"}}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /mirror}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: reviews, subset: v1}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: shadow, namespace: default}
spec:
  selector: {matchLabels: {app: shadow}}
  mtls: {mode: PERMISSIVE}
"#;

/// The mesh every test of this binary reads, started by the first test
/// that asks and stopped after the last ([`Shared`]). A test that needs
/// to stop something stops a part no other test uses (the `ratings`
/// endpoints, the spare host).
///
/// - `client`: productpage, an unmodified client; nftables capture, and an
///   explicit upstream `0.0.0.0:19090` to reviews' gRPC port.
/// - `r1`, `r2`: reviews v1 (iptables capture) and v2 (nftables), HTTP on
///   both IPv4 and IPv6 (dual stack, so that only capture keeps IPv6
///   callers from reaching it in plaintext), TCP echo and gRPC.
/// - `r3`: shadow, mirroring's target, PERMISSIVE, HTTP on IPv4 only.
/// - `rt1`, `rt2`: ratings v1 and v2, for outlier detection.
/// - `outsider`: no agent; plaintext `legacy` echo servers on 9080-9083,
///   and SYNs to 9999 dropped.
/// - `spare`: an agent with nftables capture and nothing to serve, for
///   the test that stops it.
pub struct Dataplane {
    /// Locked only to stop one of its processes.
    pub env: Mutex<MeshEnv>,
    pub client: Host,
    pub r1: Host,
    pub r2: Host,
    pub r3: Host,
    pub rt2: Host,
    pub outsider: Host,
    pub spare: Host,
}

/// The running [`Dataplane`], or `None` where network namespaces cannot
/// be made (the test then passes, saying why it skipped).
pub async fn dataplane() -> anyhow::Result<Option<Arc<Dataplane>>> {
    static DATAPLANE: Shared<Dataplane> = Shared::new();
    if let Some(why) = netns::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(None);
    }
    Ok(Some(DATAPLANE.get(Dataplane::start).await?))
}

impl Dataplane {
    async fn start() -> anyhow::Result<Dataplane> {
        let started = std::time::Instant::now();
        let mut env = MeshEnv::new("dp").await?;
        let client = env.host("client")?;
        let r1 = env.host("r1")?;
        let r2 = env.host("r2")?;
        let r3 = env.host("r3")?;
        let rt1 = env.host("rt1")?;
        let rt2 = env.host("rt2")?;
        let outsider = env.host("out")?;
        let spare = env.host("spare")?;
        let mesh = MESH
            // RT1 before R1, which it contains.
            .replace("RT1", &rt1.addr.to_string())
            .replace("RT2", &rt2.addr.to_string())
            .replace("R1", &r1.addr.to_string())
            .replace("R2", &r2.addr.to_string())
            .replace("R3", &r3.addr.to_string())
            .replace("OUTSIDER", &outsider.addr.to_string());
        let config = env.write("mesh.yaml", &mesh)?;

        // A mixed fleet: r1 captures with iptables, r2 and the client with
        // nftables.
        for (h, v, capture) in [(&r1, "v1", "iptables"), (&r2, "v2", "nftables")] {
            env.echo(
                h,
                &[
                    "--http",
                    "[::]:9080",
                    "--tcp",
                    "0.0.0.0:9000",
                    "--grpc",
                    "0.0.0.0:9090",
                    "--name",
                    "reviews",
                    "--version",
                    v,
                ],
            )?;
            env.agent(
                h,
                "default/reviews",
                Some(&config),
                &[
                    "--label",
                    "app=reviews",
                    "--label",
                    &format!("version={v}"),
                    "--capture",
                    capture,
                ],
            )
            .await?;
        }
        env.echo(&r3, &["--http", "0.0.0.0:9080", "--name", "shadow"])?;
        env.agent(
            &r3,
            "default/shadow",
            Some(&config),
            &["--label", "app=shadow"],
        )
        .await?;
        for (h, v) in [(&rt1, "v1"), (&rt2, "v2")] {
            env.echo(
                h,
                &[
                    "--http",
                    "0.0.0.0:9080",
                    "--name",
                    "ratings",
                    "--version",
                    v,
                ],
            )?;
            env.agent(
                h,
                "default/ratings",
                Some(&config),
                &["--label", "app=ratings", "--label", &format!("version={v}")],
            )
            .await?;
        }
        env.agent(
            &client,
            "default/productpage",
            Some(&config),
            &[
                "--label",
                "app=productpage",
                "--upstream",
                "0.0.0.0:19090=reviews.default.svc.cluster.local:9090",
                "--capture-exclude",
                "22,19090",
                "--capture",
                "nftables",
            ],
        )
        .await?;
        env.agent(
            &spare,
            "default/spare",
            Some(&config),
            &["--capture", "nftables"],
        )
        .await?;

        // The outsider: plaintext servers without an agent.
        env.echo(&outsider, &["--http", "0.0.0.0:9080", "--name", "legacy"])?;
        for (name, port) in [("idle", 9081), ("upgraded", 9082), ("recycled", 9083)] {
            env.spawn(
                &outsider,
                &format!("echo-{name}"),
                "trellis-echo",
                &[
                    "--http",
                    &format!("0.0.0.0:{port}"),
                    "--name",
                    &format!("legacy-{name}"),
                ],
            )?;
        }
        sh(&outsider, "iptables -A INPUT -p tcp --dport 9999 -j DROP").await?;
        for port in 9080..=9083 {
            wait_for(
                Duration::from_secs(10),
                &format!("the outsider's server on {port}"),
                || async { echo_stats(&outsider, port).await.ok() },
            )
            .await?;
        }
        eprintln!("the data plane started in {:?}", started.elapsed());
        Ok(Dataplane {
            env: Mutex::new(env),
            client,
            r1,
            r2,
            r3,
            rt2,
            outsider,
            spare,
        })
    }
}

/// `curl -s ARGS` in `host`; the output, whatever the exit status.
pub async fn curl(host: &Host, args: &str) -> String {
    let h = host.clone();
    let script = format!("curl -s {args} || true");
    tokio::task::spawn_blocking(move || h.sh(&script).unwrap_or_default())
        .await
        .unwrap()
}

/// The stats of the echo server on `port` of `host`, asked from `host`
/// itself (the query's own connection is one of those counted).
pub async fn echo_stats(host: &Host, port: u16) -> anyhow::Result<trellis_echo::Stats> {
    let body = curl(host, &format!("http://127.0.0.1:{port}/echo/stats")).await;
    serde_json::from_str(&body).with_context(|| format!("echo stats: {body:?}"))
}

/// `sh -c SCRIPT` in `host`: its stdout, or an error with its stderr.
pub async fn sh(host: &Host, script: &str) -> anyhow::Result<String> {
    let h = host.clone();
    let script = script.to_string();
    tokio::task::spawn_blocking(move || h.sh(&script)).await?
}

/// `n` requests on one keep-alive connection, with `headers`; the status codes.
pub async fn statuses(host: &Host, url: &str, headers: &str, n: usize) -> Vec<u16> {
    let urls = vec![format!("-o /dev/null {url}"); n].join(" ");
    let out = curl(host, &format!("{headers} -w '%{{http_code}}\\n' {urls}")).await;
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The Prometheus metrics of the agent in `host`.
pub async fn metrics(host: &Host) -> anyhow::Result<String> {
    sh(host, "curl -sf 127.0.0.1:15020/stats/prometheus").await
}
