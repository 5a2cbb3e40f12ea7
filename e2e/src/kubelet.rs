//! The tests' kubelet (and scheduler): there is no kubelet on this
//! machine, so a [`Kubelet`] plays one for a [`KubeCluster`]. It registers
//! a Node object (with topology labels and a Ready condition), binds the
//! cluster's unscheduled pods to itself when it schedules, and runs each
//! pod bound to it as real processes: a network namespace on the
//! cluster's network ([`Net`]) is the pod, with its own address; its init
//! containers run in order, each to a successful end, then its containers
//! start. An image is a program of this machine ([`Images`]); the
//! container's `command` (or the image's program) and `args` are run with
//! its `env` (literal values, and the downward API's `metadata.name`,
//! `metadata.namespace`, `spec.serviceAccountName`, `spec.nodeName`,
//! `status.podIP`), and its projected service-account token volumes are
//! real tokens from the TokenRequest API, bound to the pod, bind-mounted
//! at their `mountPath` in the container's own mount namespace. It then
//! reports the pod's IP and readiness (a TCP connect to the first port of
//! a readiness probe, else running) in the pod's status, and, when the
//! pod is deleted, stops its processes and removes the object. What it
//! does not do: restart containers, pull images, limits, other volumes.
//!
//! The API server, the controller manager (EndpointSlices, ReplicaSets),
//! the admission webhooks and TokenReview all see a real pod life cycle.
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Binding, Container, Node, ObjectReference, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::kube::KubeCluster;
use crate::netns::{Host, Net};
use crate::process::Proc;

/// How often the kubelet looks at the pods.
const SYNC_EVERY: Duration = Duration::from_millis(200);

/// How long an init container may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Programs by image name: an image `NAME[:TAG]` runs `images[NAME]`.
pub type Images = HashMap<String, PathBuf>;

/// The Node a kubelet registers.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    /// `topology.kubernetes.io/region`, `zone` and
    /// `topology.istio.io/subzone` labels, where not empty.
    pub region: String,
    pub zone: String,
    pub subzone: String,
    /// Whether it binds the cluster's unscheduled pods to itself.
    pub schedules: bool,
}

/// A running kubelet; dropping it stops its pods' processes.
pub struct Kubelet {
    pub node: String,
    task: tokio::task::JoinHandle<()>,
    pods: Arc<Mutex<HashMap<String, RunningPod>>>,
}

/// A pod this kubelet runs.
struct RunningPod {
    namespace: String,
    name: String,
    host: Host,
    containers: Vec<Proc>,
    /// Where its token volumes and logs are.
    _dir: tempfile::TempDir,
    /// Readiness: a port to connect to, or none (ready when running).
    probe: Option<u16>,
    ready: Option<bool>,
}

impl Kubelet {
    /// Registers the Node and starts syncing the pods bound to it.
    pub async fn start(
        cluster: &KubeCluster,
        node: NodeSpec,
        net: Arc<Mutex<Net>>,
        images: Images,
    ) -> anyhow::Result<Kubelet> {
        let client = trellis_kubernetes::client::client(
            &trellis_kubernetes::client::Source::Kubeconfig(cluster.kubeconfig.clone()),
        )
        .await?;
        register_node(&client, &node, net_gateway(&net)).await?;
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let sync = Syncer {
            client,
            node: node.clone(),
            net,
            images,
            pods: pods.clone(),
            failed: Mutex::default(),
        };
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = sync.once().await {
                    eprintln!("kubelet {}: {e:#}", sync.node.name);
                }
                tokio::time::sleep(SYNC_EVERY).await;
            }
        });
        Ok(Kubelet {
            node: node.name,
            task,
            pods,
        })
    }

    /// The address of pod `namespace/name`, once it runs here.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.values()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(|p| p.host.addr)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.clear();
    }
}

fn net_gateway(net: &Arc<Mutex<Net>>) -> Ipv4Addr {
    net.lock().unwrap_or_else(|e| e.into_inner()).gateway()
}

async fn register_node(
    client: &kube::Client,
    spec: &NodeSpec,
    addr: Ipv4Addr,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), spec.name.clone())]);
    for (key, value) in [
        ("topology.kubernetes.io/region", &spec.region),
        ("topology.kubernetes.io/zone", &spec.zone),
        ("topology.istio.io/subzone", &spec.subzone),
    ] {
        if !value.is_empty() {
            labels.insert(key.to_string(), value.clone());
        }
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": spec.name, "labels": labels},
    }))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating Node {}", spec.name))?;
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the tests' kubelet"}],
        "addresses": [{"type": "InternalIP", "address": addr.to_string()}],
    }});
    nodes
        .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("setting Node {}'s status", spec.name))?;
    Ok(())
}

