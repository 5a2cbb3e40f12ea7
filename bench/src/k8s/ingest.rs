//! `trellis-bench kube-ingest`: `--services` Services and `--pods` pods
//! created as fast as east's API server takes them (`--in-flight` calls
//! at a time), until every agent of west has every Service with all its
//! endpoints.
//!
//! Per Service, one worker creates the Service, its pods (bound to one of
//! ten Nodes with topology labels) and writes each pod's status as a
//! kubelet would (Running, Ready, a pod IP); with `--slices bench` (the
//! default) it then writes the Service's EndpointSlices (v1beta1, at most
//! 100 endpoints each, labelled and filled as the controller manager's
//! EndpointSlice controller would); with `--slices kcm` the real
//! `kube-controller-manager` makes them from the pods instead (at its
//! default client rate, 20 requests per second, as in a real cluster).
//!
//! Measured: from the first create to the last create, and to each west
//! agent having it all (its admin `/clusters`, polled: every Service's
//! cluster with all its endpoints); CPU seconds (utime + stime) of west's
//! and east's nodes over the run, their RSS before and peak RSS (VmHWM).
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::StatusCode;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use trellis_e2e::kube::{KubeCluster, Options};
use trellis_e2e::loopback::Block;
use trellis_e2e::Proc;
use trellis_kubernetes::client::{client, Source};

use super::{Mesh, PACKAGES};
use crate::flags::Build;
use crate::net::{wait_http_ok, Client};
use crate::process::{status_kib, tail, Usage};
use crate::table::render;

/// The loopback series of the bed's block: `127.64.N.0/24`.
const SERIES: u8 = 64;
/// Host numbers in the block: east's node, then the agents.
const EAST_NODE: u8 = 1;
const FIRST_AGENT: u8 = 10;
const NAMESPACE: &str = "bench";
const NODES: usize = 10;
/// The most endpoints the EndpointSlice controller puts in one slice
/// (`--max-endpoints-per-slice`' default).
const PER_SLICE: usize = 100;
/// How long the whole ingest may take before the run fails.
const TIMEOUT: Duration = Duration::from_secs(1800);

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Slices {
    /// Written by the bench, as the controller manager would.
    Bench,
    /// Made by the real kube-controller-manager from the pods.
    Kcm,
}

