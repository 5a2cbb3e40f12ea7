//! Kubernetes discovery against a real `kube-apiserver` v1.20 with
//! `kube-controller-manager` (which makes the EndpointSlices, v1beta1 on
//! 1.20): a control-plane node started with `--kubernetes` writes the
//! cluster's Service and ready pods into the store, and an agent routes a
//! real request to the echo server listening on each pod's IP. There is
//! no kubelet: the test binds the pods to a Node object and writes their
//! status (IP, readiness) itself.
use std::time::Duration;

use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use trellis_agent::dns::testing::{addresses, query};
use trellis_agent::dns::Transport;
use trellis_e2e::kube::{comparison_after_restart, unavailable, KubeCluster, Options};
use trellis_e2e::loopback::Block;
use trellis_e2e::reviews::{client_agent, echo, versions, HOST};
use trellis_e2e::{wait_for, Cluster, Proc};
use trellis_kubernetes::client::{client, Source};

/// Loopback block series of this test binary: `127.47.N.0/24`.
const SERIES: u8 = 47;
const CLIENT: u8 = 10;
const POD_1: u8 = 11;
const POD_2: u8 = 12;
const VM: u8 = 13;

/// The Node (with topology labels), the Service and its pods' account.
const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    topology.kubernetes.io/region: eu
    topology.kubernetes.io/zone: eu-1
    topology.istio.io/subzone: rack-7
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews, namespace: default}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-pods, namespace: default}
spec:
  clusterIP: None
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080, protocol: TCP}]
"#;

/// The headless Service's name.
const HEADLESS: &str = "reviews-pods.default.svc.cluster.local";

/// Pod `name` (label `version`), bound to node-a.
fn pod(name: &str, version: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default, labels: {{app: reviews, version: {version}}}}}
spec:
  nodeName: node-a
  serviceAccountName: reviews
  automountServiceAccountToken: false
  containers: [{{name: app, image: trellis-echo}}]
"#
    )
}

/// What a kubelet would report: the pod runs at `ip`, ready or not.
async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) -> anyhow::Result<()> {
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Ready", "status": status},
            {"type": "ContainersReady", "status": status},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// `trellis get KIND -o json` as a list of resources.
fn get(cp: &Cluster, kind: &str) -> Vec<serde_json::Value> {
    let out = cp.cli(&["get", kind, "-o", "json"]).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    match v["items"].as_array() {
        Some(a) => a.clone(),
        None if v.is_object() => vec![v],
        None => vec![],
    }
}

/// reviews on a VM, as `trellis apply` adds it: a ServiceEntry of the
/// same host selecting `app: reviews`, and the VM's WorkloadEntry (no
/// agent there: plaintext).
fn vm_reviews(ip: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews-vm}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-vm}}
spec:
  address: {ip}
  labels: {{app: reviews, version: v3, security.istio.io/tlsMode: disabled}}
"#
    )
}

