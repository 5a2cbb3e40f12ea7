//! Config push through a real 3-node control plane to real agents on
//! loopback (no root): `trellis apply` of Istio resources, workloads that
//! register themselves through a WorkloadGroup (with a readiness probe),
//! weight changes observed within a second (an established connection
//! still served after them), invalid config refused whole,
//! a NACK shown in `trellis proxy-status`, failover of an agent's stream
//! when its control-plane node is killed, the grace period of a departed
//! workload, and an agent restarted while the whole control plane is down
//! serving from its cache; a workload with a probe that fails over to
//! another node keeping its health, and so its traffic; and the agents'
//! DNS proxies answering with the virtual IP the control plane allocated.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use trellis_agent::dns::testing::{addresses, query};
use trellis_agent::dns::Transport;
use trellis_e2e::{bin, upgrade, wait_for, Cluster, Proc};

const BASE: &str = r#"
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
metadata: {name: reviews-v1}
spec:
  metadata: {labels: {app: reviews, version: v1}}
  template: {serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews-v2}
spec:
  metadata: {labels: {app: reviews, version: v2}}
  template: {serviceAccount: reviews}
  probe:
    periodSeconds: 1
    failureThreshold: 1
    httpGet: {path: /healthz, port: 9080}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn split(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"#
    )
}

const CLIENT: &str = "127.0.0.30";
const V1: &str = "127.0.0.31";
const V2: &str = "127.0.0.32";

fn agent_args(ip: &str, data: &Path) -> Vec<String> {
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
        "--access-log",
        "false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

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

/// The version of reviews that answered, or the status code.
fn hit(url: &str) -> String {
    let (code, body) = curl(&[url]);
    if code != 200 {
        return format!("status {code}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["version"].as_str().unwrap_or("?").to_string()
}

fn tally(url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        *m.entry(hit(url)).or_default() += 1;
    }
    m
}

async fn ready(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/ready");
    wait_for(Duration::from_secs(20), &url, || async {
        (curl(&[&url]).0 == 200).then_some(())
    })
    .await
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn echo(dir: &Path, ip: &str, version: &str) -> anyhow::Result<Proc> {
    Proc::spawn(
        &format!("echo-{version}"),
        Command::new(bin("trellis-echo")).args([
            "--http",
            &format!("{ip}:9080"),
            "--name",
            "reviews",
            "--version",
            version,
        ]),
        &dir.join(format!("echo-{version}.log")),
    )
}

fn agent(dir: &Path, name: &str, token: Option<&str>, args: &[String]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin("trellis-agent"));
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    cmd.args(args);
    Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))
}

/// `trellis proxy-status -o json`, by proxy name.
fn proxy_status(cp: &Cluster) -> BTreeMap<String, serde_json::Value> {
    let out = cp.cli(&["proxy-status", "-o", "json"]).unwrap_or_default();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    rows.into_iter()
        .map(|r| (r["proxy"].as_str().unwrap_or("").to_string(), r))
        .collect()
}

