//! `trellis-eastwest`: flags, logging and the runtime; the rest is the library.
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

fn main() -> anyhow::Result<()> {
    let opts = trellis_eastwest::Options::parse();
    let filter = EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let set_level: trellis_dataplane::admin::SetLogLevel = Arc::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("bad level `{level}`: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.concurrency as usize)
        .enable_all()
        .build()?
        .block_on(trellis_eastwest::run(opts, set_level))?;
    Ok(())
}
