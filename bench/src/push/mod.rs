//! `trellis-bench push`: config push from a real 3-node control plane to
//! simulated agents ([`sim`]).
//!
//! - **Propagation.** N agents (100, then 1,000) stream from the three
//!   nodes in turn; a VirtualService change is applied again and again, and
//!   each time every agent's delay from the apply call to its receiving
//!   (and ACKing) the new version is recorded. Goal: p99 under 1 s at
//!   N = 1,000.
//! - **Scale.** A fresh cluster gets 10,000 services and 100,000 endpoints
//!   (100 namespaces of 100 ServiceEntries with 10 WorkloadEntries each,
//!   and a Sidecar per namespace letting its agents see their namespace
//!   and `istio-system`), and 1,000 agents (10 per namespace) all stream
//!   from node 1. Reported: each node's RSS (goal: under 1 GB), the time
//!   of a mesh-wide change (a PeerAuthentication in `istio-system`, which
//!   every agent sees) and of one endpoint change to reach the agents, and
//!   the **full recompute**: node 1 is killed and restarted, and rebuilds
//!   every item from its store before it serves (the push snapshot, timed
//!   by the node's `push snapshot built ... took_ms=` log line; goal: under
//!   1 s); then its 1,000 agents reconnect and each is sent its full view
//!   again, and the time until the last one has it is reported beside it
//!   (that is mostly moving 250 MB over TLS on this one machine: views are
//!   computed once per Sidecar scope and shared).
pub(crate) mod sim;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::{ApplyConfigRequest, ConfigSource};
use trellis_e2e::Cluster;

use self::sim::{workload_tls, Agent, Fleet, STREAMS_PER_CONNECTION};
use crate::flags::Build;
use crate::process::status_kib;
use crate::report::percentile;

/// The propagation goal: p99 of apply-to-ACK at 1,000 agents.
const PROPAGATION_GOAL: Duration = Duration::from_secs(1);
/// The scale goals.
const RSS_GOAL_MB: f64 = 1000.0;
const RECOMPUTE_GOAL: Duration = Duration::from_secs(1);
/// The binaries the clusters run: the CLI too, as the harness makes the
/// tokens with it.
const PACKAGES: [&str; 2] = ["trellis-controlplane", "trellis"];

#[derive(clap::Args)]
pub struct Args {
    /// Agent counts for the propagation runs.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    agents: Vec<usize>,
    /// Applies per propagation run.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Namespaces of the scale run (100 services and 1,000 endpoints each).
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Agents per namespace in the scale run.
    #[arg(long, default_value_t = 10)]
    agents_per_namespace: usize,
    /// Skip the scale run.
    #[arg(long)]
    no_scale: bool,
    #[command(flatten)]
    build: Build,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.build.binaries(&PACKAGES)?;
    let mut out = String::new();
    writeln!(
        out,
        "\n== Config push: propagation (apply -> every agent has the version, ACKed) =="
    )?;
    writeln!(
        out,
        "{:>7} {:>7} {:>9} {:>9} {:>9} {:>12}",
        "agents", "rounds", "p50", "p99", "max", "goal p99<1s"
    )?;
    for &n in &args.agents {
        let r = propagation(n, args.rounds).await?;
        let (p50, p99, max) = (
            percentile(&r, 50.0).unwrap_or_default(),
            percentile(&r, 99.0).unwrap_or_default(),
            r.last().copied().unwrap_or_default(),
        );
        let verdict = if n >= 1000 {
            if p99 < PROPAGATION_GOAL {
                "met"
            } else {
                "MISSED"
            }
        } else {
            "-"
        };
        writeln!(
            out,
            "{n:>7} {:>7} {:>9} {:>9} {:>9} {verdict:>12}",
            args.rounds,
            ms(p50),
            ms(p99),
            ms(max)
        )?;
        eprint!("{out}");
        out.clear();
    }
    if !args.no_scale {
        scale(&args, &mut out).await?;
        eprint!("{out}");
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Applies `yaml` through node 1; the commit index.
pub(crate) async fn apply(c: &Cluster, yaml: String) -> anyhow::Result<u64> {
    apply_on(&mut admin(c).await?, yaml).await
}

/// An admin client of node 1 that takes messages as large as the scale
/// run's.
pub(crate) async fn admin(c: &Cluster) -> anyhow::Result<AdminClient<Channel>> {
    Ok(c.admin(1)
        .await?
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// Applies `yaml` through `admin`, connected already; the commit index.
pub(crate) async fn apply_on(
    admin: &mut AdminClient<Channel>,
    yaml: String,
) -> anyhow::Result<u64> {
    let r = admin
        .apply_config(ApplyConfigRequest {
            sources: vec![ConfigSource {
                name: "bench".into(),
                yaml,
            }],
            dry_run: false,
        })
        .await
        .context("applying config")?
        .into_inner();
    Ok(r.index)
}

fn vs(ns: &str, host: &str, round: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench, namespace: {ns}}}
spec:
  hosts: [{host}]
  http:
  - timeout: {}ms
    route: [{{destination: {{host: {host}}}}}]
---
",
        1000 + round
    )
}

/// `services` ServiceEntries in `ns` with `per` WorkloadEntries each.
pub(crate) fn services(ns: &str, n: usize, services: usize, per: usize) -> String {
    let mut y = String::new();
    for s in 0..services {
        let _ = write!(
            y,
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{s}, namespace: {ns}}}
spec:
  hosts: [svc-{s}.{ns}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http}}]
  workloadSelector: {{labels: {{app: svc-{s}}}}}
