//! The multi-cluster scenario (docs/kubernetes.md, "Multi-cluster"): one
//! mesh of two Kubernetes clusters on two networks and a network of VMs.
//! Each Kubernetes cluster is a real `kube-apiserver` v1.20 with
//! `kube-controller-manager` and the tests' kubelet on a network of its own
//! (e2e/src/kube_mesh.rs), the Helm chart installed with tokens made by
//! `trellis token create`: its control-plane node joins, its east-west
//! gateway joins, its webhooks inject the sidecar into labelled
//! namespaces, and each injected agent gets its certificate with its pod's
//! token. The VMs' network is the mesh's first cluster (a node on the
//! machine), with reviews v3 on a VM and the network's own gateway.
//!
//! A pod in `east` calls reviews, whose endpoints are pods in `south`
//! (reached through south's gateway) and the VM (through the VMs'
//! gateway); a VirtualService applied with kubectl moves the traffic;
//! scaling south's pods to zero fails the traffic over to the VM; the
//! webhook refuses an invalid VirtualService; a pod of a namespace without
//! the label gets no sidecar; a token of another cluster gets no
//! certificate.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ::kube::api::{Api, PostParams};
use anyhow::Context;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use serde_json::Value;
use trellis_e2e::kube::unavailable;
use trellis_e2e::kube_mesh::{Member, MemberSpec, CONTROLPLANE, GATEWAY, SYSTEM};
use trellis_e2e::kubelet::{Images, NodeSpec};
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::netns::Host;
use trellis_e2e::{bin, helm, wait_for};
use trellis_kubernetes::client::{client, Source};

/// The service every workload of the scenario is part of.
const HOST: &str = "reviews.default.svc.cluster.local";

/// reviews on the VMs, as `trellis apply` declares it: a ServiceEntry of
/// the same host (so the Kubernetes Services and the VM are one service)
/// and the VMs' WorkloadGroup, version v3.
const VM_REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-vms, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews, namespace: default}
spec:
  metadata: {labels: {app: reviews, version: v3}}
  template: {serviceAccount: reviews}
"#;

/// reviews' service account, in `south`.
const ACCOUNT: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews, namespace: default}
"#;

/// reviews `version` in `south`, injected (its namespace is labelled).
/// The Service is in both clusters (as Istio's multi-cluster guides have
/// it: a client's cluster names the Service for its DNS), with pods in
/// south only.
fn deployment(version: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: reviews-{version}, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: reviews, version: {version}}}}}
  template:
    metadata: {{labels: {{app: reviews, version: {version}}}}}
    spec:
      serviceAccountName: reviews
      containers:
      - name: reviews
        image: trellis/echo
        args: [--http, 0.0.0.0:9080, --name, reviews-{version}]
        ports: [{{name: http, containerPort: 9080}}]
        readinessProbe: {{tcpSocket: {{port: http}}}}
"#
    )
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  selector: {app: reviews}
  ports: [{name: http, port: 9080, protocol: TCP}]
"#;

/// The client in `east`: a pod that only waits, injected; the test runs
/// curl in its network namespace, as `kubectl exec` would.
const SLEEP: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec:
  containers:
  - name: sleep
    image: shell
    command: [/bin/sh, -c, 'sleep 3600']
"#;

/// reviews' versions, and everything to one of them (`SUBSET`).
const TO_SUBSET: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: reviews.default.svc.cluster.local, subset: SUBSET}
"#;

/// The mesh of the scenario. Field order is drop order: the clusters'
/// pods and API servers, then the VMs and the control plane they joined.
struct Scenario {
    east: Member,
    south: Member,
    vms: MeshEnv,
    /// The VMs' network's gateway.
    vm_gateway: Host,
}

