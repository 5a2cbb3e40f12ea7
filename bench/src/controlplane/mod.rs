//! `trellis-bench controlplane`: the phases of one run. Each system gets
//! the machine to itself: start-up time of a single node for both, then the
//! 3-node Trellis control plane (idle RSS, load, then leader kills, each
//! killed node restarted before the next kill) torn down before the 3-node
//! etcd cluster goes through the same.
//!
//! The modules follow one run: [`trellis`] and [`etcd`] (the two clusters
//! behind [`cluster::BenchCluster`]; Trellis's is the e2e harness's
//! `trellis_e2e::Cluster`, and every process runs under a
//! `trellis_e2e::Proc` that dies with its guard), [`load`] (the write
//! load), [`probe`] (time to the first successful write), and [`report`]
//! (the table).
mod cluster;
mod etcd;
mod etcd_pb;
mod load;
mod probe;
mod report;
mod trellis;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use self::cluster::BenchCluster;
use self::etcd::{EtcdBins, EtcdCluster};
use self::load::Load;
use self::report::{Setup, SystemResult};
use self::trellis::TrellisCluster;
use crate::flags::{Build, Phases};
use crate::machine::CpuTimes;
use crate::process::{status_kib, Usage};

/// Nodes per cluster.
const NODES: usize = 3;
/// Single-node start-up runs per system; the median is reported.
const STARTUP_RUNS: usize = 3;
/// Quiet time after a cluster is up before its idle RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// Quiet time between the load and the kill, so the kill does not land in
/// the middle of the load's last writes.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// Longest wait for a write after the leader is killed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// The binaries the clusters run: the CLI too, as the harness makes the
/// join tokens with it.
const PACKAGES: [&str; 2] = ["trellis-controlplane", "trellis"];

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    phases: Phases,
    /// Concurrent clients, each on its own connection, spread over the nodes.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Times the leader is killed per system (the killed node is restarted
    /// before the next); the median is reported.
    #[arg(long, default_value_t = 3)]
    failovers: usize,
    /// The etcd 3.4 server binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// The etcdctl binary (finds etcd's leader).
    #[arg(long, default_value = "/usr/bin/etcdctl")]
    etcdctl: PathBuf,
    #[command(flatten)]
    build: Build,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        self.phases.validate()?;
        if self.connections == 0 {
            bail!("--connections: must be at least 1");
        }
        if self.failovers == 0 {
            bail!("--failovers: must be at least 1");
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    args.build.binaries(&PACKAGES)?;
    let etcd_bins = EtcdBins {
        etcd: args.etcd.clone(),
        etcdctl: args.etcdctl.clone(),
    };
    let etcd_version = etcd_bins.check()?;
    let load = Load {
        value_size: args.value_size,
        warmup: args.phases.warmup(),
        measure: args.phases.measure(),
    };

    eprintln!("start-up time of one fresh node, {STARTUP_RUNS} runs each ...");
    let mut trellis_startup = Vec::new();
    let mut etcd_startup = Vec::new();
    for _ in 0..STARTUP_RUNS {
        trellis_startup.push(trellis::time_to_first_write().await?);
        etcd_startup.push(etcd::time_to_first_write(&etcd_bins).await?);
    }

    eprintln!("Trellis: starting {NODES} nodes ...");
    let mut c = TrellisCluster::start(NODES).await?;
    let trellis = bench_cluster(&mut c, &args, &load, trellis_startup).await?;
    drop(c);

    eprintln!("etcd {etcd_version}: starting {NODES} members ...");
    let mut c = EtcdCluster::start(&etcd_bins, NODES).await?;
    let mut etcd = bench_cluster(&mut c, &args, &load, etcd_startup).await?;
    drop(c);
    etcd.version = etcd_version;

    let setup = Setup {
        nodes: NODES,
        connections: args.connections,
        value_size: args.value_size,
        warmup: load.warmup,
        measure: load.measure,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    println!("{}", report::render(&setup, &trellis, &etcd));
    Ok(())
}

/// Idle RSS, load, failover on a running cluster.
async fn bench_cluster<C: BenchCluster>(
    c: &mut C,
    args: &Args,
    load: &Load,
    mut startup: Vec<Duration>,
) -> anyhow::Result<SystemResult> {
    let name = c.name();
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_rss_kib = rss(c, "VmRSS")?;

    eprintln!(
        "{name}: {} connections, {} s warm-up + {} s ...",
        args.connections,
        load.warmup.as_secs(),
        load.measure.as_secs()
    );
    let mut clients = Vec::new();
    for i in 0..args.connections {
        clients.push(c.client(i % c.len()).await?);
    }
    let before = Usage::total(&c.pids())?;
    let machine_before = CpuTimes::now()?;
    let result = load::run(clients, load).await?;
    let load_machine = CpuTimes::now()?.share_since(machine_before);
    let load_usage = Usage::total(&c.pids())?.since(before);
    let peak_rss_kib = rss(c, "VmHWM")?;

    let mut failover = Vec::new();
    let mut killed = None;
    for run in 1..=args.failovers {
        if let Some(node) = killed.take() {
            eprintln!("{name}: restarting node {} ...", node + 1);
            c.restart(node).await?;
        }
        tokio::time::sleep(BEFORE_KILL).await;
        let (took, leader) = kill_leader(c, run).await?;
        failover.push(took);
        killed = Some(leader);
    }
    failover.sort_unstable();
    startup.sort_unstable();
    Ok(SystemResult {
        name,
        version: String::new(),
        transport: c.transport(),
        load: result,
        idle_rss_kib,
        peak_rss_kib,
        load_usage,
        load_machine,
        startup,
        failover,
    })
}

/// SIGKILL to the leader, then writes through a survivor until one is
/// committed. Returns the time that took and the node killed.
async fn kill_leader<C: BenchCluster>(c: &mut C, run: usize) -> anyhow::Result<(Duration, usize)> {
    let name = c.name();
    let leader = c.leader().await?;
    let survivor = (0..c.len())
        .find(|&i| i != leader)
        .context("no node besides the leader")?;
    // Connected before the kill: only the write is timed.
    let client = c.client(survivor).await?;
    eprintln!("{name}: kill -9 leader (node {}) ...", leader + 1);
    let since = Instant::now();
    c.kill(leader);
    let mut seq = 0u64;
    let took = probe::first_success(
        since,
        FAILOVER_DEADLINE,
        &format!("{name} after its leader was killed"),
        || {
            let mut client = client.clone();
            seq += 1;
            let key = format!("bench/failover/{run}/{seq}");
            async move { Ok(client.put(key, b"1".to_vec()).await?) }
        },
    )
    .await?;
    Ok((took, leader))
}

fn rss<C: BenchCluster>(c: &C, field: &str) -> anyhow::Result<Vec<u64>> {
    c.pids().into_iter().map(|p| status_kib(p, field)).collect()
}
