//! `trellis-bench`: benchmarks Trellis against the system it replaces, on
//! this machine, with real processes on loopback. The binary's `main.rs`
//! parses the flags into a [`Cli`] and hands its [`Command`] to [`run`].
//!
//! One folder (a private module) per suite, each with its flags (`Args`),
//! its test bed, its load and its report:
//!
//! - `controlplane/`: a 3-node Trellis control plane and a 3-node etcd 3.4
//!   cluster one after the other: committed writes per second with their
//!   p50/p99 latency, idle memory per node, the time a fresh node takes to
//!   serve its first write and the time to the first write after the
//!   leader is killed.
//! - `proxy/`: a pair of Trellis agents and a pair of Envoys (mTLS between
//!   the two of each pair) in turn between a client and an echo server,
//!   with the client calling the server directly as the baseline: latency
//!   at fixed rates, maximum throughput, CPU per request and peak memory
//!   per proxy, over HTTP/1.1 and gRPC; and, as the floor, the same loads
//!   through two null TCP relays (`trellis-bench relay`, which it starts
//!   itself).
//! - `dns/`: DNS queries (dnsperf) to the agent's DNS proxy and to dnsmasq
//!   in turn: latency at fixed rates, maximum queries per second, CPU per
//!   query and memory, for mesh names answered locally and for names
//!   forwarded to a local upstream.
//! - `push/`: config push from a 3-node control plane to simulated agents:
//!   apply-to-ACK propagation, and RSS and full recompute at 10,000
//!   services, 100,000 endpoints and 1,000 agents.
//!
//! - `eastwest/`: client → agent → east-west gateway → agent → server,
//!   `trellis-eastwest` and Envoy as an SNI-passthrough gateway in turn,
//!   and no gateway as the baseline: the hop's added latency, new
//!   connections per second, a 1 GB transfer, the gateway's CPU per
//!   connection and per GB and its peak RSS.
//!
//! - `propagation/`: from a workload becoming ready in one network to the
//!   first successful request to it from another, through that network's
//!   east-west gateway, with 1,000 simulated agents (`push`'s) streaming.
//! - `failover/`: every endpoint of the client's cluster killed under a
//!   steady load: the time until all traffic is on the other cluster,
//!   through its gateway (outlier detection and locality failover).
//! - `upgrade/`: the agent's package upgraded (a hot restart), then its
//!   unit restarted, on a booted Debian under a steady keep-alive load:
//!   the requests that failed.
//! - `vm/`: a booted Debian 12 (systemd-nspawn) joining the mesh with the
//!   agent's package: from `dpkg -i` and the join to the first request
//!   through the mesh from the VM, the installed agent's idle memory, the
//!   package sizes.
//!
//! - `k8s/`: two clusters, `west` (the agents' node) and `east` (a node
//!   watching a real kube-apiserver v1.20): `kube-ingest`, 1,000 Services
//!   and 10,000 pods created in east until every west agent has them, with
//!   the nodes' CPU and RSS; `kube-ready`, a pod made ready in east (the
//!   tests' kubelet) to the first request to it from west.
//!
//! A new suite is a folder beside them with a variant of [`Command`].
//!
//! What the suites share is at the top: `flags` (the flags two or more
//! suites take), `bins` (the Trellis binaries beside this one, built
//! first), `agent` (one `trellis-agent` of a test bed), `gateway` (one
//! `trellis-eastwest`), `multinet` (the two-network bed of `propagation`
//! and `failover`), `net` (loopback
//! addresses and HTTP/1.1 probes), `process` (the memory and CPU time of
//! the processes, which run under `trellis_e2e::Proc` and die with their
//! guard), `machine` (CPU taken by the hypervisor meanwhile), `pace` (fixed
//! rate or maximum), `report` and `table` (the reports' percentiles and
//! tables). See `docs/benchmarks.md`.
#![forbid(unsafe_code)]

mod agent;
mod bins;
mod controlplane;
mod dns;
mod eastwest;
mod failover;
mod flags;
mod gateway;
mod inject;
mod k8s;
mod machine;
mod multinet;
mod net;
mod pace;
mod process;
mod propagation;
mod proxy;
mod push;
mod report;
mod table;
mod upgrade;
mod vm;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "trellis-bench",
    about = "Benchmarks Trellis against etcd, Envoy and dnsmasq on this machine (build with --release)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// client -> agent -> east-west gateway -> agent -> server: the
    /// Trellis gateway vs Envoy as an SNI-passthrough gateway vs no
    /// gateway: added latency, new connections/s, a 1 GB transfer, the
    /// gateway's CPU per connection and per GB, and its peak RSS.
    Eastwest(eastwest::Args),
    /// A workload made ready in network B -> the first successful request
    /// to it from network A through B's gateway, with 1,000 simulated
    /// agents streaming: p50/p99 over many trials, and the split
    /// (commit, push, first success).
    Propagation(propagation::Args),
    /// Every endpoint of the client's cluster killed under a steady load
    /// -> all traffic on the other cluster through its gateway: p50/p99
    /// over many trials, failed requests per trial, recovery.
    Failover(failover::Args),
    /// `apt install` of a newer agent package (a hot restart) and
    /// `systemctl restart` on a booted Debian, under 200 requests/s over
    /// keep-alive through the agent: the requests that failed (root).
    Upgrade(upgrade::Args),
    /// A booted Debian 12 joining the mesh with the packages: from `dpkg
    /// -i` and the join to the first request through the mesh from the VM
    /// (p50/max, split by stage), the installed agent's idle memory, and
    /// the package sizes.
    Vm(vm::Args),
    /// The sidecar injection webhook under 50 pod creations per second
    /// against a real kube-apiserver: its time per review (p99 goal
    /// 5 ms), the API server's view of the calls, the creations' latency.
    Inject(inject::Args),
    /// 1,000 Services and 10,000 pods created in cluster east's real
    /// kube-apiserver -> every agent of cluster west has them all: the
    /// time, and the control-plane nodes' CPU seconds and peak RSS.
    KubeIngest(k8s::ingest::Args),
    /// A pod turning ready in cluster east (real kube-apiserver, the
    /// tests' kubelet) -> the first successful request to it from cluster
    /// west's agent: p50/p90/p99/max over many pods (goal p99 < 1 s).
    KubeReady(k8s::ready::Args),
    /// A null TCP relay, the floor of `proxy` (which starts two): copies
    /// bytes between each accepted connection and one to its target.
    Relay(proxy::relay::Args),
}

/// Runs `command` until it ends, or until Ctrl-C or SIGTERM (`timeout`, a
/// CI job cancelled): then the run is dropped, and with it every process
/// it started.
pub async fn run(command: Command) -> anyhow::Result<()> {
    let run = async {
        match command {
            Command::Controlplane(args) => controlplane::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Push(args) => push::run(args).await,
            Command::Dns(args) => dns::run(args).await,
            Command::Eastwest(args) => eastwest::run(args).await,
            Command::Propagation(args) => propagation::run(args).await,
            Command::Failover(args) => failover::run(args).await,
            Command::Upgrade(args) => upgrade::run(args).await,
            Command::Vm(args) => vm::run(args).await,
            Command::Inject(args) => inject::run(args).await,
            Command::KubeIngest(args) => k8s::ingest::run(args).await,
            Command::KubeReady(args) => k8s::ready::run(args).await,
            Command::Relay(args) => proxy::relay::serve(args).await,
        }
    };
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_of_every_suite_are_consistent() {
        Cli::command().debug_assert();
    }
}
