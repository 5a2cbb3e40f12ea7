//! What the push tests run on: [`Push`], a 3-node control plane pushing
//! config to three agents on a loopback block of the test's own; and the
//! helpers the tests read it with (curl, `proxy-status`, the registry).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use trellis_e2e::loopback::Block;
use trellis_e2e::shared::Shared;
use trellis_e2e::{bin, wait_for, Cluster, Proc};

/// The service, its two workload groups (v2's with a readiness probe)
/// and their subsets.
pub const BASE: &str = r#"
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

/// A VirtualService splitting reviews `v1`/`v2` percent.
pub fn split(v1: u32, v2: u32) -> String {
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

/// `--workload-grace-secs 2`, so that a departed workload's entry goes
/// within the test.
pub const GRACE: [&str; 2] = ["--workload-grace-secs", "2"];

/// One [`Push`] (with [`GRACE`]) for the tests that change neither its
/// config nor its processes, started once for all of them ([`Shared`]).
pub async fn shared() -> anyhow::Result<Arc<Push>> {
    static SHARED: Shared<Push> = Shared::new();
    SHARED.get(|| Push::start(&GRACE)).await
}

/// Host numbers in the test's block.
const CLIENT: u8 = 30;
const V1: u8 = 31;
const V2: u8 = 32;
/// Loopback block series of this test binary: `127.30.N.0/24`.
const SERIES: u8 = 30;

/// A 3-node control plane with [`BASE`] and a 100/0 split applied; an
/// echo server for each version of reviews, each behind an agent that
/// registered it through its WorkloadGroup; and a client agent (labelled
/// `app=client`) with an explicit upstream to reviews. Started, both
/// workloads are ready and the client routes to v1. Dropping it stops
/// everything.
pub struct Push {
    // Field order is drop order: the agents before the control plane.
    pub client: Proc,
    _agent_v1: Proc,
    pub agent_v2: Proc,
    _echo_v1: Proc,
    _echo_v2: Proc,
    pub cp: Cluster,
    pub dir: PathBuf,
    pub block: Block,
    /// What `trellis apply` of [`BASE`] printed.
    pub applied_base: String,
    /// The client agent's arguments, but its token: to start it again.
    pub client_args: Vec<String>,
}

impl Push {
    /// Started with `node_flags` for every control-plane node.
    pub async fn start(node_flags: &[&str]) -> anyhow::Result<Push> {
        let listeners: Vec<(u8, u16)> = [CLIENT, V1, V2]
            .iter()
            .flat_map(|&h| [15000, 15001, 15006, 15020, 15053].map(|p| (h, p)))
            .chain([(V1, 9080), (V2, 9080), (CLIENT, 19080)])
            .collect();
        let block = Block::take(SERIES, &listeners)?;
        let cp = Cluster::start(3, node_flags).await?;
        let dir = cp.root.path().to_path_buf();
        let applied_base = apply(&cp, &dir, "base.yaml", BASE)?;
        apply(&cp, &dir, "vs.yaml", &split(100, 0))?;

        let ip = |h: u8| block.ip(h).to_string();
        let echo_v1 = echo(&dir, &ip(V1), "v1")?;
        let echo_v2 = echo(&dir, &ip(V2), "v2")?;
        let t1 = cp.token(&["--kind", "vm", "--workload-group", "default/reviews-v1"])?;
        let t2 = cp.token(&["--kind", "vm", "--workload-group", "default/reviews-v2"])?;
        let tc = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
        let agent_v1 = agent(
            &dir,
            "agent-v1",
            Some(&t1),
            &agent_args(&ip(V1), &dir.join("a1")),
        )?;
        let agent_v2 = agent(
            &dir,
            "agent-v2",
            Some(&t2),
            &agent_args(&ip(V2), &dir.join("a2")),
        )?;
        let mut client_args = agent_args(&ip(CLIENT), &dir.join("client"));
        client_args.extend([
            "--upstream".to_string(),
            format!(
                "{}:19080=reviews.default.svc.cluster.local:9080",
                ip(CLIENT)
            ),
            "--label".into(),
            "app=client".into(),
        ]);
        let client = agent(&dir, "agent-client", Some(&tc), &client_args)?;
        let push = Push {
            client,
            _agent_v1: agent_v1,
            agent_v2,
            _echo_v1: echo_v1,
            _echo_v2: echo_v2,
            cp,
            dir,
            block,
            applied_base,
            client_args,
        };
        for h in [V1, V2, CLIENT] {
            ready(&format!("{}:15000", ip(h))).await?;
        }
        // Both registered through their groups, and ready (v2 passed its
        // probe); the client has v1.
        wait_for(Duration::from_secs(10), "both workloads ready", || async {
            let r = registered(&push.cp);
            (r.len() == 2 && r.values().all(|h| h == "ready")).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&push.cp)))?;
        let url = push.url();
        wait_for(
            Duration::from_secs(5),
            "the client routing to v1",
            || async { (hit(&url) == "v1").then_some(()) },
        )
        .await?;
        Ok(push)
    }

    pub fn client_ip(&self) -> String {
        self.block.ip(CLIENT).to_string()
    }

    pub fn v1_ip(&self) -> String {
        self.block.ip(V1).to_string()
    }

    pub fn v2_ip(&self) -> String {
        self.block.ip(V2).to_string()
    }

    /// The client agent's explicit upstream to reviews.
    pub fn url(&self) -> String {
        format!("http://{}:19080/", self.client_ip())
    }

    /// The name of v2's WorkloadEntry: the group's and the address.
    pub fn v2_entry(&self) -> String {
        format!("reviews-v2-{}", self.v2_ip().replace('.', "-"))
    }

    /// Writes `yaml` to `name` in the test directory and applies it.
    pub fn apply(&self, name: &str, yaml: &str) -> anyhow::Result<String> {
        apply(&self.cp, &self.dir, name, yaml)
    }

    /// The client's name in `proxy-status`.
    pub fn client_name(&self) -> anyhow::Result<String> {
        proxy_status(&self.cp)
            .into_keys()
            .find(|k| k.starts_with("client-"))
            .ok_or_else(|| anyhow::anyhow!("no client in {:?}", proxy_status(&self.cp)))
    }

    /// Starts the client agent again, without a token: from what its data
    /// directory holds.
    pub async fn restart_client(&mut self) -> anyhow::Result<()> {
        self.client.kill();
        self.client = agent(&self.dir, "agent-client-2", None, &self.client_args)?;
        ready(&format!("{}:15000", self.client_ip())).await
    }
}

