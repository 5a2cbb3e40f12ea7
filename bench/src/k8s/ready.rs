//! `trellis-bench kube-ready`: from a pod turning ready in cluster east to
//! the first successful request to it from cluster west.
//!
//! East: a real `kube-apiserver` v1.20 and `kube-controller-manager` (the
//! EndpointSlices) and the tests' kubelet (`trellis_e2e::kubelet`), which
//! runs each pod as a `trellis-echo` answering with its pod's name, in a
//! network namespace of its own on one bridge; no sidecar. West: an agent
//! in the root namespace (which reaches the pods' addresses) streaming
//! from west's node, with an upstream listener for the Service's mesh
//! name `web.default.svc.cluster.local`.
//!
//! A round: the bench creates pod `web-N` (a Service `web` with one pod
//! `web-base` is there throughout) and watches the pods; the client sends
//! `GET /` through its agent every `--probe-ms` until an answer names
//! `web-N`. Measured: from the moment the bench's watch sees `web-N`'s
//! Ready condition true to that first answer. Then `web-N` is deleted.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use trellis_e2e::kube::{KubeCluster, Options};
use trellis_e2e::kubelet::{Images, Kubelet, NodeSpec};
use trellis_e2e::loopback::Block;
use trellis_e2e::netns::Net;
use trellis_e2e::{bin, wait_for};
use trellis_kubernetes::client::{client, Source};

use super::{Mesh, PACKAGES};
use crate::flags::Build;
use crate::net::{wait_http_ok, Client};
use crate::report::percentile;
use crate::table::render;

/// The loopback series of the bed's block: `127.65.N.0/24`.
const SERIES: u8 = 65;
/// Host numbers in the block.
const EAST_NODE: u8 = 1;
const CLIENT: u8 = 10;
const UPSTREAM_PORT: u16 = 18080;
const HOST: &str = "web.default.svc.cluster.local";
/// How long a round may take before the run fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Pods made ready, each timed.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Milliseconds between two requests of the client until one reaches
    /// the new pod.
    #[arg(long, default_value_t = 5)]
    probe_ms: u64,
    #[command(flatten)]
    build: Build,
}

/// The Service, and the image's program of the pods: `trellis-echo`
/// reporting its pod's name as its version.
fn objects() -> String {
    r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080, targetPort: 9080, protocol: TCP}]
"#
    .to_string()
}

fn pod(name: &str) -> serde_json::Value {
    let echo = bin("trellis-echo");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "web",
                "image": "shell",
                "command": ["sh", "-c", format!(
                    "exec {} --http 0.0.0.0:9080 --name web --version \"$POD_NAME\"",
                    echo.display()
                )],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "readinessProbe": {"tcpSocket": {"port": 9080}},
            }],
        },
    })
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The times the bench's watch first saw each pod ready, sent as seen.
/// With a backoff: without one a watcher retries at once when the API
/// server is gone, and its task spins without yielding, which keeps the
/// runtime from shutting down.
fn watch_ready(pods: Api<Pod>) -> mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let stream = watcher(pods, watcher::Config::default().labels("app=web")).default_backoff();
        tokio::pin!(stream);
        while let Some(event) = stream.next().await {
            let (Ok(Event::Apply(p)) | Ok(Event::InitApply(p))) = event else {
                continue;
            };
            let at = Instant::now();
            let name = p.metadata.name.clone().unwrap_or_default();
            if is_ready(&p) && seen.insert(name.clone()) && tx.send((name, at)).is_err() {
                return;
            }
        }
    });
    rx
}