/// Registered WorkloadEntries: name → health.
fn registered(cp: &Cluster) -> BTreeMap<String, String> {
    let out = cp.cli(&["get", "we", "-o", "json"]).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let items = match v["items"].as_array() {
        Some(a) => a.clone(),
        None if v.is_object() => vec![v],
        None => vec![],
    };
    items
        .iter()
        .filter_map(|i| {
            let health = i["metadata"]["annotations"][trellis_api::annotations::HEALTH].as_str()?;
            Some((
                i["metadata"]["name"].as_str()?.to_string(),
                health.to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_push_registration_and_failover() -> anyhow::Result<()> {
    let mut cp = Cluster::start(3, &["--workload-grace-secs", "2"]).await?;
    let dir = cp.root.path().to_path_buf();
    let base = write(&dir, "base.yaml", BASE);
    let out = cp.cli(&["apply", "-f", &base.display().to_string()])?;
    assert!(
        out.contains("workloadgroup.networking.istio.io/reviews-v2 created"),
        "{out}"
    );
    let vs = write(&dir, "vs.yaml", &split(100, 0));
    cp.cli(&["apply", "-f", &vs.display().to_string()])?;

    let _e1 = echo(&dir, V1, "v1")?;
    let _e2 = echo(&dir, V2, "v2")?;
    let t1 = cp.token(&["--kind", "vm", "--workload-group", "default/reviews-v1"])?;
    let t2 = cp.token(&["--kind", "vm", "--workload-group", "default/reviews-v2"])?;
    let tc = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
    let _a1 = agent(
        &dir,
        "agent-v1",
        Some(&t1),
        &agent_args(V1, &dir.join("a1")),
    )?;
    let mut a2 = agent(
        &dir,
        "agent-v2",
        Some(&t2),
        &agent_args(V2, &dir.join("a2")),
    )?;
    let mut client_args = agent_args(CLIENT, &dir.join("client"));
    client_args.extend([
        "--upstream".to_string(),
        format!("{CLIENT}:19080=reviews.default.svc.cluster.local:9080"),
        "--label".into(),
        "app=client".into(),
    ]);
    let client = agent(&dir, "agent-client", Some(&tc), &client_args)?;
    for ip in [V1, V2, CLIENT] {
        ready(&format!("{ip}:15000")).await?;
    }
    let url = format!("http://{CLIENT}:19080/");

    // Both workloads registered through their groups, and are ready (v2
    // passed its probe).
    wait_for(Duration::from_secs(10), "both workloads ready", || async {
        let r = registered(&cp);
        (r.len() == 2 && r.values().all(|h| h == "ready")).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&cp)))?;
    assert_eq!(tally(&url, 20), BTreeMap::from([("v1".into(), 20)]));
    // A connection to v1 opened now outlives the pushes that follow.
    let mut held = upgrade::open(&format!("{CLIENT}:19080"), "reviews")?;
    upgrade::ping(&mut held, b"before the push")?;

    // A weight change is observed within a second of the apply.
    let vs2 = write(&dir, "vs2.yaml", &split(0, 100));
    cp.cli(&["apply", "-f", &vs2.display().to_string()])?;
    let applied = Instant::now();
    wait_for(Duration::from_secs(1), "the new split", || async {
        (hit(&url) == "v2").then_some(())
    })
    .await?;
    let took = applied.elapsed();
    assert_eq!(
        tally(&url, 20),
        BTreeMap::from([("v2".into(), 20)]),
        "after {took:?}"
    );
    eprintln!("weight change observed {took:?} after apply");
    upgrade::ping(&mut held, b"the established connection is still served")?;

    // Invalid config is refused whole, with the field path; nothing changes.
    let bad = write(
        &dir,
        "bad.yaml",
        &format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: broken}}\nspec:\n  host: reviews\n  trafficPolicy: {{loadBalancer: {{simple: FASTEST}}}}\n",
            split(100, 0)
        ),
    );
    let out = cp.cli_raw(&["apply", "-f", &bad.display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.yaml: document 2 (DestinationRule default/broken): spec.trafficPolicy.loadBalancer"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tally(&url, 10), BTreeMap::from([("v2".into(), 10)]));
    let stored = cp.cli(&["get", "vs", "reviews", "-o", "yaml"])?;
    assert!(
        stored.contains("weight: 100") && stored.contains("subset: v2"),
        "{stored}"
    );
    assert!(cp.cli_raw(&["get", "dr", "broken"])?.status.code() != Some(0));

    // Every agent is listed, in sync.
    let ps = wait_for(Duration::from_secs(5), "all agents synced", || async {
        let ps = proxy_status(&cp);
        (ps.len() == 3 && ps.values().all(|p| p["status"] == "SYNCED")).then_some(ps)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", proxy_status(&cp)))?;
    assert!(
        ps.keys()
            .any(|k| k.starts_with("reviews-v1-127-0-0-31.default")),
        "{ps:?}"
    );
    // Each at its own address, not the loopback one it connects from.
    let mut at: Vec<&str> = ps.values().filter_map(|p| p["address"].as_str()).collect();
    at.sort_unstable();
    assert_eq!(at, [CLIENT, V1, V2], "{ps:?}");

    // The agents' DNS proxies answer the service's name with the virtual
    // IP the control plane allocated to it (its ServiceEntry has none).
    let mut vips = Vec::new();
    for ip in [CLIENT, V1] {
        let server = format!("{ip}:15053").parse()?;
        let m = query(server, "reviews.default", RecordType::A, Transport::Udp).await?;
        vips.push(addresses(&m));
    }
    assert!(
        matches!(&vips[0][..], [IpAddr::V4(a)] if a.octets()[..2] == [240, 240]),
        "{vips:?}"
    );
    assert_eq!(vips[0], vips[1], "one allocation, seen by every agent");

    // A policy the agent cannot enforce is refused (NACK), shown with its
    // reason; once it is gone the agent is in sync again.
    let authz = write(
        &dir,
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client}\nspec:\n  selector: {matchLabels: {app: client}}\n  action: DENY\n  rules: [{}]\n",
    );
    cp.cli(&["apply", "-f", &authz.display().to_string()])?;
    let client_name = wait_for(Duration::from_secs(5), "the client's NACK", || async {
        proxy_status(&cp).into_iter().find_map(|(name, p)| {
            let nack = p["last_nack"].as_str().unwrap_or("");
            (p["status"] == "NACKED" && nack.contains("AuthorizationPolicy default/deny-client"))
                .then_some(name)
        })
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}\n{}", proxy_status(&cp), client.output()))?;
    assert!(client_name.starts_with("client-"), "{client_name}");
    assert!(client.output().contains("config refused (NACK)"));
    cp.cli(&["delete", "-f", &authz.display().to_string()])?;
    wait_for(
        Duration::from_secs(5),
        "the client synced again",
        || async { (proxy_status(&cp)[&client_name]["status"] == "SYNCED").then_some(()) },
    )
    .await?;

    // An unready workload gets no traffic: v2's probe now fails.
    let sick = BASE.replace("path: /healthz", "path: /healthz?status=503");
    let sick = write(&dir, "sick.yaml", &sick);
    cp.cli(&["apply", "-f", &sick.display().to_string()])?;
    let half = write(&dir, "half.yaml", &split(50, 50));
    cp.cli(&["apply", "-f", &half.display().to_string()])?;
    wait_for(Duration::from_secs(10), "v2 unready", || async {
        registered(&cp)
            .values()
            .any(|h| h.starts_with("unhealthy"))
            .then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The split is a random roll per request: v1 answers its share, v2's
    // share is 503 (no healthy upstream), in whatever proportion 20 rolls
    // give (neither is empty but once in a million runs).
    let t = tally(&url, 20);
    let v1 = t.get("v1").copied().unwrap_or(0);
    let unavailable = t.get("status 503").copied().unwrap_or(0);
    assert!(
        v1 > 0 && unavailable > 0 && v1 + unavailable == 20,
        "v2's half has no healthy endpoint: {t:?}"
    );
    cp.cli(&["apply", "-f", &base.display().to_string()])?;
    wait_for(Duration::from_secs(10), "v2 ready again", || async {
        let t = tally(&url, 10);
        (t.get("v2").copied().unwrap_or(0) > 0 && !t.keys().any(|k| k.starts_with("status")))
            .then_some(())
    })
    .await?;

    // A workload whose agent is gone is removed after the grace period.
    a2.kill();
    wait_for(Duration::from_secs(10), "v2's entry removed", || async {
        (registered(&cp).len() == 1).then_some(())
    })
    .await?;
    let only = write(&dir, "only.yaml", &split(100, 0));
    cp.cli(&["apply", "-f", &only.display().to_string()])?;

    // Kill the node the client streams from: it fails over, traffic goes on.
    let node = proxy_status(&cp)[&client_name]["node"].as_u64().unwrap();
    // Until the client has the new split, half its requests still go to
    // v2, which is gone (503): one v1 answer does not tell.
    wait_for(Duration::from_secs(2), "v1 only", || async {
        (tally(&url, 20) == BTreeMap::from([("v1".into(), 20)])).then_some(())
    })
    .await?;
    cp.kill(node);
    for _ in 0..20 {
        assert_eq!(
            hit(&url),
            "v1",
            "traffic while the control plane node is down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = wait_for(
        Duration::from_secs(10),
        "the client on another node",
        || async {
            let ps = proxy_status(&cp);
            let n = ps.get(&client_name)?["node"].as_u64()?;
            (n != node).then_some(n)
        },
    )
    .await?;
    eprintln!("client moved from node {node} to node {moved}");
    cp.cli(&["apply", "-f", &half.display().to_string()])?;
    wait_for(
        Duration::from_secs(3),
        "an update through the new node",
        || async {
            (client.output().matches("config applied").count() > 0 && hit(&url) == "status 503")
                .then_some(())
        },
    )
    .await?;

    // The whole control plane down, the client restarted: it serves from its cache.
    for id in [1, 2, 3] {
        if id != node {
            cp.kill(id);
        }
    }
    drop(client);
    let _client = agent(&dir, "agent-client-2", None, &client_args)?;
    ready(&format!("{CLIENT}:15000")).await?;
    let t = tally(&url, 20);
    assert!(t.get("v1").copied().unwrap_or(0) > 0, "{t:?}");
    assert!(_client.output().contains("serving the cached config"));
    Ok(())
}

/// A workload with a readiness probe whose node is killed registers on the
/// node it fails over to with the health it had. Its agent reports health
/// only when the probe's result changes, so an entry that started over as
/// "not probed yet" would stay out of the mesh for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_workload_fails_over_with_its_health() -> anyhow::Result<()> {
    const CLIENT: &str = "127.0.0.40";
    const V2: &str = "127.0.0.42";
    let mut cp = Cluster::start(3, &[]).await?;
    let dir = cp.root.path().to_path_buf();
    let base = write(&dir, "base.yaml", BASE);
    cp.cli(&["apply", "-f", &base.display().to_string()])?;
    let vs = write(&dir, "vs.yaml", &split(0, 100));
    cp.cli(&["apply", "-f", &vs.display().to_string()])?;
    let _e2 = echo(&dir, V2, "v2")?;
    let t2 = cp.token(&["--kind", "vm", "--workload-group", "default/reviews-v2"])?;
    let tc = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
    let _a2 = agent(
        &dir,
        "agent-v2",
        Some(&t2),
        &agent_args(V2, &dir.join("a2")),
    )?;
    let mut client_args = agent_args(CLIENT, &dir.join("client"));
    client_args.extend([
        "--upstream".to_string(),
        format!("{CLIENT}:19080=reviews.default.svc.cluster.local:9080"),
    ]);
    let _client = agent(&dir, "agent-client", Some(&tc), &client_args)?;
    for ip in [V2, CLIENT] {
        ready(&format!("{ip}:15000")).await?;
    }
    let url = format!("http://{CLIENT}:19080/");
    let entry = "reviews-v2-127-0-0-42";
    let proxy = format!("{entry}.default");
    wait_for(
        Duration::from_secs(10),
        "v2 ready and answering",
        || async {
            (registered(&cp).get(entry).map(String::as_str) == Some("ready") && hit(&url) == "v2")
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&cp)))?;

    let node = proxy_status(&cp)[&proxy]["node"].as_u64().unwrap();
    cp.kill(node);
    let moved = wait_for(
        Duration::from_secs(15),
        "v2's agent on another node",
        || async {
            let n = proxy_status(&cp).get(&proxy)?["node"].as_u64()?;
            (n != node).then_some(n)
        },
    )
    .await?;
    eprintln!("reviews-v2's agent moved from node {node} to node {moved}");
    wait_for(
        Duration::from_secs(5),
        "v2 ready on its new stream",
        || async {
            (registered(&cp).get(entry).map(String::as_str) == Some("ready")).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&cp)))?;
    assert_eq!(tally(&url, 20), BTreeMap::from([("v2".into(), 20)]));
    Ok(())
}
