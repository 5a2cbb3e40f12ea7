//! Injected pods run in the mesh, against a real `kube-apiserver` v1.20
//! with `kube-controller-manager` and the tests' kubelet
//! (e2e/src/kubelet.rs): a control-plane node with `--kubernetes`
//! publishes the mesh root in every namespace (ConfigMap
//! `trellis-ca-root-cert`), the API server calls its injector for pods of
//! a namespace labelled `istio-injection=enabled`, and the kubelet runs
//! what the injector added: `trellis-capture` (the agent's iptables rules
//! in the pod's network namespace) and the agent, which gets its
//! certificate with the pod's projected token and the mounted root. A
//! client pod's request by Service name then crosses both agents over
//! mTLS; a pod of a namespace without the label runs as it is. The node
//! runs as a service account with the chart's ClusterRole.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{Api, PostParams};
use anyhow::{bail, Context};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::Value;
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_e2e::kube_webhook::WebhookBed;
use trellis_e2e::kubelet::{Images, Kubelet, NodeSpec};
use trellis_e2e::netns::Net;
use trellis_e2e::{bin, wait_for};
use trellis_kubernetes::client::{client, Source};

/// Pods start (init, certificate, readiness) within this.
const WAIT: Duration = Duration::from_secs(60);

/// The two namespaces, with and without injection.
const MESH: &str = "shop";
const PLAIN: &str = "plain";

/// The control plane's Service and its Endpoints at `ip:port`: what the
/// injected agents' `TRELLIS_CONTROL_PLANE` names
/// (`trellis-controlplane.NS.svc`, NS being the kubeconfig's namespace).
fn control_plane(ip: &str, port: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: trellis-controlplane, namespace: default}}
spec:
  ports: [{{name: grpc, port: {port}, protocol: TCP}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: trellis-controlplane, namespace: default}}
subsets:
- addresses: [{{ip: {ip}}}]
  ports: [{{name: grpc, port: {port}, protocol: TCP}}]
"#
    )
}

/// Echo as pod `echo` of namespace `ns` behind Service `echo`.
fn echo(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: echo, namespace: {ns}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: {ns}, labels: {{app: echo}}}}
spec:
  serviceAccountName: echo
  automountServiceAccountToken: false
  containers:
  - name: echo
    image: trellis/echo
    args: [--http, 0.0.0.0:9080, --name, echo-{ns}]
    ports: [{{name: http, containerPort: 9080}}]
    readinessProbe: {{tcpSocket: {{port: http}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {ns}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 9080, protocol: TCP}}]
"#
    )
}

/// A pod that only waits, for the test to run curl in.
const CLIENT: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  serviceAccountName: client
  automountServiceAccountToken: false
  containers:
  - name: client
    image: shell
    command: [/bin/sh, -c, 'exec sleep 600']
"#;

/// The chart's ClusterRole (the first document of its `rbac.yaml`, less
/// the labels its template makes) for ServiceAccount
/// `default/trellis-controlplane`, as YAML to apply.
fn chart_role() -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../installer/charts/trellis/templates/rbac.yaml");
    let text = std::fs::read_to_string(&path)?;
    let role = text.split("\n---\n").next().unwrap_or_default();
    let lines: Vec<&str> = role.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let templated = |l: Option<&&str>| l.is_some_and(|l| l.contains("{{"));
        if templated(Some(line)) || (line.trim() == "labels:" && templated(lines.get(i + 1))) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    anyhow::ensure!(
        out.contains("kind: ClusterRole") && !out.contains("{{"),
        "{} no longer starts with a plain ClusterRole: update this test\n{out}",
        path.display()
    );
    Ok(format!(
        "{out}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: trellis-controlplane}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: trellis-controlplane}}
subjects: [{{kind: ServiceAccount, name: trellis-controlplane, namespace: default}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: trellis-controlplane, namespace: default}}
"
    ))
}

/// A kubeconfig in `dir` of ServiceAccount `default/trellis-controlplane`
/// with [`chart_role`]'s privileges: the node runs with the chart's RBAC,
/// so that a permission it lacks fails this test.
async fn chart_account(kube: &KubeCluster, dir: &Path) -> anyhow::Result<PathBuf> {
    kube.kubectl_stdin(&["apply", "-f", "-"], Some(&chart_role()?))?;
    let admin = client(&Source::Kubeconfig(kube.kubeconfig.clone())).await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(admin, "default")
        .create_token_request("trellis-controlplane", &PostParams::default(), &request)
        .await?
        .status
        .context("no token in the TokenRequest's answer")?
        .token;
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: '{}', certificate-authority: '{}'}}}}]
users: [{{name: trellis-controlplane, user: {{token: '{token}'}}}}]
contexts: [{{name: c, context: {{cluster: c, user: trellis-controlplane}}}}]
current-context: c
",
            kube.server,
            kube.ca.display()
        ),
    )?;
    Ok(path)
}

