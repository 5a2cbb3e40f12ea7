//! `trellis-echo`: parses flags, serves until SIGINT or SIGTERM.
use std::net::SocketAddr;
use std::num::NonZeroUsize;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use trellis_echo::{Config, Workload};

#[derive(Parser)]
#[command(
    name = "trellis-echo",
    about = "Test workload: answers with who it is and what it received",
    // --version is the version this workload reports.
    disable_version_flag = true
)]
struct Cli {
    /// Serve HTTP/1.1 and h2c (prior knowledge) on ADDR, e.g. 0.0.0.0:8080;
    /// repeatable.
    #[arg(long, value_name = "ADDR")]
    http: Vec<SocketAddr>,
    /// Serve the gRPC echo service (h2c) on ADDR; repeatable.
    #[arg(long, value_name = "ADDR")]
    grpc: Vec<SocketAddr>,
    /// Echo raw TCP bytes on ADDR; repeatable.
    #[arg(long, value_name = "ADDR")]
    tcp: Vec<SocketAddr>,
    /// Service name reported in every response.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Version reported in every response.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Identity reported in every response, e.g. the workload's SPIFFE id.
    #[arg(long, default_value = "")]
    identity: String,
    /// Worker threads of the runtime.
    #[arg(long, default_value = "1")]
    threads: NonZeroUsize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config {
        http: cli.http,
        grpc: cli.grpc,
        tcp: cli.tcp,
        workload: Workload {
            service: cli.name,
            version: cli.version,
            identity: cli.identity,
        },
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.get())
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = trellis_echo::serve(config).await?;
    eprintln!("trellis-echo listening {}", server.listening());
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("handling SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