/// Names of the WorkloadEntries discovery wrote.
fn pod_entries(cp: &Cluster) -> Vec<String> {
    get(cp, "we")
        .iter()
        .filter(|r| r["metadata"]["annotations"]["trellis.io/source"] == "kubernetes/cluster-1")
        .filter_map(|r| r["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// A Kubernetes cluster (with its controller manager) holding [`OBJECTS`]
/// and two ready pods of reviews, at the IPs where two echo servers
/// listen (v1, v2); a control plane of `nodes` nodes, all in its cluster
/// and started with `--kubernetes`; and a client agent with an upstream
/// to reviews. Started, requests reach both pods.
struct Fixture {
    // Field order is drop order: the processes, then the control plane,
    // then the API server.
    _client: Proc,
    _echo: Vec<Proc>,
    cp: Cluster,
    pods: Api<Pod>,
    kube: KubeCluster,
    block: Block,
    url: String,
}

impl Fixture {
    async fn start(name: &str, nodes: usize) -> anyhow::Result<Fixture> {
        let kube = KubeCluster::start(
            name,
            Options {
                controller_manager: true,
                ..Default::default()
            },
        )?;
        let listeners: Vec<(u8, u16)> = [15000, 15001, 15006, 15020, 15053, 19080]
            .map(|p| (CLIENT, p))
            .into_iter()
            .chain([(POD_1, 9080), (POD_2, 9080), (VM, 9080)])
            .collect();
        let block = Block::take(SERIES, &listeners)?;
        let ip = |h: u8| block.ip(h).to_string();
        let kubeconfig = kube.kubeconfig.display().to_string();
        let cp = Cluster::start(nodes, &["--kubernetes", &kubeconfig]).await?;
        let dir = cp.root.path().to_path_buf();

        kube.kubectl_stdin(&["apply", "-f", "-"], Some(OBJECTS))?;
        let c = client(&Source::Kubeconfig(kube.kubeconfig.clone())).await?;
        let pods: Api<Pod> = Api::namespaced(c, "default");
        for (name, version, host) in [("reviews-1", "v1", POD_1), ("reviews-2", "v2", POD_2)] {
            kube.kubectl_stdin(&["apply", "-f", "-"], Some(&pod(name, version)))?;
            set_status(&pods, name, &ip(host), true).await?;
        }
        let echo = vec![
            echo(&dir, &ip(POD_1), "v1")?,
            echo(&dir, &ip(POD_2), "v2")?,
            echo(&dir, &ip(VM), "v3")?,
        ];
        let token = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
        let client = client_agent(&dir, &ip(CLIENT), &token)?;
        let f = Fixture {
            _client: client,
            _echo: echo,
            cp,
            pods,
            kube,
            url: format!("http://{}:19080/", ip(CLIENT)),
            block,
        };
        wait_for(
            Duration::from_secs(30),
            "requests reaching both pods",
            || async { (versions(&f.url, 10) == ["v1", "v2"]).then_some(()) },
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: entries {:?}, {}",
                pod_entries(&f.cp),
                f.cp.node(1).output()
            )
        })?;
        Ok(f)
    }

    fn ip(&self, host: u8) -> String {
        self.block.ip(host).to_string()
    }

    /// Waits until the client agent's DNS proxy answers `name` with the A
    /// records of exactly the pods `hosts`.
    async fn resolving(&self, name: &str, hosts: &[u8]) -> anyhow::Result<()> {
        let want: Vec<String> = hosts.iter().map(|h| self.ip(*h)).collect();
        let server = format!("{}:15053", self.ip(CLIENT)).parse()?;
        let answer = || async {
            let m = query(server, name, RecordType::A, Transport::Udp).await;
            let mut ips: Vec<String> = m
                .map(|m| addresses(&m).iter().map(|ip| ip.to_string()).collect())
                .unwrap_or_default();
            ips.sort();
            ips
        };
        let waited = wait_for(
            Duration::from_secs(30),
            &format!("{name} resolving to {want:?}"),
            || async { (answer().await == want).then_some(()) },
        )
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("{e}: resolves to {:?}", answer().await)),
        }
    }

    /// Waits until requests reach exactly `want`.
    async fn reaching(&self, want: &[&str]) -> anyhow::Result<()> {
        wait_for(
            Duration::from_secs(30),
            &format!("requests reaching {want:?}"),
            || async { (versions(&self.url, 10) == want).then_some(()) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}: reaching {:?}", versions(&self.url, 10)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clusters_service_and_ready_pods_reach_the_agents_and_survive_a_restart(
) -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let mut f = Fixture::start("kdisc-1", 1).await?;
    // As a ServiceEntry and WorkloadEntries with their source and place.
    let se = get(&f.cp, "se");
    let se = se
        .iter()
        .find(|r| r["metadata"]["name"] == "reviews")
        .expect("the Service as a ServiceEntry");
    assert_eq!(
        se["metadata"]["annotations"]["trellis.io/source"],
        "kubernetes/cluster-1"
    );
    assert_eq!(se["spec"]["hosts"][0], HOST);
    let entry = get(&f.cp, "we")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "reviews-1.cluster-1")
        .expect("reviews-1's entry");
    assert_eq!(entry["spec"]["address"], f.ip(POD_1));
    assert_eq!(entry["spec"]["locality"], "eu/eu-1/rack-7");
    assert_eq!(entry["spec"]["serviceAccount"], "reviews");
    assert_eq!(
        entry["spec"]["labels"]["topology.istio.io/cluster"],
        "cluster-1"
    );
    // The headless Service has no address: its name resolves to its
    // ready pods, as Kubernetes DNS answers it.
    let headless = get(&f.cp, "se")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "reviews-pods")
        .expect("the headless Service as a ServiceEntry");
    assert_eq!(headless["spec"]["hosts"][0], HEADLESS);
    assert!(headless["spec"].get("addresses").is_none(), "{headless}");
    f.resolving(HEADLESS, &[POD_1, POD_2]).await?;

    // A VM service of the same name and namespace is the same service.
    let vm = f.cp.root.path().join("vm.yaml");
    std::fs::write(&vm, vm_reviews(&f.ip(VM)))?;
    f.cp.cli(&["apply", "-f", &vm.display().to_string()])?;
    f.reaching(&["v1", "v2", "v3"]).await?;
    f.cp.cli(&["delete", "-f", &vm.display().to_string()])?;
    f.reaching(&["v1", "v2"]).await?;

    // reviews-2 turns not ready: its endpoint goes.
    set_status(&f.pods, "reviews-2", &f.ip(POD_2), false).await?;
    f.reaching(&["v1"]).await?;
    f.resolving("reviews-pods.default", &[POD_1]).await?;
    assert_eq!(pod_entries(&f.cp), ["reviews-1.cluster-1"]);

    // reviews-1 is deleted and reviews-2 ready again.
    f.kube
        .kubectl(&["delete", "pod", "reviews-1", "--wait=false"])?;
    set_status(&f.pods, "reviews-2", &f.ip(POD_2), true).await?;
    f.reaching(&["v2"]).await?;
    assert_eq!(pod_entries(&f.cp), ["reviews-2.cluster-1"]);

    // The node restarts: the endpoints stay (stored, never cleared), and
    // comparing the cluster with the store finds nothing to write.
    let wrote = |cp: &Cluster| {
        cp.node(1)
            .output()
            .matches("Kubernetes discovery wrote its changes")
            .count()
    };
    let before = wrote(&f.cp);
    f.cp.stop(1)?;
    f.cp.restart(1).await?;
    assert_eq!(
        pod_entries(&f.cp),
        ["reviews-2.cluster-1"],
        "kept across the restart"
    );
    let node = f.cp.node(1);
    let line = comparison_after_restart(node).await?;
    assert!(
        line.contains("upserts=0") && line.contains("deletes=0"),
        "{line}"
    );
    assert_eq!(versions(&f.url, 10), ["v2"]);
    assert_eq!(
        wrote(&f.cp),
        before,
        "a write after the restart: {}",
        node.output()
    );
    Ok(())
}

