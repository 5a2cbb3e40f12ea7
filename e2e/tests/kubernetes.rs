//! Trellis's Kubernetes client against a real `kube-apiserver` v1.20
//! (e2e/src/kube.rs; the binaries are built once by e2e/kube/build.sh).
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{Api, PostParams};
use k8s_openapi::api::core::v1::Namespace;
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_e2e::kubelet::{Images, Kubelet, NodeSpec};
use trellis_e2e::netns::Net;
use trellis_kubernetes::client::{client, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_writes_and_reads_a_real_api_server_from_a_kubeconfig() -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let cluster = KubeCluster::start("smoke", Options::default())?;
    let c = client(&Source::Kubeconfig(cluster.kubeconfig.clone())).await?;
    let namespaces: Api<Namespace> = Api::all(c);
    let name = format!("trellis-smoke-{}", std::process::id());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    namespaces.create(&PostParams::default(), &ns).await?;
    // Read back by another client: kubectl.
    let listed = cluster.kubectl(&["get", "namespace", &name, "-o", "name"])?;
    assert_eq!(listed.trim(), format!("namespace/{name}"));
    // And a kubeconfig that does not exist is an error naming it.
    let Err(err) = client(&Source::Kubeconfig("/nonexistent/kubeconfig".into())).await else {
        panic!("a client from a kubeconfig that does not exist");
    };
    assert!(
        format!("{err:#}").contains("/nonexistent/kubeconfig"),
        "{err:#}"
    );
    Ok(())
}

/// The tests' kubelet (e2e/src/kubelet.rs) runs a Deployment's pods as
/// processes in network namespaces: the real controller manager makes the
/// pods and their EndpointSlice from what it reports, and scaling down
/// stops a pod's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_kubelet_runs_a_deployment_that_the_controller_manager_sees() -> anyhow::Result<()>
{
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let cluster = KubeCluster::start(
        "kubelet",
        Options {
            controller_manager: true,
            ..Options::default()
        },
    )?;
    let net = Arc::new(Mutex::new(Net::new("kubelet")?));
    let images = Images::from([
        ("trellis/echo".to_string(), trellis_e2e::bin("trellis-echo")),
        ("shell".to_string(), PathBuf::from("/bin/sh")),
    ]);
    let node = NodeSpec {
        name: "node-a".into(),
        region: "r1".into(),
        zone: "z1".into(),
        subzone: String::new(),
        schedules: true,
    };
    let kubelet = Kubelet::start(&cluster, node, net.clone(), images).await?;
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(ECHO))?;

    // Two pods run, ready, with addresses the root namespace reaches.
    let slice_addresses = || -> anyhow::Result<Vec<String>> {
        let out = cluster.kubectl(&[
            "get",
            "endpointslices.v1beta1.discovery.k8s.io",
            "-l",
            "kubernetes.io/service-name=echo",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}",
        ])?;
        let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        v.sort();
        Ok(v)
    };
    let ready = trellis_e2e::wait_for(Duration::from_secs(60), "two ready endpoints", || async {
        slice_addresses().ok().filter(|v| v.len() == 2)
    })
    .await?;
    for ip in &ready {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("http://{ip}:9080/")])
            .output()?;
        assert!(out.status.success(), "curl {ip}: {:?}", out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(report["service"], "echo", "{report}");
    }
    let pods = cluster.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=echo",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    for pod in pods.split_whitespace() {
        assert!(kubelet.pod_ip("default", pod).is_some(), "{pod} runs here");
    }

    // Scaled down: one pod goes, its processes with it, and so does its
    // endpoint.
    cluster.kubectl(&["scale", "deployment/echo", "--replicas=1"])?;
    let left = trellis_e2e::wait_for(Duration::from_secs(60), "one ready endpoint", || async {
        slice_addresses().ok().filter(|v| v.len() == 1)
    })
    .await?;
    let gone: Vec<&String> = ready.iter().filter(|ip| !left.contains(ip)).collect();
    assert_eq!(gone.len(), 1, "{ready:?} → {left:?}");
    trellis_e2e::wait_for(
        Duration::from_secs(20),
        "the removed pod's server stopped",
        || async {
            let refused = std::net::TcpStream::connect_timeout(
                &format!("{}:9080", gone[0]).parse().ok()?,
                Duration::from_secs(1),
            )
            .is_err();
            refused.then_some(())
        },
    )
    .await?;

    // A pod calls the Service by name (its /etc/hosts, then the kubelet's
    // NAT to an endpoint) and the API server in-cluster (the `kubernetes`
    // Service, the service account's token and CA mounted from its
    // Secret), then ends: Succeeded.
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(CLIENT))?;
    trellis_e2e::wait_for(
        Duration::from_secs(60),
        "the client pod succeeded",
        || async {
            let phase = cluster
                .kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"])
                .ok()?;
            match phase.as_str() {
                "Succeeded" => Some(()),
                "Failed" => panic!(
                    "client failed: {:?}",
                    kubelet.log("default", "client", "client")
                ),
                _ => None,
            }
        },
    )
    .await?;
    let log = kubelet
        .log("default", "client", "client")
        .unwrap_or_default();
    assert!(log.contains("\"service\":\"echo\""), "{log}");
    assert!(log.contains("\"kind\": \"Service\""), "{log}");
    Ok(())
}

/// A pod that calls echo by its Service's name and reads the Service from
/// the API server with its service account (allowed to by `view`).
const CLIENT: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: default-view, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: default, namespace: default}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  restartPolicy: Never
  containers:
  - name: client
    image: shell
    command:
    - /bin/sh
    - -c
    - |
      set -e
      curl -sf --max-time 5 http://echo.default.svc.cluster.local:9080/
      sa=/var/run/secrets/kubernetes.io/serviceaccount
      curl -sf --max-time 5 --cacert $sa/ca.crt -H "Authorization: Bearer $(cat $sa/token)" \
        https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/default/services/echo
"#;

/// Echo as a Deployment and its Service; an init container checks that
/// the projected token is mounted where the container asked.
const ECHO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      initContainers:
      - name: token-check
        image: shell
        command: [/bin/sh, -c, 'test -s /var/run/secrets/tokens/trellis-ca/token']
        volumeMounts: [{name: trellis-token, mountPath: /var/run/secrets/tokens/trellis-ca}]
      containers:
      - name: echo
        image: trellis/echo:dev
        args: [--http, 0.0.0.0:9080, --name, echo]
        ports: [{name: http, containerPort: 9080}]
        readinessProbe: {tcpSocket: {port: http}}
      volumes:
      - name: trellis-token
        projected:
          sources: [{serviceAccountToken: {audience: trellis-ca, path: token, expirationSeconds: 3600}}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 9080, protocol: TCP}]
"#;
