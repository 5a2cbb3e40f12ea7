//! The tests' kubelet (with a scheduler, a kube-proxy and cluster DNS of
//! a kind): there is no kubelet on this machine, so a [`Kubelet`] plays
//! one for a [`KubeCluster`]. It registers a Node object (topology labels,
//! a Ready condition), binds the cluster's unscheduled pods to itself when
//! it schedules, and runs each pod bound to it as real processes: a
//! network namespace on the cluster's network ([`Net`]) is the pod, with
//! its own address; its init containers run in order, each to a
//! successful end, then its containers start. An image is a program of
//! this machine ([`Images`]); the container's `command` (its program
//! replaced by the image's) and `args` are run with its `env` (literal
//! values; the downward API's `metadata.name`, `metadata.namespace`,
//! `spec.serviceAccountName`, `spec.nodeName`, `status.podIP`; keys of
//! Secrets and ConfigMaps; `KUBERNETES_SERVICE_HOST|PORT`), and its
//! volumes (Secret, ConfigMap, emptyDir, projected service-account tokens
//! from the real TokenRequest API, Secrets and ConfigMaps; a
//! PersistentVolumeClaim is an empty directory) bind-mounted at their
//! `mountPath` in the container's own mount namespace (the empty
//! directory is made on the machine). It reports the pod's IP and
//! readiness (a TCP connect to the readiness probe's port, else running)
//! in the pod's status, and the pod's end (`Succeeded` or `Failed`) when
//! its containers have all exited; when the pod is deleted it stops its
//! processes and removes the object.
//!
//! Services: every pod's `/etc/hosts` (`/etc/netns/NETNS/hosts`, which
//! `ip netns exec` mounts) names each Service's cluster IP
//! (`NAME.NS.svc.cluster.local`, `NAME.NS.svc`, `NAME.NS`), and the
//! scheduling kubelet keeps an iptables NAT chain in the root namespace
//! (from PREROUTING for pods, from OUTPUT for the API server's webhook
//! calls) that sends each cluster IP and port to a ready endpoint (the
//! `kubernetes` Service to the API server), masquerading pod-to-pod
//! hairpins. What it does not do: restart containers, pull images,
//! limits, probes other than readiness by TCP, other volume kinds.
//!
//! The API server, the controller manager (ReplicaSets, StatefulSets,
//! EndpointSlices), the admission webhooks and TokenReview all see a real
//! pod life cycle.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, Endpoints, KeyToPath, Node, ObjectReference, Pod, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::kube::KubeCluster;
use crate::netns::{Host, Net};
use crate::process::Proc;

/// How often the kubelet looks at the pods.
const SYNC_EVERY: Duration = Duration::from_millis(200);

/// How long an init container may run.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The cluster's DNS domain in `/etc/hosts`.
const DOMAIN: &str = "cluster.local";

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
    /// Whether it binds the cluster's unscheduled pods to itself and
    /// sends the cluster IPs to their endpoints (one kubelet of a cluster
    /// does).
    pub schedules: bool,
}

/// A running kubelet; dropping it stops its pods' processes and removes
/// its NAT chain.
pub struct Kubelet {
    pub node: String,
    task: tokio::task::JoinHandle<()>,
    pods: Arc<Mutex<HashMap<String, RunningPod>>>,
    proxy: Option<Proxy>,
}