/// What the sync loop works with.
struct Syncer {
    client: kube::Client,
    node: NodeSpec,
    net: Arc<Mutex<Net>>,
    images: Images,
    pods: Arc<Mutex<HashMap<String, RunningPod>>>,
    /// Pods that failed to start: not tried again.
    failed: Mutex<std::collections::HashSet<String>>,
}

impl Syncer {
    /// One pass: schedule, start new pods, report readiness, stop deleted
    /// ones.
    async fn once(&self) -> anyhow::Result<()> {
        let all: Api<Pod> = Api::all(self.client.clone());
        let listed = all.list(&ListParams::default()).await?.items;
        let mut seen = Vec::new();
        for pod in listed {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            match bound {
                None if self.node.schedules => {
                    self.bind(&ns, &name).await?;
                    continue;
                }
                Some(n) if n == self.node.name => {}
                _ => continue,
            }
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let running = self.running(&uid);
            if deleting {
                self.stop(&uid);
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            let failed = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&uid);
            if failed {
                continue;
            }
            seen.push(uid.clone());
            if !running {
                match self.run(&pod).await {
                    Ok(p) => {
                        self.pods
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(uid.clone(), p);
                    }
                    Err(e) => {
                        // Not tried again: a pod that failed stays failed.
                        self.failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(uid.clone());
                        seen.pop();
                        self.report_failed(&ns, &name, &format!("{e:#}")).await?;
                        continue;
                    }
                }
            }
            self.report(&uid).await?;
        }
        // Pods gone from the API server: stop them.
        let gone: Vec<String> = {
            let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            pods.keys().filter(|k| !seen.contains(k)).cloned().collect()
        };
        for uid in gone {
            self.stop(&uid);
        }
        Ok(())
    }

