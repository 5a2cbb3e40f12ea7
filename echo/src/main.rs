//! `trellis-echo`: parses flags, serves until SIGINT or SIGTERM.
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hyper::Uri;
use tokio::signal::unix::{signal, SignalKind};
use trellis_echo::{Callees, Config, Responder, DEFAULT_CALL_TIMEOUT_MS};

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
    /// Cluster reported in every HTTP response (not in gRPC's), e.g. the
    /// mesh cluster the workload runs in.
    #[arg(long, default_value = "")]
    cluster: String,
    /// Before answering an HTTP request with its report, GET URL over
    /// HTTP/1.1, passing on the request's tracing and routing headers, and
    /// add the answer to the report's `calls`; repeatable, called in
    /// order. E.g. http://127.0.0.1:19081/details.
    #[arg(long, value_name = "URL")]
    call: Vec<Uri>,
    /// How long each --call may take, from connecting to the end of the
    /// answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_CALL_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    call_timeout_ms: u64,
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
        workload: Responder {
            service: cli.name,
            version: cli.version,
            identity: cli.identity,
            cluster: cli.cluster,
        },
        callees: Callees {
            urls: cli.call,
            timeout: Duration::from_millis(cli.call_timeout_ms),
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