/// A pod this kubelet runs.
struct RunningPod {
    namespace: String,
    name: String,
    host: Host,
    containers: Vec<(String, Proc)>,
    /// Where its volumes and logs are.
    dir: tempfile::TempDir,
    /// Readiness: a port to connect to, or none (ready when running).
    probe: Option<u16>,
    /// Whether its end is its containers' (`restartPolicy` Never or
    /// OnFailure): then a pod whose containers all exited has ended.
    ends: bool,
    /// What its status last said.
    reported: Option<Reported>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reported {
    Running { ready: bool },
    Ended { succeeded: bool },
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
        let (gateway, subnet) = {
            let net = net.lock().unwrap_or_else(|e| e.into_inner());
            (net.gateway(), net.subnet())
        };
        register_node(&client, &node, gateway).await?;
        let proxy = if node.schedules {
            Some(Proxy::install(subnet)?)
        } else {
            None
        };
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let sync = Syncer {
            client,
            node: node.clone(),
            net,
            gateway,
            images,
            pods: pods.clone(),
            failed: Mutex::default(),
            api: (cluster.service_ip, cluster.port),
            proxy_chain: proxy.as_ref().map(|p| p.chain.clone()),
            last_rules: Mutex::default(),
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
            proxy,
        })
    }

    /// The address of pod `namespace/name`, once it runs here.
    pub fn pod_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.with_pod(namespace, name, |p| p.host.addr)
    }

    /// What container `container` of pod `namespace/name` printed so far.
    pub fn log(&self, namespace: &str, name: &str, container: &str) -> Option<String> {
        self.with_pod(namespace, name, |p| {
            std::fs::read_to_string(p.dir.path().join(format!("{container}.log")))
                .unwrap_or_default()
        })
    }

    fn with_pod<T>(&self, namespace: &str, name: &str, f: impl Fn(&RunningPod) -> T) -> Option<T> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.values()
            .find(|p| p.namespace == namespace && p.name == name)
            .map(f)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        self.pods.lock().unwrap_or_else(|e| e.into_inner()).clear();
        drop(self.proxy.take());
    }
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
    /// The Net's address in the root namespace (the API server's too).
    gateway: Ipv4Addr,
    images: Images,
    pods: Arc<Mutex<HashMap<String, RunningPod>>>,
    /// Pods that failed to start: not tried again.
    failed: Mutex<HashSet<String>>,
    /// The `kubernetes` Service's address, and the API server's port.
    api: (Ipv4Addr, u16),
    /// The NAT chain this kubelet keeps, if it schedules.
    proxy_chain: Option<String>,
    last_rules: Mutex<String>,
}

