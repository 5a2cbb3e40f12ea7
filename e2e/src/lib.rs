//! End-to-end harness: starts the real `trellis-controlplane` and `trellis`
//! binaries as processes on loopback, and talks to them through the real
//! mTLS gRPC API with the admin identity their `init` wrote.
//!
//! [`Cluster`] owns a temporary directory with one data directory and one
//! log file per node; dropping it kills every process it started.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_identity::admin_config::AdminConfig;

/// The directory holding the binaries of the profile these tests were built
/// with; builds them first (once per test process) so `cargo test` alone is
/// enough.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/PROFILE/deps/TEST-HASH → target/PROFILE
        let dir = exe
            .parent()
            .and_then(|p| p.parent())
            .expect("target dir")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "trellis-controlplane",
            "-p",
            "trellis",
        ]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        dir
    })
}

/// Path of one of our binaries.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

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

/// One control-plane node process.
pub struct NodeProc {
    pub id: u64,
    pub dir: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What the node printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A local control-plane cluster of real processes.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub trust_domain: String,
    pub nodes: Vec<NodeProc>,
    /// Extra flags for every node (timeouts, snapshot policy).
    pub node_flags: Vec<String>,
}

impl Cluster {
    /// Starts node 1 with `init` and waits until it serves.
    pub async fn init(node_flags: &[&str]) -> anyhow::Result<Self> {
        let mut c = Self {
            root: tempfile::Builder::new().prefix("trellis-e2e-").tempdir()?,
            trust_domain: "e2e.trellis.test".into(),
            nodes: Vec::new(),
            node_flags: node_flags.iter().map(|s| s.to_string()).collect(),
        };
        let dir = c.root.path().join("node-1");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "init".to_string(),
            "--trust-domain".into(),
            c.trust_domain.clone(),
        ];
        // No --ca-key-file: init generates the key in its data directory.
        args.extend(c.common_args(&dir, &addr, false));
        let log = c.log_path("node-1");
        let node = c.spawn(1, dir, addr, log, &args)?;
        c.nodes.push(node);
        c.wait_ready(1).await?;
        c.wait_writable(1).await?;
        Ok(c)
    }

    /// `init` then `join` until there are `n` voters, all ready.
    pub async fn start(n: usize, node_flags: &[&str]) -> anyhow::Result<Self> {
        let mut c = Self::init(node_flags).await?;
        for _ in 1..n {
            c.join(false).await?;
        }
        Ok(c)
    }

    fn common_args(&self, dir: &Path, addr: &str, with_key: bool) -> Vec<String> {
        let mut a = vec![
            "--data-dir".to_string(),
            dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
        ];
        if with_key {
            a.extend([
                "--ca-key-file".into(),
                self.ca_key_file().display().to_string(),
            ]);
        }
        a.extend(self.node_flags.iter().cloned());
        a
    }

    /// The CA key written by `init` (shared by every node).
    pub fn ca_key_file(&self) -> PathBuf {
        self.root.path().join("node-1").join("ca.key")
    }

    /// The admin config written by `init`.
    pub fn admin_config(&self) -> PathBuf {
        self.root.path().join("node-1").join("admin.yaml")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.log"))
    }

    /// Starts a node process appending its output to `log`.
    fn spawn(
        &self,
        id: u64,
        dir: PathBuf,
        addr: String,
        log: PathBuf,
        args: &[String],
    ) -> anyhow::Result<NodeProc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(bin("trellis-controlplane"))
            .args(args)
            .env("TRELLIS_LOG", "warn,trellis_controlplane=info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .context("starting trellis-controlplane")?;
        Ok(NodeProc {
            id,
            dir,
            addr,
            log,
            child: Some(child),
        })
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .expect("no such node")
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("no such node")
    }

    /// Waits until node `id` printed its ready line (after its latest start).
    pub async fn wait_ready(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        wait_for(
            Duration::from_secs(30),
            &format!("node {id} ready"),
            || async {
                let out = node.output();
                if out.contains("error:") {
                    return Some(Err(anyhow!("node {id} failed:\n{out}")));
                }
                out.contains("ready: node").then_some(Ok(()))
            },
        )
        .await?
    }

    /// Waits until a write through node `id` succeeds.
    pub async fn wait_writable(&self, id: u64) -> anyhow::Result<()> {
        wait_for(
            Duration::from_secs(30),
            &format!("a write through node {id}"),
            || async {
                let mut c = self.admin(id).await.ok()?;
                c.put(trellis_api::v1::PutRequest {
                    key: "e2e/ready".into(),
                    value: b"1".to_vec(),
                })
                .await
                .ok()
                .map(|_| ())
            },
        )
        .await
    }

    /// Creates a token with the CLI.
    pub fn token(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(&[&["token", "create"], args].concat())?;
        Ok(out.trim().to_string())
    }

    /// Runs the CLI with the admin config; returns stdout, fails on non-zero exit.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli_raw(args)?;
        if !out.status.success() {
            bail!(
                "trellis {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the CLI and returns its whole output.
    pub fn cli_raw(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(bin("trellis"))
            .arg("--config")
            .arg(self.admin_config())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running trellis")
    }

    /// Joins a new node with a fresh control-plane token; waits until it is
    /// a member and serves. Returns its id.
    pub async fn join(&mut self, learner: bool) -> anyhow::Result<u64> {
        let token = self.token(&["--kind", "controlplane", "--uses", "1"])?;
        self.join_with(&token, learner, &[]).await
    }

    /// Joins with a given token and extra flags; returns the new node's id.
    pub async fn join_with(
        &mut self,
        token: &str,
        learner: bool,
        extra: &[&str],
    ) -> anyhow::Result<u64> {
        // Unique per attempt: failed joins leave their directory and log.
        static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let seq = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.path().join(format!("joiner-{seq}"));
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["join".to_string(), "--token".into(), token.to_string()];
        if learner {
            args.push("--learner".into());
        }
        // A --ca-key-file in `extra` replaces the cluster's.
        args.extend(self.common_args(&dir, &addr, !extra.contains(&"--ca-key-file")));
        args.extend(extra.iter().map(|s| s.to_string()));
        // The node id is assigned by the cluster; log under a sequence
        // number until we know it.
        let log = self.log_path(&format!("joiner-{seq}"));
        let mut node = self.spawn(0, dir.clone(), addr.clone(), log, &args)?;
        let id = wait_for(Duration::from_secs(30), "the joining node's id", || async {
            let out = node.output();
            if out.contains("error:") {
                return Some(Err(anyhow!("join failed:\n{out}")));
            }
            let line = out.lines().find(|l| l.starts_with("joined mesh"))?;
            let id: u64 = line
                .split(" as node ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some(Ok(id))
        })
        .await??;
        node.id = id;
        self.nodes.push(node);
        self.wait_ready(id).await?;
        wait_for(
            Duration::from_secs(60),
            &format!("node {id} to become a member"),
            || async {
                let members = self.members().await.ok()?;
                members.iter().any(|m| m.node_id == id).then_some(())
            },
        )
        .await?;
        Ok(id)
    }

    /// Sends SIGKILL to a node.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node_mut(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self, id: u64) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.node_mut(id).child.take() else {
            bail!("node {id} is not running");
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        Ok(c.wait()?)
    }

    /// Restarts a stopped node from its data directory.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let (dir, addr, log) = {
            let n = self.node(id);
            (n.dir.clone(), n.addr.clone(), n.log.clone())
        };
        let mut args = vec!["run".to_string()];
        args.extend(self.common_args(&dir, &addr, true));
        let before = self.node(id).output().matches("ready: node").count();
        let proc_ = self.spawn(id, dir, addr, log, &args)?;
        *self.node_mut(id) = proc_;
        let node = self.node(id);
        wait_for(
            Duration::from_secs(30),
            &format!("node {id} ready again"),
            || async { (node.output().matches("ready: node").count() > before).then_some(()) },
        )
        .await
    }

    /// The admin TLS config.
    pub fn admin_tls(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        Ok(AdminConfig::load(&self.admin_config())?.tls()?)
    }

    /// An admin client to node `id`.
    pub async fn admin(&self, id: u64) -> anyhow::Result<AdminClient<Channel>> {
        let tls = self.admin_tls()?;
        let (ch, _) =
            trellis_identity::grpc::connect_any(&[self.node(id).addr.clone()], tls).await?;
        Ok(AdminClient::new(ch))
    }

    /// Members as seen by the first running node that answers.
    pub async fn members(&self) -> anyhow::Result<Vec<trellis_api::v1::Member>> {
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            if let Ok(mut c) = self.admin(n.id).await {
                if let Ok(r) = c.members(trellis_api::v1::Empty {}).await {
                    return Ok(r.into_inner().members);
                }
            }
        }
        bail!("no node answered")
    }

    /// The current leader, as reported by running nodes.
    pub async fn leader(&self) -> Option<u64> {
        let members = self.members().await.ok()?;
        members.iter().find(|m| m.leader).map(|m| m.node_id)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // Show what the nodes said: the directory goes with the test.
            for n in &self.nodes {
                eprintln!("--- node {} ({}) ---\n{}", n.id, n.addr, n.output());
            }
        }
    }
}