/// Writes `yaml` to `dir/name` and applies it: what the CLI printed.
fn apply(cp: &Cluster, dir: &Path, name: &str, yaml: &str) -> anyhow::Result<String> {
    let path = write(dir, name, yaml);
    cp.cli(&["apply", "-f", &path.display().to_string()])
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

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

/// `curl -s -m 5 ARGS`: the status code (0: none) and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
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
pub fn hit(url: &str) -> String {
    let (code, body) = curl(&[url]);
    if code != 200 {
        return format!("status {code}");
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["version"].as_str().unwrap_or("?").to_string()
}

/// What [`hit`] gave, over `n` requests.
pub fn tally(url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        *m.entry(hit(url)).or_default() += 1;
    }
    m
}

/// Waits until the agent with admin address `admin` is ready.
async fn ready(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/ready");
    wait_for(Duration::from_secs(20), &url, || async {
        (curl(&[&url]).0 == 200).then_some(())
    })
    .await
}

/// `trellis proxy-status -o json`, by proxy name.
pub fn proxy_status(cp: &Cluster) -> BTreeMap<String, serde_json::Value> {
    let out = cp.cli(&["proxy-status", "-o", "json"]).unwrap_or_default();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    rows.into_iter()
        .map(|r| (r["proxy"].as_str().unwrap_or("").to_string(), r))
        .collect()
}

/// Registered WorkloadEntries: name → health.
pub fn registered(cp: &Cluster) -> BTreeMap<String, String> {
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
