//! `trellis-bench`: benchmarks Trellis against the system it replaces, on
//! this machine, with real processes on loopback.
//!
//! `trellis-bench controlplane` starts a 3-node Trellis control plane and a
//! 3-node etcd 3.4 cluster one after the other and prints, side by side,
//! committed writes per second with their p50/p99 latency, idle memory per
//! node, the time a fresh node takes to serve its first write and the time
//! to the first write after the leader is killed.
//!
//! `trellis-bench proxy` puts a pair of Trellis agents and a pair of Envoys
//! (mTLS between the two of each pair) in turn between a client and an
//! echo server, and prints, with the client calling the server directly as
//! the baseline, latency at fixed rates, maximum throughput, CPU per
//! request and peak memory per proxy, over HTTP/1.1 and gRPC; and, as the
//! floor, the same loads through two null TCP relays (`trellis-bench
//! relay`, which it starts itself).
//!
//! `trellis-bench dns` sends DNS queries (dnsperf) to the agent's DNS proxy
//! and to dnsmasq in turn and prints, side by side, latency at fixed rates,
//! maximum queries per second, CPU per query and memory, for mesh names
//! answered locally and for names forwarded to a local upstream. See
//! `docs/benchmarks.md`.
//!
//! `trellis-bench push` measures config push from a 3-node control plane to
//! simulated agents ([`push_sim`]): apply-to-ACK propagation, and RSS and
//! full recompute at 10,000 services, 100,000 endpoints and 1,000 agents
//! ([`push`]).
//!
//! The modules follow one run: [`trellis`] and [`etcd`] (the two clusters
//! behind [`cluster::BenchCluster`]; Trellis's is the e2e harness's
//! `trellis_e2e::Cluster`, and every process runs under a
//! `trellis_e2e::Proc` that dies with its guard), [`process`] (their memory,
//! CPU time and disk writes), [`load`] (the write load), [`machine`] (CPU
//! taken by the hypervisor meanwhile), [`probe`] (time to the first
//! successful write), [`controlplane`] (the phases) and [`report`] (the
//! table). The proxy benchmark: [`agents`] and [`envoy`] (the two pairs),
//! [`proxy_load`] (fixed-rate and maximum load over HTTP/1.1 and gRPC),
//! [`relay`] (the floor), [`proxy`] (the test bed and the phases) and
//! [`proxy_report`]. The DNS benchmark: [`dns`] (the test bed and the
//! phases), [`dnsperf`] (the load) and [`dns_report`]. [`table`] lays out
//! every report's tables.
#![forbid(unsafe_code)]

mod agents;
mod cluster;
mod controlplane;
mod dns;
mod dns_report;
mod dnsperf;
mod envoy;
mod etcd;
mod load;
mod machine;
mod probe;
mod process;
mod proxy;
mod proxy_load;
mod proxy_report;
mod push;
mod push_sim;
mod relay;
mod report;
mod table;
mod trellis;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "trellis-bench",
    about = "Benchmarks Trellis against etcd, Envoy and dnsmasq on this machine (build with --release)"
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
    /// client -> proxy -> mTLS -> proxy -> server: a Trellis agent pair vs
    /// an Envoy pair vs direct, over HTTP/1.1 and gRPC: latency at fixed
    /// rates, maximum throughput, CPU per request and peak RSS per proxy.
    Proxy(proxy::Args),
    /// Config push to simulated agents: apply-to-ACK propagation at 100 and
    /// 1,000 agents; control-plane RSS and full recompute with 10,000
    /// services, 100,000 endpoints and 1,000 agents.
    Push(push::Args),
    /// DNS queries to the agent's DNS proxy vs dnsmasq, for mesh names
    /// answered locally and names forwarded to a local upstream: latency
    /// at fixed rates, max queries per second, CPU per query, RSS.
    Dns(dns::Args),
    /// A null TCP relay, the floor of `proxy` (which starts two): copies
    /// bytes between each accepted connection and one to its target.
    Relay(relay::Args),
}

fn main() {
    let cli = Cli::parse();
    // A relay runs on one thread, as the proxies it stands in for do.
    let runtime = match cli.command {
        Cmd::Relay(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(cli.command));
}

async fn run(command: Cmd) {
    let run = async {
        match command {
            Cmd::Controlplane(args) => controlplane::run(args).await,
            Cmd::Proxy(args) => proxy::run(args).await,
            Cmd::Push(args) => push::run(args).await,
            Cmd::Dns(args) => dns::run(args).await,
            Cmd::Relay(args) => relay::serve(args).await,
        }
    };
    // On Ctrl-C or SIGTERM (`timeout`, a CI job cancelled) the run is
    // dropped, and with it every process it started.
    let res = match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        },
        Err(e) => Err(anyhow::anyhow!("handling SIGTERM: {e}")),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