#[derive(clap::Args)]
pub struct Args {
    /// Services created in east.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Pods created in east, spread evenly over the Services.
    #[arg(long, default_value_t = 10000)]
    pods: usize,
    /// Agents of west streaming from west's node.
    #[arg(long, default_value_t = 3)]
    agents: u8,
    /// Who writes the EndpointSlices.
    #[arg(long, value_enum, default_value_t = Slices::Bench)]
    slices: Slices,
    /// Calls to east's API server in flight at a time.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    #[command(flatten)]
    build: Build,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.services == 0 || self.pods < self.services {
            bail!("--services must be at least 1, and --pods at least --services");
        }
        if self.pods > 60_000 {
            bail!("--pods: at most 60000 (their IPs are in 10.200.0.0/16)");
        }
        if self.agents == 0 || self.agents > 200 {
            bail!("--agents: from 1 to 200");
        }
        if self.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        Ok(())
    }

    /// The pods of Service `s`: `j` with `j % services == s`.
    fn pods_of(&self, s: usize) -> impl Iterator<Item = usize> {
        (s..self.pods).step_by(self.services)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    if let Some(why) = trellis_e2e::kube::unavailable() {
        bail!("cannot run an API server here: {why}");
    }
    args.build.binaries(&PACKAGES)?;
    let listeners: Vec<(u8, u16)> = (0..args.agents)
        .flat_map(|a| crate::agent::PORTS.map(|p| (FIRST_AGENT + a, p)))
        .collect();
    let block = Block::take(SERIES, &listeners)?;
    eprintln!("starting east's API server, west's and east's nodes ...");
    let kube = KubeCluster::start(
        "bench-ingest",
        Options {
            controller_manager: args.slices == Slices::Kcm,
            ..Default::default()
        },
    )?;
    let mesh = Mesh::start(kube, &block.ip(EAST_NODE).to_string()).await?;
    let mut agents = Vec::new();
    for a in 0..args.agents {
        let ip = block.ip(FIRST_AGENT + a);
        let mut p = mesh.agent(&format!("agent-{a}"), &ip.to_string(), &[])?;
        wait_http_ok(SocketAddr::new(ip.into(), 15000), "/ready", &mut p).await?;
        agents.push(p);
    }
    let kube = client(&Source::Kubeconfig(mesh.kube.kubeconfig.clone())).await?;
    prepare(&kube).await?;
    // East's discovery has listed the (still empty) cluster.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let nodes = mesh.nodes();
    let pids: Vec<u32> = nodes.iter().filter_map(|(_, p)| *p).collect();
    if pids.len() != nodes.len() {
        bail!("a control-plane node is not running");
    }
    let before: Vec<(Usage, u64)> = pids
        .iter()
        .map(|&p| Ok((Usage::of(p)?, status_kib(p, "VmRSS")?)))
        .collect::<anyhow::Result<_>>()?;

    eprintln!(
        "creating {} Services and {} pods (EndpointSlices by {}) ...",
        args.services,
        args.pods,
        match args.slices {
            Slices::Bench => "the bench",
            Slices::Kcm => "kube-controller-manager",
        }
    );
    let args = Arc::new(args);
    let t0 = Instant::now();
    let created = create_all(&kube, args.clone());
    let agents_done = wait_agents(&block, &args, &agents, t0);
    let (created, agents_done) = tokio::join!(created, agents_done);
    let created = created?;
    let agents_done = agents_done?;

    let mut rows = vec![[
        "measured".to_string(),
        "time from first create".into(),
        "".into(),
    ]];
    rows.push([
        "east's API server: every create done".into(),
        secs(created),
        format!("{} calls", calls(&args)),
    ]);
    for (a, t) in agents_done.iter().enumerate() {
        rows.push([
            format!("west agent {a}: all services and endpoints"),
            secs(*t),
            "".into(),
        ]);
    }
    println!(
        "trellis-bench kube-ingest: {} Services, {} pods in east (kube-apiserver v1.20, \
         slices by {}), {} agents in west (built {})",
        args.services,
        args.pods,
        match args.slices {
            Slices::Bench => "the bench",
            Slices::Kcm => "kube-controller-manager",
        },
        args.agents,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    print!("{}", render(&rows));
    let mut rows = vec![[
        "control-plane node".to_string(),
        "CPU s".into(),
        "RSS before".into(),
        "peak RSS".into(),
    ]];
    for (((name, _), &pid), (usage, rss)) in nodes.iter().zip(&pids).zip(&before) {
        let cpu = Usage::of(pid)?.since(*usage).cpu;
        rows.push([
            name.to_string(),
            format!("{:.1}", cpu.as_secs_f64()),
            mib(*rss),
            mib(status_kib(pid, "VmHWM")?),
        ]);
    }
    print!("{}", render(&rows));
    drop(agents);
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// The API calls of the run: per Service its create and slices, per pod
/// its create and status.
fn calls(args: &Args) -> usize {
    let slices: usize = (0..args.services)
        .map(|s| match args.slices {
            Slices::Bench => args.pods_of(s).count().div_ceil(PER_SLICE),
            Slices::Kcm => 0,
        })
        .sum();
    args.services + slices + 2 * args.pods
}

/// The namespace, its service account and the Nodes.
async fn prepare(kube: &kube::Client) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.clone());
    ns.create(&pp, &from_json(json!({"metadata": {"name": NAMESPACE}}))?)
        .await
        .context("creating the namespace")?;
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(kube.clone(), NAMESPACE);
    sa.create(&pp, &from_json(json!({"metadata": {"name": "app"}}))?)
        .await
        .context("creating the service account")?;
    let nodes: Api<Node> = Api::all(kube.clone());
    for n in 0..NODES {
        let node = json!({"metadata": {"name": format!("node-{n}"), "labels": {
            "topology.kubernetes.io/region": "east",
            "topology.kubernetes.io/zone": format!("east-{}", n % 3),
        }}});
        nodes
            .create(&pp, &from_json(node)?)
            .await
            .context("creating a Node")?;
    }
    Ok(())
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    Ok(serde_json::from_value(v)?)
}

/// Pod `j`'s address: 10.200.0.0/16 from 10.200.0.1.
fn pod_ip(j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + j as u32 + 1)
}

/// Every Service with its pods (and slices), `--in-flight` workers taking
/// the next Service in turn; the time the last call returned.
async fn create_all(kube: &kube::Client, args: Arc<Args>) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight.min(args.services) {
        let (kube, args, next) = (kube.clone(), args.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= args.services {
                    return anyhow::Ok(());
                }
                create_service(&kube, &args, s)
                    .await
                    .with_context(|| format!("creating svc-{s} and its pods"))?;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.context("a worker panicked")??;
    }
    Ok(t0.elapsed())
}

/// Service `s`, its pods, ready, and (`--slices bench`) its slices.
async fn create_service(kube: &kube::Client, args: &Args, s: usize) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let name = format!("svc-{s}");
    let services: Api<Service> = Api::namespaced(kube.clone(), NAMESPACE);
    let svc = json!({
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 9080, "targetPort": 9080, "protocol": "TCP"}],
        },
    });
    services.create(&pp, &from_json(svc)?).await?;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), NAMESPACE);
    let mut endpoints = Vec::new();
    for j in args.pods_of(s) {
        let pod_name = format!("{name}-{j}");
        let node = format!("node-{}", j % NODES);
        let ip = pod_ip(j).to_string();
        let pod = json!({
            "metadata": {"name": pod_name, "labels": {"app": name}},
            "spec": {
                "nodeName": node,
                "serviceAccountName": "app",
                "automountServiceAccountToken": false,
                "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 9080}]}],
            },
        });
        pods.create(&pp, &from_json(pod)?).await?;
        let status = json!({"status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        }});
        pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        endpoints.push(json!({
            "addresses": [ip],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": pod_name},
            "topology": {"kubernetes.io/hostname": node},
        }));
    }
    if args.slices == Slices::Bench {
        let gvk = GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice");
        let resource = ApiResource::from_gvk(&gvk);
        let slices: Api<DynamicObject> = Api::namespaced_with(kube.clone(), NAMESPACE, &resource);
        for (k, chunk) in endpoints.chunks(PER_SLICE).enumerate() {
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1beta1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-{k}"), "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "trellis-bench",
                }},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
                "endpoints": chunk,
            });
            slices.create(&pp, &from_json(slice)?).await?;
        }
    }
    Ok(())
}

