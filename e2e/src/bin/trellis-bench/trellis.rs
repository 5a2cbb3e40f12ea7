//! A local Trellis control plane: node 1 `init`, the others `join` with
//! tokens created through the admin API, all on 127.0.0.1 with their data
//! in a temporary directory.
//!
//! This is `trellis_e2e::Cluster` pared down to what the benchmark needs,
//! with the binary's path given: `trellis_e2e::bin_dir()` finds the
//! binaries from a test executable's place (`target/PROFILE/deps/`), which
//! is one level off for a `[[bin]]` like this one.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::{CreateTokenRequest, Empty, Member, PutRequest};
use trellis_e2e::{free_port, wait_for};
use trellis_identity::admin_config::AdminConfig;

use crate::cluster::{BenchCluster, Client};
use crate::probe;
use crate::process::Proc;

const TRUST_DOMAIN: &str = "bench.trellis.test";
/// How long a node may take to start, join or become a member.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Node {
    proc_: Proc,
    addr: String,
    /// Start order from 1; the data directory is `node-SEQ`.
    seq: usize,
}

/// A running Trellis control plane.
pub struct TrellisCluster {
    // Before `root`: the processes die before their directory goes.
    nodes: Vec<Node>,
    tls: Arc<rustls::ClientConfig>,
    bin: PathBuf,
    root: tempfile::TempDir,
}

impl TrellisCluster {
    /// Starts `n` voters and waits until a write through each succeeds.
    pub async fn start(bin: &Path, n: usize) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new()
            .prefix("trellis-bench-")
            .tempdir()?;
        let dir1 = root.path().join("node-1");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["init".into(), "--trust-domain".into(), TRUST_DOMAIN.into()];
        args.extend(node_args(&dir1, &addr));
        let node = spawn(bin, root.path(), 1, &args, addr)?;
        wait_ready(&node).await?;
        let tls = AdminConfig::load(&dir1.join("admin.yaml"))?.tls()?;
        let mut c = Self {
            nodes: vec![node],
            tls,
            bin: bin.to_path_buf(),
            root,
        };
        c.wait_writable(0).await?;
        for i in 2..=n {
            c.join(i).await?;
        }
        for i in 0..n {
            c.wait_writable(i).await?;
        }
        Ok(c)
    }

    async fn join(&mut self, seq: usize) -> anyhow::Result<()> {
        let token = self
            .admin(0)
            .await?
            .create_token(CreateTokenRequest {
                kind: "controlplane".into(),
                max_uses: 1,
                ..Default::default()
            })
            .await?
            .into_inner()
            .token;
        let dir = self.root.path().join(format!("node-{seq}"));
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["join".into(), "--token".into(), token];
        args.extend(node_args(&dir, &addr));
        args.extend(self.ca_key_args());
        let node = spawn(&self.bin, self.root.path(), seq, &args, addr.clone())?;
        wait_ready(&node).await?;
        self.nodes.push(node);
        wait_for(
            START_TIMEOUT,
            &format!("{addr} to become a voter"),
            || async {
                let members = self.members().await.ok()?;
                members
                    .iter()
                    .any(|m| m.address == addr && m.role == "voter")
                    .then_some(())
            },
        )
        .await
    }

    /// Every node but the first is given the first node's CA key.
    fn ca_key_args(&self) -> [String; 2] {
        let key = self.root.path().join("node-1").join("ca.key");
        ["--ca-key-file".into(), key.display().to_string()]
    }

    async fn admin(&self, node: usize) -> anyhow::Result<AdminClient<Channel>> {
        connect(&self.nodes[node].addr, self.tls.clone()).await
    }

    async fn members(&self) -> anyhow::Result<Vec<Member>> {
        let mut last = anyhow!("no node is running");
        for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].proc_.pid().is_some()) {
            let r = async { Ok(self.admin(i).await?.members(Empty {}).await?.into_inner()) };
            match tokio::time::timeout(Duration::from_secs(2), r).await {
                Ok(Ok(m)) => return Ok(m.members),
                Ok(Err(e)) => last = e,
                Err(_) => last = anyhow!("node {i} did not answer"),
            }
        }
        Err(last)
    }

    async fn wait_writable(&self, node: usize) -> anyhow::Result<()> {
        let addr = self.nodes[node].addr.clone();
        let tls = self.tls.clone();
        probe::first_success(
            Instant::now(),
            START_TIMEOUT,
            &format!("Trellis node {addr}"),
            move || put_once(addr.clone(), tls.clone()),
        )
        .await
        .map(drop)
    }
}