struct Bed {
    // Field order is drop order: the pods' processes, then the node and
    // the API server, then the network and the node's kubeconfig.
    kubelet: Kubelet,
    bed: WebhookBed,
    _net: Arc<Mutex<Net>>,
    _dir: tempfile::TempDir,
}

impl Bed {
    async fn start() -> anyhow::Result<Bed> {
        let net = Net::new("kinj")?;
        let gateway = net.gateway().to_string();
        let net = Arc::new(Mutex::new(net));
        let options = Options {
            controller_manager: true,
            ..Options::default()
        };
        let kube = KubeCluster::start("inject", options)?;
        let dir = tempfile::Builder::new().prefix("trellis-kinj-").tempdir()?;
        let kubeconfig = chart_account(&kube, dir.path()).await?;
        let bed = WebhookBed::serve(kube, &kubeconfig, &gateway, &[]).await?;
        bed.patched().await?;
        let port = bed.node.nodes[0]
            .addr
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .context("the node's port")?;
        bed.kube
            .kubectl_stdin(&["apply", "-f", "-"], Some(&control_plane(&gateway, &port)))?;
        let images = Images::from([
            ("trellis/trellis-agent".to_string(), bin("trellis-agent")),
            ("trellis/echo".to_string(), bin("trellis-echo")),
            ("shell".to_string(), PathBuf::from("/bin/sh")),
        ]);
        let node = NodeSpec {
            name: "node-a".into(),
            region: "r1".into(),
            zone: "z1".into(),
            subzone: String::new(),
            schedules: true,
        };
        let kubelet = Kubelet::start(&bed.kube, node, net.clone(), images).await?;
        Ok(Bed {
            kubelet,
            bed,
            _net: net,
            _dir: dir,
        })
    }

    /// The `root-cert.pem` of namespace `ns`'s ConfigMap, if it has one.
    fn published(&self, ns: &str) -> Option<String> {
        let out = self
            .bed
            .kube
            .kubectl(&[
                "get",
                "configmap",
                "trellis-ca-root-cert",
                "-n",
                ns,
                "-o",
                "json",
            ])
            .ok()?;
        let map: Value = serde_json::from_str(&out).ok()?;
        map["data"]["root-cert.pem"].as_str().map(str::to_string)
    }

    /// Waits until namespace `ns` has the mesh root.
    async fn root_in(&self, ns: &str) -> anyhow::Result<()> {
        let root = self.bed.root()?;
        // The first time, after the node took the discovery lease (its
        // first comparison, then at most RECHECK later): slow on a loaded
        // machine.
        wait_for(
            WAIT,
            &format!("the mesh root in namespace {ns}"),
            || async { (self.published(ns).as_deref() == Some(root.as_str())).then_some(()) },
        )
        .await
    }

    /// Waits until pod `ns/name` is ready.
    async fn ready(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let ready = wait_for(WAIT, &format!("pod {ns}/{name} ready"), || async {
            let out = self
                .bed
                .kube
                .kubectl(&["get", "pod", name, "-n", ns, "-o", "json"])
                .ok()?;
            let pod: Value = serde_json::from_str(&out).ok()?;
            if pod["status"]["phase"] == "Failed" {
                return Some(Err(anyhow::anyhow!(
                    "pod {ns}/{name} failed: {}",
                    pod["status"]
                )));
            }
            let conditions = pod["status"]["conditions"].as_array()?;
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(Ok(()))
        })
        .await;
        match ready {
            Ok(r) => r,
            Err(e) => {
                let logs: Vec<String> = ["trellis-capture", "trellis-agent", name]
                    .iter()
                    .filter_map(|c| Some(format!("{c}:\n{}", self.kubelet.log(ns, name, c)?)))
                    .collect();
                bail!("{e:#}\n{}", logs.join("\n"))
            }
        }
    }