impl Scenario {
    async fn start() -> anyhow::Result<Scenario> {
        let mut vms = MeshEnv::new("mcvms").await?;
        let config = vms.write("reviews.yaml", VM_REVIEWS)?;
        vms.cp.cli(&["apply", "-f", config.to_str().unwrap()])?;
        let vm = vms.host("reviews")?;
        vms.echo(&vm, &["--http", "0.0.0.0:9080", "--name", "reviews-v3"])?;
        let token = vms
            .cp
            .token(&["--kind", "vm", "--workload-group", "default/reviews"])?;
        vms.agent_with_token(&vm, &token, None, &[]).await?;
        // The VMs' network's gateway.
        let gateway = vms.host("gateway")?;
        let token = vms
            .cp
            .token(&["--kind", "gateway", "--network", "network-1"])?;
        let data = vms.cp.root.path().join("gateway-data");
        let advertise = format!("{}:15443", gateway.addr);
        vms.spawn(
            &gateway,
            "gateway",
            "trellis-eastwest",
            &[
                "--token",
                &token,
                "--data-dir",
                data.to_str().unwrap(),
                "--advertise",
                &advertise,
            ],
        )?;
        let images = || {
            Images::from([
                ("trellis/echo".to_string(), bin("trellis-echo")),
                ("shell".to_string(), "/bin/sh".into()),
            ])
        };
        let node = |name: &str, region: &str| NodeSpec {
            name: name.into(),
            region: region.into(),
            zone: format!("{region}-a"),
            subzone: String::new(),
            schedules: true,
        };
        let south = Member::install(
            &vms.cp,
            MemberSpec {
                name: "south",
                network: "net-south",
                node: node("south-a", "us"),
                service_cidr: "10.98.0.0/16",
                images: images(),
            },
        )
        .await?;
        let east = Member::install(
            &vms.cp,
            MemberSpec {
                name: "east",
                network: "net-east",
                node: node("east-a", "eu"),
                service_cidr: "10.97.0.0/16",
                images: images(),
            },
        )
        .await?;
        for member in [&south, &east] {
            member
                .api
                .kubectl(&["label", "namespace", "default", "istio-injection=enabled"])?;
            member
                .api
                .kubectl_stdin(&["apply", "-f", "-"], Some(SERVICE))?;
        }
        south
            .api
            .kubectl_stdin(&["apply", "-f", "-"], Some(ACCOUNT))?;
        for version in ["v1", "v2"] {
            south
                .api
                .kubectl_stdin(&["apply", "-f", "-"], Some(&deployment(version)))?;
        }
        east.api.kubectl_stdin(&["apply", "-f", "-"], Some(SLEEP))?;
        wait_for(
            Duration::from_secs(60),
            "the client pod running",
            || async { east.kubelet.pod_ip("default", "sleep") },
        )
        .await?;
        Ok(Scenario {
            east,
            south,
            vms,
            vm_gateway: gateway,
        })
    }

    /// Which workload answered one call of the client pod (curl in its
    /// network namespace, as `kubectl exec` would), if one did.
    fn call(&self) -> Option<String> {
        let out = self
            .east
            .kubelet
            .command("default", "sleep", "curl")?
            .args(["-sf", "-m", "3", &format!("http://{HOST}:9080/")])
            .output()
            .ok()?;
        let answer: Value = serde_json::from_slice(&out.stdout).ok()?;
        answer["service"].as_str().map(str::to_string)
    }