/// The version (the pod's name) in an echo's answer.
fn answered_by(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["version"].as_str().map(String::from)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.probe_ms == 0 {
        bail!("--rounds and --probe-ms must be at least 1");
    }
    if let Some(why) = trellis_e2e::kube::unavailable() {
        bail!("cannot run an API server here: {why}");
    }
    args.build.binaries(&PACKAGES)?;
    let listeners: Vec<(u8, u16)> = crate::agent::PORTS
        .map(|p| (CLIENT, p))
        .into_iter()
        .chain([(CLIENT, UPSTREAM_PORT)])
        .collect();
    let block = Block::take(SERIES, &listeners)?;
    eprintln!("starting east's API server and kubelet, west's and east's nodes ...");
    let kube = KubeCluster::start(
        "bench-ready",
        Options {
            controller_manager: true,
            ..Default::default()
        },
    )?;
    let net = Arc::new(Mutex::new(Net::new("kready")?));
    let images = Images::from([("shell".to_string(), PathBuf::from("/bin/sh"))]);
    let node = NodeSpec {
        name: "node-a".into(),
        region: "east".into(),
        zone: "east-1".into(),
        subzone: String::new(),
        schedules: true,
    };
    let kubelet = Kubelet::start(&kube, node, net.clone(), images).await?;
    let mesh = Mesh::start(kube, &block.ip(EAST_NODE).to_string()).await?;
    let ip = block.ip(CLIENT);
    let upstream = format!("{ip}:{UPSTREAM_PORT}={HOST}:9080");
    let mut agent = mesh.agent("client", &ip.to_string(), &["--upstream".into(), upstream])?;
    wait_http_ok(SocketAddr::new(ip.into(), 15000), "/ready", &mut agent).await?;

    let kube = client(&Source::Kubeconfig(mesh.kube.kubeconfig.clone())).await?;
    let pods: Api<Pod> = Api::namespaced(kube, "default");
    let mut ready = watch_ready(pods.clone());
    mesh.kube
        .kubectl_stdin(&["apply", "-f", "-"], Some(&objects()))?;
    let pp = PostParams::default();
    pods.create(&pp, &serde_json::from_value(pod("web-base"))?)
        .await
        .context("creating web-base")?;
    let addr = SocketAddr::new(ip.into(), UPSTREAM_PORT);
    wait_for(
        Duration::from_secs(60),
        "a request through west's agent reaching web-base",
        || async {
            let r = Client::new(addr).get("/").await.ok()?;
            (answered_by(&r.1).as_deref() == Some("web-base")).then_some(())
        },
    )
    .await
    .with_context(|| {
        format!(
            "agent's log:\n{}",
            crate::process::tail(&agent.output(), 30)
        )
    })?;

    let probe = Duration::from_millis(args.probe_ms);
    let mut ready_at: HashMap<String, Instant> = HashMap::new();
    let mut samples = Vec::new();
    for round in 1..=args.rounds {
        let name = format!("web-{round}");
        let created = Instant::now();
        pods.create(&pp, &serde_json::from_value(pod(&name))?)
            .await
            .with_context(|| format!("creating {name}"))?;
        let mut client = Client::new(addr);
        let (success, requests) = tokio::time::timeout(ROUND_TIMEOUT, async {
            let mut sent = 0u32;
            loop {
                sent += 1;
                if let Ok((StatusCode::OK, body)) = client.get("/").await {
                    if answered_by(&body).as_deref() == Some(name.as_str()) {
                        return (Instant::now(), sent);
                    }
                }
                tokio::time::sleep(probe).await;
            }
        })
        .await
        .with_context(|| format!("no request reached {name} within {ROUND_TIMEOUT:?}"))?;
        // Its ready time: seen by the watch before (or, rarely, just
        // after) the first success.
        while !ready_at.contains_key(&name) {
            let (pod, at) = tokio::time::timeout(ROUND_TIMEOUT, ready.recv())
                .await
                .context("the pod watch")?
                .context("the pod watch ended")?;
            ready_at.insert(pod, at);
        }
        let at = ready_at[&name];
        let took = success.saturating_duration_since(at);
        eprintln!(
            "round {round} of {}: created→ready {:.0} ms, ready→first success {:.1} ms ({requests} requests){}",
            args.rounds,
            at.saturating_duration_since(created).as_secs_f64() * 1000.0,
            took.as_secs_f64() * 1000.0,
            if success < at { " (answered before the watch saw it ready)" } else { "" },
        );
        samples.push(took);
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .with_context(|| format!("deleting {name}"))?;
    }
    samples.sort();
    let ms = |d: Option<Duration>| {
        d.map_or("-".into(), |d| {
            format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        })
    };
    println!(
        "trellis-bench kube-ready: {} pods made ready in east (kube-apiserver v1.20 + controller \
         manager, the tests' kubelet), requests from west's agent every {} ms (built {})",
        args.rounds,
        args.probe_ms,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let rows = vec![
        ["measured", "n", "p50", "p90", "p99", "max", "goal"].map(String::from),
        [
            "pod ready in east -> first success from west".to_string(),
            samples.len().to_string(),
            ms(percentile(&samples, 50.0)),
            ms(percentile(&samples, 90.0)),
            ms(percentile(&samples, 99.0)),
            ms(samples.last().copied()),
            "p99 < 1 s".into(),
        ],
    ];
    print!("{}", render(&rows));
    // The kubelet stops its pods while the API server still answers.
    drop(agent);
    drop(kubelet);
    drop(mesh);
    drop(net);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_that_answered() {
        let body = br#"{"service":"web","version":"web-7","path":"/"}"#;
        assert_eq!(answered_by(body).as_deref(), Some("web-7"));
        assert_eq!(answered_by(b"no healthy upstream"), None);
    }
}