    /// The containers and init containers of pod `ns/name`, as stored.
    fn containers(&self, ns: &str, name: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let out = self
            .bed
            .kube
            .kubectl(&["get", "pod", name, "-n", ns, "-o", "json"])?;
        let pod: Value = serde_json::from_str(&out)?;
        let names = |list: &str| -> Vec<String> {
            pod["spec"][list]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["name"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        Ok((names("initContainers"), names("containers")))
    }

    /// `curl` of `url` inside pod `ns/name`: the body, or why not.
    fn curl(&self, ns: &str, name: &str, url: &str) -> anyhow::Result<String> {
        let mut cmd = self
            .kubelet
            .command(ns, name, "curl")
            .with_context(|| format!("pod {ns}/{name} does not run here"))?;
        let out = cmd.args(["-sS", "-f", "--max-time", "5", url]).output()?;
        if !out.status.success() {
            bail!(
                "curl {url} in {ns}/{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_pods_get_the_mesh_root_and_talk_over_mtls_through_their_agents(
) -> anyhow::Result<()> {
    if let Some(why) = unavailable().or_else(trellis_e2e::netns::unavailable) {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let t = Bed::start().await?;
    // (The controller manager makes their `default` ServiceAccounts.)
    t.bed.kube.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {MESH}, labels: {{istio-injection: enabled}}}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: {PLAIN}}}\n"
        )),
    )?;

    // The root in every namespace but Kubernetes' own, labelled.
    for ns in [MESH, PLAIN, "default"] {
        t.root_in(ns).await?;
    }
    assert_eq!(t.published("kube-system"), None);
    let label = t.bed.kube.kubectl(&[
        "get",
        "configmap",
        "trellis-ca-root-cert",
        "-n",
        MESH,
        "-o",
        "jsonpath={.metadata.labels.app\\.kubernetes\\.io/managed-by}",
    ])?;
    assert_eq!(label, "trellis-controlplane");

    for (ns, text) in [
        (MESH, echo(MESH)),
        (PLAIN, echo(PLAIN)),
        (MESH, CLIENT.into()),
    ] {
        t.bed
            .kube
            .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], Some(&text))?;
    }
    for (ns, pod) in [(MESH, "echo"), (MESH, "client"), (PLAIN, "echo")] {
        t.ready(ns, pod).await?;
    }
    // Injected in the labelled namespace only.
    let agent = "trellis-agent".to_string();
    let (init, containers) = t.containers(MESH, "echo")?;
    assert_eq!(init, ["trellis-capture"]);
    assert_eq!(containers, ["echo", agent.as_str()]);
    assert_eq!(t.containers(PLAIN, "echo")?, (vec![], vec!["echo".into()]));

    // The client's request by Service name, captured by its agent, sent
    // over mTLS to the server's agent, which hands it to echo.
    let url = format!("http://echo.{MESH}.svc.cluster.local:9080/");
    let body = wait_for(WAIT, "a request through both agents", || async {
        t.curl(MESH, "client", &url).ok()
    })
    .await?;
    let report: Value = serde_json::from_str(&body)?;
    assert_eq!(report["service"], format!("echo-{MESH}"), "{report}");
    // The server's agent says so: the caller is the client pod's
    // service account, proven by mTLS.
    let metrics = t.curl(MESH, "echo", "http://127.0.0.1:15020/stats/prometheus")?;
    let principal = format!(
        "source_principal=\"spiffe://{}/ns/{MESH}/sa/client\"",
        t.bed.node.trust_domain
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total")
                && l.contains(&principal)
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains("reporter=\"destination\"")),
        "no mTLS request from the client in the server agent's metrics:\n{metrics}"
    );
    // The pod without an agent still serves, in plain text, to a client
    // in the mesh.
    let plain = t.curl(
        MESH,
        "client",
        &format!("http://echo.{PLAIN}.svc.cluster.local:9080/"),
    )?;
    assert!(plain.contains(&format!("echo-{PLAIN}")), "{plain}");

    // Deleted: created again. Edited: set back.
    t.bed
        .kube
        .kubectl(&["delete", "configmap", "trellis-ca-root-cert", "-n", MESH])?;
    let deleted = std::time::Instant::now();
    t.root_in(MESH).await?;
    eprintln!("deleted ConfigMap back after {:?}", deleted.elapsed());
    t.bed.kube.kubectl(&[
        "patch",
        "configmap",
        "trellis-ca-root-cert",
        "-n",
        MESH,
        "--type=merge",
        "-p",
        r#"{"data":{"root-cert.pem":"not a root"}}"#,
    ])?;
    let edited = std::time::Instant::now();
    t.root_in(MESH).await?;
    eprintln!("edited ConfigMap set back after {:?}", edited.elapsed());
    Ok(())
}