/// The node whose log says it writes.
fn writer(cp: &Cluster, ids: &[u64]) -> Option<u64> {
    ids.iter().copied().find(|id| {
        cp.node(*id)
            .output()
            .contains("this node writes the cluster's Kubernetes discovery")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_of_the_cluster_takes_over_when_the_writer_stops() -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let mut f = Fixture::start("kdisc-2", 3).await?;
    let ids = [1, 2, 3];
    let first = writer(&f.cp, &ids).expect("one node writes");
    // The writer alone publishes the mesh root's ConfigMaps.
    let published = "ConfigMap trellis-ca-root-cert with the mesh root";
    wait_for(
        Duration::from_secs(40),
        "the writer publishing the root",
        || async { f.cp.node(first).output().contains(published).then_some(()) },
    )
    .await?;
    // The others stand by, and say who writes.
    for id in ids.iter().filter(|id| **id != first) {
        let n = f.cp.node(*id);
        wait_for(
            Duration::from_secs(20),
            "the others standing by",
            || async {
                n.output()
                    .contains("another node writes this cluster's Kubernetes discovery")
                    .then_some(())
            },
        )
        .await?;
    }
    f.cp.kill(first);
    // Within the lease and a renewal, another node writes the changes.
    let rest: Vec<u64> = ids.into_iter().filter(|id| *id != first).collect();
    set_status(&f.pods, "reviews-2", &f.ip(POD_2), false).await?;
    let next = wait_for(Duration::from_secs(40), "another node writing", || async {
        writer(&f.cp, &rest)
    })
    .await?;
    // The agent (failed over from the killed node, if it was its own)
    // sees the change the new writer wrote.
    f.reaching(&["v1"]).await?;
    assert!(f
        .cp
        .node(next)
        .output()
        .contains("Kubernetes discovery wrote its changes"));
    for id in rest.iter().filter(|id| **id != next) {
        assert!(!f.cp.node(*id).output().contains(published), "node {id}");
    }
    // And the new writer publishes it: a ConfigMap deleted comes back.
    f.kube.kubectl(&[
        "delete",
        "configmap",
        "trellis-ca-root-cert",
        "-n",
        "default",
    ])?;
    wait_for(
        Duration::from_secs(40),
        "the new writer re-creating the root's ConfigMap",
        || async {
            let back =
                f.kube
                    .kubectl(&["get", "configmap", "trellis-ca-root-cert", "-n", "default"]);
            (back.is_ok() && f.cp.node(next).output().contains(published)).then_some(())
        },
    )
    .await?;
    Ok(())
}