impl BenchCluster for TrellisCluster {
    fn name(&self) -> &'static str {
        "Trellis"
    }

    fn transport(&self) -> &'static str {
        "gRPC over mTLS (admin identity)"
    }

    fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.proc_.pid()).collect()
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    async fn client(&self, node: usize) -> anyhow::Result<Client> {
        Ok(Client::Trellis(self.admin(node).await?))
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        let members = self.members().await?;
        let leader = members
            .iter()
            .find(|m| m.leader)
            .context("the cluster reports no leader")?;
        self.nodes
            .iter()
            .position(|n| n.addr == leader.address)
            .with_context(|| format!("leader {} is not one of ours", leader.address))
    }

    fn kill(&mut self, node: usize) {
        self.nodes[node].proc_.kill();
    }

    async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        let (seq, addr) = (self.nodes[node].seq, self.nodes[node].addr.clone());
        let dir = self.root.path().join(format!("node-{seq}"));
        let mut args = vec!["run".to_string()];
        args.extend(node_args(&dir, &addr));
        args.extend(self.ca_key_args());
        self.nodes[node] = spawn(&self.bin, self.root.path(), seq, &args, addr)?;
        let res = self.wait_writable(node).await;
        self.nodes[node].proc_.check_running()?;
        res
    }
}

/// Time from starting `init` of a fresh node until a write through it
/// succeeds (the admin config it writes is polled for).
pub async fn time_to_first_write(bin: &Path) -> anyhow::Result<Duration> {
    let root = tempfile::Builder::new()
        .prefix("trellis-bench-start-")
        .tempdir()?;
    let dir = root.path().join("node-1");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["init".into(), "--trust-domain".into(), TRUST_DOMAIN.into()];
    args.extend(node_args(&dir, &addr));
    let admin_yaml = dir.join("admin.yaml");
    let since = Instant::now();
    let mut node = spawn(bin, root.path(), 1, &args, addr.clone())?;
    let took = probe::first_success(since, START_TIMEOUT, "a fresh Trellis node", || {
        let (addr, admin_yaml) = (addr.clone(), admin_yaml.clone());
        async move {
            let tls = AdminConfig::load(&admin_yaml)?.tls()?;
            put_once(addr, tls).await
        }
    })
    .await;
    node.proc_.check_running()?;
    took
}

fn node_args(dir: &Path, addr: &str) -> Vec<String> {
    vec![
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        addr.into(),
    ]
}

fn spawn(
    bin: &Path,
    root: &Path,
    seq: usize,
    args: &[String],
    addr: String,
) -> anyhow::Result<Node> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("TRELLIS_LOG", "warn,trellis_controlplane=info");
    // Settings in the caller's environment would apply to every node.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TRELLIS_") && k != "TRELLIS_LOG" {
            cmd.env_remove(k);
        }
    }
    let log: PathBuf = root.join(format!("node-{seq}.log"));
    Ok(Node {
        proc_: Proc::spawn(&format!("trellis-controlplane node {seq}"), &mut cmd, &log)?,
        addr,
        seq,
    })
}

async fn wait_ready(node: &Node) -> anyhow::Result<()> {
    wait_for(START_TIMEOUT, &format!("{} ready", node.addr), || async {
        let out = node.proc_.output();
        if out.contains("error:") {
            return Some(Err(anyhow!("{} failed:\n{out}", node.addr)));
        }
        out.contains("ready: node").then_some(Ok(()))
    })
    .await?
}

async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<AdminClient<Channel>> {
    let (ch, _) = trellis_identity::grpc::connect_any(&[addr.to_string()], tls).await?;
    Ok(AdminClient::new(ch))
}

async fn put_once(addr: String, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    let mut c = connect(&addr, tls).await?;
    c.put(PutRequest {
        key: "bench/ready".into(),
        value: b"1".to_vec(),
    })
    .await?;
    Ok(())
}

/// Fails unless `bin` exists, with what to do about it.
pub fn check_binary(bin: &Path) -> anyhow::Result<()> {
    if !bin.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p trellis-controlplane`",
            bin.display()
        );
    }
    Ok(())
}
