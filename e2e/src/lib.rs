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

/// reviews as a VM service: a ServiceEntry on port 9080 selecting the
/// WorkloadEntries labelled `app: reviews`, and their WorkloadGroup
/// (service account `reviews`), for the multi-cluster tests.
pub const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews}
spec:
  metadata: {labels: {app: reviews}}
  template: {serviceAccount: reviews}
"#;

mod bins;
mod cluster;
pub mod cut;
pub mod helm;
pub mod kind;
pub mod kube;
pub mod kube_mesh;
pub mod kube_webhook;
pub mod kubelet;
pub mod loopback;
pub mod mesh;
pub mod netns;
mod process;
pub mod reviews;
pub mod shared;
pub mod steady;
pub mod third_party;
pub mod upgrade;
pub mod vm;
pub mod vm_mesh;
pub mod vm_upgrade;

pub use bins::{bin, bin_dir, profile_dir, use_bins};
pub use cluster::{admin_client, Cluster, NodeProc};
pub use process::{remove_env_prefixed, Proc};

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

pub use trellis_testing::{wait_for_blocking, Timeout};

/// A free TCP port on 127.0.0.1 (released before use: good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// [`trellis_testing::wait_for`] with its [`Timeout`] as an
/// [`anyhow::Error`], as the harness, the tests and `trellis-bench` use it:
/// waits for `f` to return `Some` within `timeout`, polling.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    Ok(trellis_testing::wait_for(timeout, what, f).await?)
}

/// Gives an agent's `cmd` its listeners on `ip`, at Istio's ports:
/// inbound 15006, outbound 15001, admin 15000, metrics 15020, DNS 15053
/// (a test that runs several agents gives each an address of its own).
pub fn agent_listeners(cmd: &mut std::process::Command, ip: &str) {
    for (flag, port) in [
        ("--inbound", 15006),
        ("--outbound", 15001),
        ("--admin", 15000),
        ("--metrics", 15020),
        ("--dns", 15053),
    ] {
        cmd.args([flag, &format!("{ip}:{port}")]);
    }
}

/// Whether `program` is on PATH (`command -v`).
pub fn on_path(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