---
"
        );
        for e in 0..per {
            let _ = write!(
                y,
                "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: svc-{s}-{e}, namespace: {ns}}}
spec:
  address: 10.{}.{}.{}
  labels: {{app: svc-{s}, version: v{}}}
  serviceAccount: svc-{s}
---
",
                n % 250,
                s % 250,
                e + 1,
                e % 2 + 1
            );
        }
    }
    y
}

/// Channels to the nodes: `count`, spread over `addrs` in turn.
fn channels(
    addrs: &[String],
    count: usize,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> anyhow::Result<Vec<tonic::transport::Channel>> {
    (0..count)
        .map(|i| {
            Ok(trellis_identity::grpc::channel(
                &addrs[i % addrs.len()],
                tls.clone(),
                None,
            )?)
        })
        .collect()
}

/// `n` simulated agents in `default`, `sim-0` to `sim-N`, streaming from
/// the nodes of `c` in turn, agent `i` on network `network(i)`.
pub(crate) async fn fleet(
    c: &Cluster,
    n: usize,
    network: impl Fn(usize) -> String,
) -> anyhow::Result<Fleet> {
    let token = c.token(&["--kind", "vm", "--identity", "default/bench"])?;
    let tls = workload_tls(&token, &c.root.path().join("sim-default")).await?;
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let chans = channels(
        &addrs,
        n.div_ceil(STREAMS_PER_CONNECTION).max(addrs.len()),
        &tls,
    )?;
    let agents = (0..n)
        .map(|i| Agent {
            name: format!("sim-{i}"),
            namespace: "default".into(),
            network: network(i),
            channel: chans[i % chans.len()].clone(),
        })
        .collect();
    Ok(Fleet::start(agents))
}

/// One propagation run; every delay of every round, sorted.
async fn propagation(n: usize, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    eprintln!("propagation, {n} agents: starting a 3-node control plane ...");
    let c = Cluster::start(3, &[]).await?;
    let base = apply(
        &c,
        services("default", 0, 100, 10) + &vs("default", "svc-0", 0),
    )
    .await?;
    let started = Instant::now();
    let fleet = fleet(&c, n, |_| String::new()).await?;
    fleet
        .wait(fleet.all(), base, started, Duration::from_secs(120))
        .await?;
    eprintln!(
        "  {n} agents connected and synced in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut all = Vec::new();
    for round in 1..=rounds {
        let t0 = Instant::now();
        let index = apply(&c, vs("default", "svc-0", round)).await?;
        let d = fleet
            .wait(fleet.all(), index, t0, Duration::from_secs(60))
            .await?;
        all.extend(d);
    }
    if let (n @ 1.., Some(last)) = fleet.ended() {
        eprintln!("  warning: {n} streams ended during the rounds; last: {last}");
    }
    all.sort();
    Ok(all)
}

async fn scale(args: &Args, out: &mut String) -> anyhow::Result<()> {
    let nss: Vec<String> = (0..args.namespaces).map(|i| format!("ns-{i:02}")).collect();
    eprintln!(
        "scale: starting a 3-node control plane and applying {} services, {} endpoints ...",
        nss.len() * 100,
        nss.len() * 1000
    );
    let mut c = Cluster::start(3, &[]).await?;
    let loading = Instant::now();
    let mut index = 0;
    for (i, ns) in nss.iter().enumerate() {
        let sidecar = format!(
            "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default, namespace: {ns}}}
spec:
  egress: [{{hosts: [\"./*\", \"istio-system/*\"]}}]
---
"
        );
        index = apply(&c, services(ns, i, 100, 10) + &sidecar).await?;
    }
    let load_secs = loading.elapsed().as_secs_f64();
    eprintln!(
        "  applied in {load_secs:.1} s; getting {} workload certificates ...",
        nss.len()
    );
    let node1 = c.node(1).addr.clone();
    let mut agents = Vec::new();
    for ns in &nss {
        let token = c.token(&["--kind", "vm", "--identity", &format!("{ns}/bench")])?;
        let tls = workload_tls(&token, &c.root.path().join(format!("sim-{ns}"))).await?;
        let ch = trellis_identity::grpc::channel(&node1, tls, None)?;
        for a in 0..args.agents_per_namespace {
            agents.push(Agent {
                name: format!("sim-{a}"),
                namespace: ns.clone(),
                network: String::new(),
                channel: ch.clone(),
            });
        }
    }
    let n = agents.len();
    let started = Instant::now();
    let fleet = Fleet::start(agents);
    fleet
        .wait(fleet.all(), index, started, Duration::from_secs(300))
        .await?;
    let sync_secs = started.elapsed().as_secs_f64();
    let (items, bytes) = fleet.received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<f64> = c
        .nodes
        .iter()
        .filter_map(|n| n.pid())
        .map(|p| status_kib(p, "VmRSS").map(|k| k as f64 / 1000.0))
        .collect::<anyhow::Result<_>>()?;

    // A change every agent sees, and one only a namespace's agents see.
    let t0 = Instant::now();
    let v = apply(
        &c,
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"
        .into(),
    )
    .await?;
    let wide = fleet
        .wait(fleet.all(), v, t0, Duration::from_secs(60))
        .await?;
    let t0 = Instant::now();
    let v = apply(
        &c,
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: svc-0-0, namespace: ns-00}
spec:
  address: 10.0.0.201
  labels: {app: svc-0, version: v1}
  serviceAccount: svc-0
"
        .into(),
    )
    .await?;
    let endpoint = fleet
        .wait(0..args.agents_per_namespace, v, t0, Duration::from_secs(60))
        .await?;

    // Full recompute: node 1 rebuilds everything from its store and serves
    // every agent its full view again.
    eprintln!("  restarting node 1 (kill -9) for the full recompute ...");
    c.kill(1);
    let restarted = Instant::now();
    c.restart(1).await?;
    let ready = restarted.elapsed();
    let resync = fleet
        .wait(fleet.all(), v, restarted, Duration::from_secs(300))
        .await?;
    let built = snapshot_build_ms(&c.node(1).output());

    writeln!(
        out,
        "\n== Config push: scale ({} services, {} endpoints, {n} agents on node 1) ==",
        nss.len() * 100,
        nss.len() * 1000
    )?;
    writeln!(
        out,
        "config applied in {load_secs:.1} s ({} applies of 1,100 resources)",
        nss.len()
    )?;
    writeln!(
        out,
        "{n} agents connected and got their full view in {sync_secs:.2} s: {items} items, {:.1} MB in all ({} items each)",
        bytes as f64 / 1e6,
        items / n.max(1)
    )?;
    let worst = rss.iter().copied().fold(0.0, f64::max);
    writeln!(
        out,
        "control-plane RSS per node: {} MB (goal < {RSS_GOAL_MB:.0} MB: {})",
        rss.iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / "),
        if worst < RSS_GOAL_MB { "met" } else { "MISSED" }
    )?;
    let p = |d: &[Duration], q| ms(percentile(d, q).unwrap_or_default());
    writeln!(
        out,
        "mesh-wide change (istio-system PeerAuthentication) to all {n} agents: p50 {}, p99 {}, max {}",
        p(&wide, 50.0),
        p(&wide, 99.0),
        p(&wide, 100.0)
    )?;
    writeln!(
        out,
        "one endpoint change to its namespace's {} agents: max {}",
        endpoint.len(),
        p(&endpoint, 100.0)
    )?;
    let last = resync.last().copied().unwrap_or_default();
    let verdict = match built {
        Some(b) if Duration::from_millis(b) < RECOMPUTE_GOAL => "met",
        Some(_) => "MISSED",
        None => "?",
    };
    writeln!(
        out,
        "full recompute after kill -9 of node 1: every item rebuilt from the store in {} \
         (goal < 1 s: {verdict}); node ready (store loaded, items built) {} after the restart; \
         every agent re-served its full view ({:.1} MB) {} after ready, {} after the restart \
         ({} streams ended and were reopened)",
        built
            .map(|b| format!("{b} ms"))
            .unwrap_or_else(|| "?".into()),
        ms(ready),
        bytes as f64 / 1e6,
        ms(last.saturating_sub(ready)),
        ms(last),
        fleet.ended().0,
    )?;
    Ok(())
}

/// The build time of the last push snapshot a node logged at start.
fn snapshot_build_ms(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("push snapshot built"))?;
    let at = line.find("took_ms=")? + "took_ms=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
