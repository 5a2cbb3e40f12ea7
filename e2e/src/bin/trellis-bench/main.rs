//! `trellis-bench`: benchmarks Trellis against the system it replaces, on
//! this machine, with real processes on loopback.
//!
//! `trellis-bench controlplane` starts a 3-node Trellis control plane and a
//! 3-node etcd 3.4 cluster one after the other and prints, side by side,
//! committed writes per second with their p50/p99 latency, idle memory per
//! node, the time a fresh node takes to serve its first write and the time
//! to the first write after the leader is killed. See `docs/benchmarks.md`.
//!
//! The modules follow one run: [`trellis`] and [`etcd`] (the two clusters
//! behind [`cluster::BenchCluster`]; Trellis's is the e2e harness's
//! `trellis_e2e::Cluster`, and every process runs under a
//! `trellis_e2e::Proc` that dies with its guard), [`process`] (their memory,
//! CPU time and disk writes), [`load`] (the write load), [`machine`] (CPU
//! taken by the hypervisor meanwhile), [`probe`] (time to the first
//! successful write), [`controlplane`] (the phases) and [`report`] (the
//! table).
#![forbid(unsafe_code)]

mod cluster;
mod controlplane;
mod etcd;
mod load;
mod machine;
mod probe;
mod process;
mod report;
mod trellis;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trellis-bench",
    about = "Benchmarks Trellis against etcd on this machine (build with --release)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A 3-node Trellis control plane vs a 3-node etcd 3.4 cluster: write
    /// throughput and latency, idle RSS, start-up time and failover time.
    Controlplane(controlplane::Args),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let run = async {
        match cli.command {
            Cmd::Controlplane(args) => controlplane::run(args).await,
        }
    };
    // On Ctrl-C the run is dropped, and with it every process it started.
    let res = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