    fn running(&self, uid: &str) -> bool {
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid)
    }

    fn stop(&self, uid: &str) {
        let pod = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        drop(pod);
    }

    async fn bind(&self, ns: &str, name: &str) -> anyhow::Result<()> {
        let bindings: Api<Binding> = Api::namespaced(self.client.clone(), ns);
        let binding = Binding {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.name.clone()),
                ..Default::default()
            },
        };
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .with_context(|| format!("binding pod {ns}/{name} to {}", self.node.name))?;
        Ok(())
    }

    /// Starts `pod`: its namespace, its init containers to their end, its
    /// containers.
    async fn run(&self, pod: &Pod) -> anyhow::Result<RunningPod> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().context("a pod without a spec")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-pod-{name}-"))
            .tempdir()?;
        let host = {
            let mut net = self.net.lock().unwrap_or_else(|e| e.into_inner());
            // Namespace names are short: a count, not the pod's name.
            static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            net.host(&format!("p{n}"))?
        };
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let mounts = self.token_volumes(pod, &ns, &sa, dir.path()).await?;
        let context = PodContext {
            namespace: &ns,
            name: &name,
            service_account: &sa,
            node: &self.node.name,
            ip: host.addr,
            mounts: &mounts,
            dir: dir.path(),
        };
        for c in spec.init_containers.iter().flatten() {
            let mut proc = self.start_container(&host, c, &context)?;
            let status = wait_exit(&mut proc, INIT_TIMEOUT).await?;
            if !status.success() {
                bail!(
                    "init container {} exited with {status}: {}",
                    c.name,
                    proc.output()
                );
            }
        }
        let mut containers = Vec::new();
        for c in &spec.containers {
            containers.push(self.start_container(&host, c, &context)?);
        }
        let probe = spec.containers.iter().find_map(|c| {
            let p = c.readiness_probe.as_ref()?;
            let port = p
                .http_get
                .as_ref()
                .map(|h| h.port.clone())
                .or_else(|| p.tcp_socket.as_ref().map(|t| t.port.clone()))?;
            match port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => {
                    u16::try_from(n).ok()
                }
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(named) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(&named))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            }
        });
        Ok(RunningPod {
            namespace: ns,
            name,
            host,
            containers,
            _dir: dir,
            probe,
            ready: None,
        })
    }

    /// The pod's projected service-account token volumes, written from
    /// the TokenRequest API: (volume name, directory holding its files).
    async fn token_volumes(
        &self,
        pod: &Pod,
        ns: &str,
        sa: &str,
        dir: &Path,
    ) -> anyhow::Result<HashMap<String, PathBuf>> {
        let mut mounts = HashMap::new();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone());
        for v in volumes.into_iter().flatten() {
            let Some(projected) = &v.projected else {
                continue;
            };
            let vdir = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&vdir)?;
            for source in projected.sources.iter().flatten() {
                let Some(t) = &source.service_account_token else {
                    continue;
                };
                let token = self
                    .token(ns, sa, pod, t.audience.clone(), t.expiration_seconds)
                    .await?;
                std::fs::write(vdir.join(&t.path), token)?;
            }
            mounts.insert(v.name.clone(), vdir);
        }
        Ok(mounts)
    }

    async fn token(
        &self,
        ns: &str,
        sa: &str,
        pod: &Pod,
        audience: Option<String>,
        expiration: Option<i64>,
    ) -> anyhow::Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.into_iter().collect(),
                expiration_seconds: Some(expiration.unwrap_or(3600)),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let answer: TokenRequest = accounts
            .create_subresource("token", sa, &PostParams::default(), &request)
            .await
            .with_context(|| format!("a token for service account {ns}/{sa}"))?;
        answer
            .status
            .map(|s| s.token)
            .context("a TokenRequest answered without a token")
    }

    fn start_container(
        &self,
        host: &Host,
        c: &Container,
        pod: &PodContext<'_>,
    ) -> anyhow::Result<Proc> {
        let image = c.image.clone().unwrap_or_default();
        let image_name = image.split(':').next().unwrap_or_default();
        let program = self
            .images
            .get(image_name)
            .with_context(|| format!("no program for image {image} (container {})", c.name))?;
        let argv: Vec<String> = match &c.command {
            Some(cmd) if !cmd.is_empty() => {
                // The command's program is the image's (an absolute path
                // inside the image means nothing here).
                let mut v = vec![program.display().to_string()];
                v.extend(cmd.iter().skip(1).cloned());
                v
            }
            _ => vec![program.display().to_string()],
        };
        let argv: Vec<String> = argv
            .into_iter()
            .chain(c.args.iter().flatten().cloned())
            .collect();
        // Bind-mount the token volumes in a mount namespace of the
        // container's own (`ip netns exec` makes one), then exec it.
        let mut script = String::new();
        for m in c.volume_mounts.iter().flatten() {
            if let Some(src) = pod.mounts.get(&m.name) {
                script.push_str(&format!(
                    "mkdir -p '{0}' && mount --bind '{1}' '{0}' && ",
                    m.mount_path,
                    src.display()
                ));
            }
        }
        script.push_str("exec \"$@\"");
        let mut cmd = host.command("sh");
        cmd.arg("-c").arg(script).arg("sh").args(&argv);
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    let path = from
                        .field_ref
                        .as_ref()
                        .map(|f| f.field_path.as_str())
                        .unwrap_or_default();
                    match path {
                        "metadata.name" => pod.name.to_string(),
                        "metadata.namespace" => pod.namespace.to_string(),
                        "spec.serviceAccountName" => pod.service_account.to_string(),
                        "spec.nodeName" => pod.node.to_string(),
                        "status.podIP" => pod.ip.to_string(),
                        other => bail!("env {} from {other:?}: not supported here", e.name),
                    }
                }
                (None, None) => String::new(),
            };
            cmd.env(&e.name, value);
        }
        Proc::spawn(
            &format!("{}/{} {}", pod.namespace, pod.name, c.name),
            &mut cmd,
            &pod.dir.join(format!("{}.log", c.name)),
        )
    }

    /// Writes the pod's IP and readiness in its status when they change.
    async fn report(&self, uid: &str) -> anyhow::Result<()> {
        let (ns, name, ip, probe, alive, was) = {
            let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = pods.get_mut(uid) else {
                return Ok(());
            };
            let alive = p.containers.iter_mut().all(|c| c.check_running().is_ok());
            let (ns, name) = (p.namespace.clone(), p.name.clone());
            (ns, name, p.host.addr, p.probe, alive, p.ready)
        };
        let ready = alive
            && match probe {
                None => true,
                Some(port) => tokio::net::TcpStream::connect(SocketAddr::from((ip, port)))
                    .await
                    .is_ok(),
            };
        if was == Some(ready) {
            return Ok(());
        }
        let flag = if ready { "True" } else { "False" };
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "hostIP": net_gateway(&self.net).to_string(),
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
        }});
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("setting pod {ns}/{name}'s status"))?;
        if let Some(p) = self
            .pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(uid)
        {
            p.ready = Some(ready);
        }
        Ok(())
    }

    async fn report_failed(&self, ns: &str, name: &str, why: &str) -> anyhow::Result<()> {
        eprintln!("kubelet {}: pod {ns}/{name} failed: {why}", self.node.name);
        let status =
            json!({"status": {"phase": "Failed", "reason": "TestKubelet", "message": why}});
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }
}

/// What a container's environment and mounts come from.
struct PodContext<'a> {
    namespace: &'a str,
    name: &'a str,
    service_account: &'a str,
    node: &'a str,
    ip: Ipv4Addr,
    mounts: &'a HashMap<String, PathBuf>,
    dir: &'a Path,
}

/// Waits for an init container to end.
async fn wait_exit(proc: &mut Proc, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = proc.try_wait()? {
            return Ok(status);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("still running after {timeout:?}: {}", proc.output());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
