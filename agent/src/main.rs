//! `trellis-agent`: flags, logging and the runtime; the rest is the library.
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

fn main() -> anyhow::Result<()> {
    let opts = trellis_agent::Options::parse();
    if opts.remove_capture {
        trellis_agent::capture::remove_all();
        return Ok(());
    }
    if opts.install_capture {
        trellis_agent::install_capture_only(&opts)?;
        println!("trellis-agent: capture installed ({})", opts.capture.name());
        return Ok(());
    }
    if let Some(pid) = opts.hot_restart {
        let timeout = trellis_agent::restart::HANDOFF_TIMEOUT * 2;
        match trellis_agent::restart::request(pid, &opts.data_dir, timeout) {
            Ok(new) => {
                println!("trellis-agent: process {pid} handed over to process {new}");
                return Ok(());
            }
            Err(e) => anyhow::bail!("hot restart of process {pid}: {e}"),
        }
    }
    // Before any thread starts: it reads (and removes) an environment
    // variable.
    let handoff = trellis_transport::handoff::Received::from_env()?;
    trellis_agent::options::check(&opts)?;
    let filter = EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only on a terminal: not in journald or a log file.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let set_level: trellis_dataplane::admin::SetLogLevel = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("bad level `{level}`: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    // One worker: a current-thread runtime, which skips the cross-thread
    // wake-ups and work stealing a one-worker multi-thread runtime still pays.
    let mut runtime = if opts.concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(opts.concurrency);
        b
    };
    runtime
        .enable_all()
        .build()?
        .block_on(trellis_agent::run(opts, set_level, handoff))?;
    Ok(())
}
