//! End-to-end harness: starts the real `trellis-controlplane` and `trellis`
//! binaries as processes on loopback, and talks to them through the real
//! mTLS gRPC API with the admin identity their `init` wrote. Used by the
//! tests in `tests/` and by `trellis-bench` (`bench/`).
//!
//! [`Cluster`] owns a temporary directory with one data directory and one
//! log file per node; dropping it kills every process it started. Each node
//! runs under a [`Proc`], a child process killed when its guard is
//! dropped. [`bin_dir`] finds (and first builds) the binaries of the
//! profile the running executable was built with.
#![forbid(unsafe_code)]

mod bins;
mod cluster;
pub mod mesh;
pub mod netns;
mod process;
pub mod upgrade;

pub use bins::{bin, bin_dir, profile_dir, use_bins};
pub use cluster::{admin_client, Cluster, NodeProc};
pub use process::{remove_env_prefixed, Proc};

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::bail;

/// A free TCP port on 127.0.0.1 (released before use: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits for `f` to return `Some` within `timeout`, polling.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