/// Polls each agent's `/clusters` until it has every Service with all its
/// endpoints; the time each got there, from `t0`. An agent that has
/// fewer complete services than it had before is reported, with the end
/// of its log (the views only grow during the run).
async fn wait_agents(
    block: &Block,
    args: &Args,
    agents: &[Proc],
    t0: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let want: BTreeMap<String, usize> = (0..args.services)
        .map(|s| {
            (
                format!("outbound|9080||svc-{s}.{NAMESPACE}.svc.cluster.local"),
                args.pods_of(s).count(),
            )
        })
        .collect();
    let mut done: Vec<Option<Duration>> = vec![None; usize::from(args.agents)];
    let mut clients: Vec<Client> = (0..args.agents)
        .map(|a| Client::new(SocketAddr::new(block.ip(FIRST_AGENT + a).into(), 15000)))
        .collect();
    let mut best = vec![0; usize::from(args.agents)];
    let mut last_report = Instant::now();
    while done.iter().any(Option::is_none) {
        if t0.elapsed() > TIMEOUT {
            bail!("the agents did not have everything within {TIMEOUT:?}");
        }
        for (a, client) in clients.iter_mut().enumerate() {
            if done[a].is_some() {
                continue;
            }
            let (status, body) = client.get("/clusters").await?;
            if status != StatusCode::OK {
                bail!("agent {a}'s /clusters answered {status}");
            }
            let (services, endpoints) = complete(&String::from_utf8_lossy(&body), &want);
            if services < best[a] {
                eprintln!(
                    "  {:.0} s: agent {a} went back from {} to {services} complete services; its log ends:\n{}",
                    t0.elapsed().as_secs_f64(),
                    best[a],
                    tail(&agents[a].output(), 5)
                );
            }
            best[a] = best[a].max(services);
            if services == want.len() {
                done[a] = Some(t0.elapsed());
            } else if last_report.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "  {:.0} s: agent {a} has {services} complete services, {endpoints} endpoints",
                    t0.elapsed().as_secs_f64()
                );
                last_report = Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(done.into_iter().flatten().collect())
}

/// From `/clusters` text: how many of `want`'s clusters have all their
/// endpoints, and how many of its endpoints there are.
fn complete(clusters: &str, want: &BTreeMap<String, usize>) -> (usize, usize) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for line in clusters.lines() {
        let Some((cluster, _)) = line.split_once("::") else {
            continue;
        };
        if line.contains("::health_flags::") && want.contains_key(cluster) {
            *seen.entry(cluster).or_default() += 1;
        }
    }
    let services = seen
        .iter()
        .filter(|(c, n)| want.get(**c) == Some(n))
        .count();
    (services, seen.values().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_complete_with_all_its_endpoints() {
        let want = BTreeMap::from([
            (
                "outbound|9080||svc-0.bench.svc.cluster.local".to_string(),
                2,
            ),
            (
                "outbound|9080||svc-1.bench.svc.cluster.local".to_string(),
                1,
            ),
        ]);
        let text = "outbound|9080||svc-0.bench.svc.cluster.local::10.200.0.1:9080::health_flags::healthy\n\
                    outbound|9080||svc-0.bench.svc.cluster.local::10.200.0.1:9080::zone::east-1\n\
                    outbound|9080||svc-1.bench.svc.cluster.local::10.200.0.2:9080::health_flags::healthy\n\
                    outbound|9080||other.default.svc.cluster.local::10.0.0.9:9080::health_flags::healthy\n";
        assert_eq!(complete(text, &want), (1, 2));
        let more = format!(
            "{text}outbound|9080||svc-0.bench.svc.cluster.local::10.200.0.3:9080::health_flags::healthy\n"
        );
        assert_eq!(complete(&more, &want), (2, 3));
    }

    #[test]
    fn pods_spread_evenly_and_slices_hold_at_most_100() {
        let args = Args {
            services: 3,
            pods: 301,
            agents: 1,
            slices: Slices::Bench,
            in_flight: 1,
            build: Build { no_build: true },
        };
        let counts: Vec<usize> = (0..3).map(|s| args.pods_of(s).count()).collect();
        assert_eq!(counts, [101, 100, 100]);
        // 3 Services, 2 + 1 + 1 slices, 301 creates and statuses.
        assert_eq!(calls(&args), 3 + 4 + 602);
        assert_eq!(pod_ip(0), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(pod_ip(300), Ipv4Addr::new(10, 200, 1, 45));
    }
}