    /// Calls until `n` answers in a row are in `want`; the answers on the
    /// way.
    async fn until_only(
        &self,
        want: &[&str],
        n: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<Option<String>>> {
        let started = Instant::now();
        let (mut row, mut seen) = (0, Vec::new());
        while started.elapsed() < within {
            let answer = self.call();
            if answer.as_deref().is_some_and(|a| want.contains(&a)) {
                row += 1;
                if row == n {
                    return Ok(seen);
                }
            } else {
                row = 0;
            }
            seen.push(answer);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "no {n} answers in a row from {want:?} within {within:?}: {seen:?}\n{}",
            self.logs()
        )
    }

    /// The client's sidecar's and the control planes' logs, for failures.
    fn logs(&self) -> String {
        let east = &self.east;
        format!(
            "client's agent:\n{}\neast's node:\n{}\nsouth's node:\n{}\nsouth's gateway:\n{}\nthe VMs' gateway:\n{}",
            east.kubelet
                .log("default", "sleep", "trellis-agent")
                .unwrap_or_default(),
            east.system_log(
                CONTROLPLANE,
                "controlplane"
            ),
            self.south.system_log(
                CONTROLPLANE,
                "controlplane"
            ),
            self.south
                .system_log(GATEWAY, "eastwest"),
            self.vms.log(&self.vm_gateway, "gateway"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kubernetes_clusters_and_vms_are_one_mesh() -> anyhow::Result<()> {
    let why = unavailable()
        .or_else(trellis_e2e::netns::unavailable)
        .or((!helm::available()).then_some("helm-python-sdk is not installed"));
    if let Some(why) = why {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let s = Scenario::start().await?;

    // The client in east reaches south's pods through south's gateway,
    // and the VM through the VMs' gateway. (Its agent keeps its
    // connection to a gateway, which passes it whole to one pod: the
    // versions behind one gateway are told apart by subset, below.)
    let mut answered = BTreeSet::new();
    let started = Instant::now();
    while answered.len() < 2 && started.elapsed() < Duration::from_secs(90) {
        if let Some(a) = s.call() {
            answered.insert(if a == "reviews-v3" { "vm" } else { "south" });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, BTreeSet::from(["south", "vm"]), "{}", s.logs());
    let south_gateway = s.south.pod(SYSTEM, GATEWAY)?;
    let gateway_ip = s
        .south
        .kubelet
        .pod_ip(SYSTEM, &south_gateway)
        .context("south's gateway runs")?;
    let metrics = std::process::Command::new("curl")
        .args([
            "-sf",
            &format!("http://{gateway_ip}:15020/stats/prometheus"),
        ])
        .output()?;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains(HOST)
                && !l.ends_with(" 0")),
        "south's gateway carried the calls to its pods: {metrics}"
    );

    // A VirtualService applied with kubectl in the client's cluster moves
    // all traffic to one version: each of south's, through its gateway
    // (the subset is in the SNI), then the VM's.
    for version in ["v2", "v1", "v3"] {
        let vs = TO_SUBSET.replace("subset: SUBSET", &format!("subset: {version}"));
        s.east.api.kubectl_stdin(&["apply", "-f", "-"], Some(&vs))?;
        s.until_only(
            &[&format!("reviews-{version}")],
            10,
            Duration::from_secs(30),
        )
        .await?;
    }
    s.east
        .api
        .kubectl(&["delete", "virtualservice", "reviews", "-n", "default"])?;
    s.until_only(&["reviews-v1", "reviews-v2"], 1, Duration::from_secs(30))
        .await?;

    // South's pods scaled to zero: the traffic fails over to the VM.
    for d in ["reviews-v1", "reviews-v2"] {
        s.south.api.kubectl(&[
            "scale",
            &format!("deployment/{d}"),
            "--replicas=0",
            "-n",
            "default",
        ])?;
    }
    s.until_only(&["reviews-v3"], 20, Duration::from_secs(30))
        .await?;

    // The webhook refuses an invalid VirtualService at kubectl apply, with
    // the field's path.
    let bad = TO_SUBSET.replace("subset: SUBSET}", "subset: v3, port: {number: 70000}}");
    let err = s
        .south
        .api
        .kubectl_stdin(&["apply", "-f", "-"], Some(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("denied the request") && err.contains("port"),
        "{err}"
    );

    // South's genuine token for reviews, presented to east's node by an
    // agent on east's network: refused, saying it is another cluster's,
    // and no certificate is issued.
    let api = client(&Source::Kubeconfig(s.south.api.kubeconfig.clone())).await?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["trellis-ca".into()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(api, "default")
        .create_token_request("reviews", &PostParams::default(), &request)
        .await?
        .status
        .context("a TokenRequest answered without a token")?
        .token;
    let dir = tempfile::tempdir()?;
    let (token_file, roots, data) = (
        dir.path().join("token"),
        dir.path().join("roots.pem"),
        dir.path().join("data"),
    );
    std::fs::write(&token_file, token)?;
    let root = s.east.api.kubectl(&[
        "get",
        "configmap",
        "trellis-ca-root-cert",
        "-n",
        "default",
        "-o",
        r"jsonpath={.data.root-cert\.pem}",
    ])?;
    std::fs::write(&roots, root)?;
    let east_node = s.east.pod(SYSTEM, CONTROLPLANE)?;
    let east_node = s
        .east
        .kubelet
        .pod_ip(SYSTEM, &east_node)
        .context("east's node runs")?;
    let forger = s.east.net.lock().unwrap().host("forger")?;
    let out = forger
        .command(bin("trellis-agent"))
        .args(["--kube-token-file", token_file.to_str().unwrap()])
        .args(["--roots", roots.to_str().unwrap()])
        .args(["--control-plane", &format!("{east_node}:15012")])
        .args(["--data-dir", data.to_str().unwrap()])
        .args(["--name", "forger", "--capture", "none"])
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the token was issued by another Kubernetes cluster"),
        "{said}"
    );
    assert!(!data.join("cert-chain.pem").exists());

    // A pod of a namespace without the label runs without a sidecar.
    s.east.api.kubectl(&["create", "namespace", "plain"])?;
    let plain = SLEEP.replace("namespace: default", "namespace: plain");
    s.east
        .api
        .kubectl_stdin(&["apply", "-f", "-"], Some(&plain))?;
    let containers = s.east.api.kubectl(&[
        "get",
        "pod",
        "sleep",
        "-n",
        "plain",
        "-o",
        "jsonpath={.spec.containers[*].name} {.spec.initContainers[*].name}",
    ])?;
    assert_eq!(containers.trim(), "sleep", "{containers}");
    Ok(())
}