impl Syncer {
    /// One pass: schedule, start new pods, report their state, stop
    /// deleted ones, and bring the service names and NAT rules up to date.
    async fn once(&self) -> anyhow::Result<()> {
        let services: Vec<Service> = Api::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let hosts = hosts_entries(&services);
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
            if pod.metadata.deletion_timestamp.is_some() {
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
            if !self.running(&uid) {
                match self.run(&pod, &hosts).await {
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
        self.write_hosts(&hosts)?;
        if let Some(chain) = &self.proxy_chain {
            let endpoints: Vec<Endpoints> = Api::all(self.client.clone())
                .list(&ListParams::default())
                .await?
                .items;
            let rules = nat_rules(chain, &services, &endpoints, self.api, self.gateway);
            let mut last = self.last_rules.lock().unwrap_or_else(|e| e.into_inner());
            if *last != rules {
                iptables_restore(&rules)?;
                *last = rules;
            }
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
        // The API server answers a pod's `binding` with a Status, not the
        // Binding.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
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
        pods.create_subresource::<_, kube::core::Status>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
        .with_context(|| format!("binding pod {ns}/{name} to {}", self.node.name))?;
        Ok(())
    }

    /// Starts `pod`: its namespace, its volumes, its init containers to
    /// their end, its containers.
    async fn run(&self, pod: &Pod, hosts: &str) -> anyhow::Result<RunningPod> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().context("a pod without a spec")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-pod-{name}-"))
            .tempdir()?;
        let host = {
            let mut net = self.net.lock().unwrap_or_else(|e| e.into_inner());
            // Namespace names are short: a count, not the pod's name.
            static COUNT: AtomicU32 = AtomicU32::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            net.host(&format!("p{n}"))?
        };
        write_in_place(&hosts_file(&host), &pod_hosts(&host, &name, hosts))?;
        let sa = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let mounts = self.volumes(pod, &ns, &sa, dir.path()).await?;
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
            let mut proc = self.start_container(&host, c, &context).await?;
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
            containers.push((
                c.name.clone(),
                self.start_container(&host, c, &context).await?,
            ));
        }
        let probe = spec.containers.iter().find_map(readiness_port);
        let ends = matches!(spec.restart_policy.as_deref(), Some("Never" | "OnFailure"));
        Ok(RunningPod {
            namespace: ns,
            name,
            host,
            containers,
            dir,
            probe,
            ends,
            reported: None,
        })
    }

    /// Writes the pod's volumes under `dir`: (volume name, its directory).
    async fn volumes(
        &self,
        pod: &Pod,
        ns: &str,
        sa: &str,
        dir: &Path,
    ) -> anyhow::Result<HashMap<String, PathBuf>> {
        let mut mounts = HashMap::new();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.clone());
        for v in volumes.into_iter().flatten() {
            let vdir = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&vdir)?;
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                self.key_files(Keys::Secret, ns, &name, s.items.as_deref(), &vdir)
                    .await?;
            } else if let Some(c) = &v.config_map {
                self.key_files(Keys::ConfigMap, ns, &c.name, c.items.as_deref(), &vdir)
                    .await?;
            } else if let Some(projected) = &v.projected {
                for source in projected.sources.iter().flatten() {
                    if let Some(t) = &source.service_account_token {
                        let token = self
                            .token(ns, sa, pod, t.audience.clone(), t.expiration_seconds)
                            .await?;
                        write_file(&vdir, &t.path, token.as_bytes())?;
                    } else if let Some(s) = &source.secret {
                        self.key_files(Keys::Secret, ns, &s.name, s.items.as_deref(), &vdir)
                            .await?;
                    } else if let Some(c) = &source.config_map {
                        self.key_files(Keys::ConfigMap, ns, &c.name, c.items.as_deref(), &vdir)
                            .await?;
                    }
                }
            } else if v.empty_dir.is_none() && v.persistent_volume_claim.is_none() {
                bail!("volume {}: only Secret, ConfigMap, projected, emptyDir and PVC volumes run here", v.name);
            }
            mounts.insert(v.name.clone(), vdir);
        }
        Ok(mounts)
    }

    /// A Secret's or ConfigMap's keys as files in `dir` (or only
    /// `items`', at their paths).
    async fn key_files(
        &self,
        kind: Keys,
        ns: &str,
        name: &str,
        items: Option<&[KeyToPath]>,
        dir: &Path,
    ) -> anyhow::Result<()> {
        write_keys(dir, &self.keys(kind, ns, name).await?, items)
    }

    /// The data of Secret or ConfigMap `ns/name`.
    async fn keys(
        &self,
        kind: Keys,
        ns: &str,
        name: &str,
    ) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let c = self.client.clone();
        let data = match kind {
            Keys::Secret => Api::<Secret>::namespaced(c, ns).get(name).await.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }),
            Keys::ConfigMap => Api::<ConfigMap>::namespaced(c, ns)
                .get(name)
                .await
                .map(|m| {
                    m.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect()
                }),
        };
        data.with_context(|| format!("{kind:?} {ns}/{name}"))
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

    /// The value of a `secretKeyRef` or `configMapKeyRef`.
    async fn key_ref(&self, kind: Keys, ns: &str, name: &str, key: &str) -> anyhow::Result<String> {
        let data = self.keys(kind, ns, name).await?;
        let value = data
            .get(key)
            .with_context(|| format!("{kind:?} {ns}/{name} has no key {key}"))?;
        Ok(String::from_utf8_lossy(value).into_owned())
    }

    async fn start_container(
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
        // The command's program is the image's (a path inside the image
        // means nothing here).
        let argv: Vec<String> = std::iter::once(program.display().to_string())
            .chain(c.command.iter().flatten().skip(1).cloned())
            .chain(c.args.iter().flatten().cloned())
            .collect();
        // Bind-mount the volumes in a mount namespace of the container's
        // own (`ip netns exec` makes one), then exec it.
        let mut script = String::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(src) = pod.mounts.get(&m.name) else {
                bail!("container {}: no volume {}", c.name, m.name);
            };
            let src = match m.sub_path.as_deref() {
                Some(sub) if !sub.is_empty() => src.join(sub),
                _ => src.clone(),
            };
            let at = &m.mount_path;
            // A file (a subPath) is bound over a file, a directory over a
            // directory.
            let make = if src.is_dir() {
                format!("mkdir -p '{at}'")
            } else {
                format!("mkdir -p \"$(dirname '{at}')\" && touch '{at}'")
            };
            script.push_str(&format!(
                "{make} && mount --bind '{}' '{at}' && ",
                src.display()
            ));
        }
        script.push_str("exec \"$@\"");
        let mut cmd = host.command("sh");
        cmd.arg("-c").arg(script).arg("sh").args(&argv);
        let (api_ip, _) = self.api;
        cmd.env("KUBERNETES_SERVICE_HOST", api_ip.to_string())
            .env("KUBERNETES_SERVICE_PORT", "443");
        for e in c.env.iter().flatten() {
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    if let Some(f) = &from.field_ref {
                        match f.field_path.as_str() {
                            "metadata.name" => pod.name.to_string(),
                            "metadata.namespace" => pod.namespace.to_string(),
                            "spec.serviceAccountName" => pod.service_account.to_string(),
                            "spec.nodeName" => pod.node.to_string(),
                            "status.podIP" => pod.ip.to_string(),
                            other => bail!("env {} from {other:?}: not supported here", e.name),
                        }
                    } else if let Some(s) = &from.secret_key_ref {
                        self.key_ref(Keys::Secret, pod.namespace, &s.name, &s.key)
                            .await?
                    } else if let Some(m) = &from.config_map_key_ref {
                        self.key_ref(Keys::ConfigMap, pod.namespace, &m.name, &m.key)
                            .await?
                    } else {
                        bail!(
                            "env {}: only fieldRef, secretKeyRef and configMapKeyRef run here",
                            e.name
                        )
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

    /// Writes the pod's state in its status when it changes.
    async fn report(&self, uid: &str) -> anyhow::Result<()> {
        let (ns, name, ip, probe, exits, ends, was) = {
            let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = pods.get_mut(uid) else {
                return Ok(());
            };
            let mut exits = Vec::new();
            for (_, c) in &mut p.containers {
                exits.push(c.try_wait().ok().flatten());
            }
            let (ns, name) = (p.namespace.clone(), p.name.clone());
            (ns, name, p.host.addr, p.probe, exits, p.ends, p.reported)
        };
        let now = if ends && exits.iter().all(Option::is_some) {
            Reported::Ended {
                succeeded: exits.iter().flatten().all(|s| s.success()),
            }
        } else {
            let alive = exits.iter().all(Option::is_none);
            let ready = alive
                && match probe {
                    None => true,
                    Some(port) => tokio::net::TcpStream::connect(SocketAddr::from((ip, port)))
                        .await
                        .is_ok(),
                };
            Reported::Running { ready }
        };
        if was == Some(now) {
            return Ok(());
        }
        let (phase, ready) = match now {
            Reported::Running { ready } => ("Running", ready),
            Reported::Ended { succeeded: true } => ("Succeeded", false),
            Reported::Ended { succeeded: false } => ("Failed", false),
        };
        let flag = if ready { "True" } else { "False" };
        let status = json!({"status": {
            "phase": phase,
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "hostIP": self.gateway.to_string(),
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
            p.reported = Some(now);
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

    /// Every running pod's `/etc/hosts`, with the current services.
    fn write_hosts(&self, hosts: &str) -> anyhow::Result<()> {
        let pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        for p in pods.values() {
            let path = hosts_file(&p.host);
            let text = pod_hosts(&p.host, &p.name, hosts);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                write_in_place(&path, &text)?;
            }
        }
        Ok(())
    }
}

/// Where keys come from: a Secret or a ConfigMap.
#[derive(Clone, Copy, Debug)]
enum Keys {
    Secret,
    ConfigMap,
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

/// The port a container's readiness probe connects to.
fn readiness_port(c: &Container) -> Option<u16> {
    let p = c.readiness_probe.as_ref()?;
    let port = p
        .http_get
        .as_ref()
        .map(|h| h.port.clone())
        .or_else(|| p.tcp_socket.as_ref().map(|t| t.port.clone()))?;
    match port {
        IntOrString::Int(n) => u16::try_from(n).ok(),
        IntOrString::String(named) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(&named))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// `data`'s keys as files in `dir`, or only `items`' at their paths.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> anyhow::Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .with_context(|| format!("no key {}", item.key))?;
                write_file(dir, &item.path, value)?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(dir, key, value)?;
            }
        }
    }
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
}

/// The `/etc/hosts` lines naming each Service's cluster IP.
fn hosts_entries(services: &[Service]) -> String {
    let mut out = String::new();
    for s in services {
        let ip = s.spec.as_ref().and_then(|s| s.cluster_ip.clone());
        let Some(ip) = ip.filter(|ip| ip.parse::<Ipv4Addr>().is_ok()) else {
            continue;
        };
        let name = s.metadata.name.clone().unwrap_or_default();
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        out.push_str(&format!(
            "{ip} {name}.{ns}.svc.{DOMAIN} {name}.{ns}.svc {name}.{ns}\n"
        ));
    }
    out
}

fn pod_hosts(host: &Host, pod: &str, services: &str) -> String {
    format!(
        "127.0.0.1 localhost\n::1 localhost\n{} {pod}\n{services}",
        host.addr
    )
}

/// The `/etc/hosts` that `ip netns exec` mounts for `host`.
fn hosts_file(host: &Host) -> PathBuf {
    Path::new("/etc/netns").join(&host.netns).join("hosts")
}

/// Rewrites `path` without replacing the file: it is bind-mounted into
/// running containers, which would keep seeing a replaced file's old
/// content.
fn write_in_place(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The scheduling kubelet's NAT chain in the root namespace, jumped to
/// from PREROUTING and OUTPUT for what is sent to a cluster IP, and a
/// masquerade of hairpins back onto the Net; removed on drop.
struct Proxy {
    chain: String,
    /// The iptables arguments of the rules added outside the chain.
    jumps: Vec<Vec<String>>,
}

impl Proxy {
    fn install(subnet: String) -> anyhow::Result<Proxy> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let chain = format!(
            "TRK{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        iptables(&["-t", "nat", "-N", &chain])?;
        let mut proxy = Proxy {
            chain: chain.clone(),
            jumps: Vec::new(),
        };
        let comment = ["-m", "comment", "--comment", chain.as_str()];
        for hook in ["PREROUTING", "OUTPUT"] {
            proxy.add(&[&["-t", "nat", "-I", hook], &comment[..], &["-j", &chain]].concat())?;
        }
        proxy.add(
            &[
                &["-t", "nat", "-I", "POSTROUTING"],
                &comment[..],
                &["-s", &subnet, "-d", &subnet],
                &["-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"],
            ]
            .concat(),
        )?;
        Ok(proxy)
    }

    fn add(&mut self, args: &[&str]) -> anyhow::Result<()> {
        iptables(args)?;
        self.jumps
            .push(args.iter().map(|a| a.to_string()).collect());
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for rule in self.jumps.drain(..) {
            let deleted: Vec<String> = rule
                .iter()
                .map(|a| {
                    if a == "-I" {
                        "-D".to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            let deleted: Vec<&str> = deleted.iter().map(String::as_str).collect();
            let _ = iptables(&deleted);
        }
        let _ = iptables(&["-t", "nat", "-F", &self.chain]);
        let _ = iptables(&["-t", "nat", "-X", &self.chain]);
    }
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("iptables").args(args).output()?;
    if !out.status.success() {
        bail!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn iptables_restore(rules: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The chain's content (pure): each cluster IP and port to a ready
/// endpoint, chosen at random; the `kubernetes` Service to the API
/// server at `gateway`.
fn nat_rules(
    chain: &str,
    services: &[Service],
    endpoints: &[Endpoints],
    (api_ip, api_port): (Ipv4Addr, u16),
    gateway: Ipv4Addr,
) -> String {
    let mut out = format!("*nat\n:{chain} - [0:0]\n");
    out.push_str(&format!(
        "-A {chain} -d {api_ip}/32 -p tcp --dport 443 -j DNAT --to-destination {gateway}:{api_port}\n"
    ));
    for s in services {
        let (ns, name) = (
            s.metadata.namespace.as_deref().unwrap_or_default(),
            s.metadata.name.as_deref().unwrap_or_default(),
        );
        if (ns, name) == ("default", "kubernetes") {
            continue;
        }
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| ip.parse::<Ipv4Addr>().is_ok())
        else {
            continue;
        };
        let ep = endpoints.iter().find(|e| {
            e.metadata.namespace.as_deref() == Some(ns) && e.metadata.name.as_deref() == Some(name)
        });
        for port in spec.ports.iter().flatten() {
            let proto = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
            // Ready addresses, with the endpoint port of this port's name.
            let targets: Vec<String> = ep
                .into_iter()
                .flat_map(|e| e.subsets.iter().flatten())
                .flat_map(|subset| {
                    let target = subset
                        .ports
                        .iter()
                        .flatten()
                        .find(|p| p.name == port.name)
                        .map(|p| p.port);
                    subset
                        .addresses
                        .iter()
                        .flatten()
                        .filter_map(move |a| target.map(|t| format!("{}:{t}", a.ip)))
                })
                .collect();
            let n = targets.len();
            for (i, target) in targets.iter().enumerate() {
                // The i-th of n takes 1/(n-i) of what is left.
                let pick = if i + 1 < n {
                    format!(
                        "-m statistic --mode random --probability {:.5} ",
                        1.0 / (n - i) as f64
                    )
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "-A {chain} -d {ip}/32 -p {proto} --dport {} {pick}-j DNAT --to-destination {target}\n",
                    port.port
                ));
            }
        }
    }
    out.push_str("COMMIT\n");
    out
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
