//! [`Cluster`]: a local control plane of real `trellis-controlplane`
//! processes, node 1 `init`, the others `join` with tokens.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::{CreateTokenRequest, Empty, Member, PutRequest};
use trellis_identity::admin_config::AdminConfig;

use crate::netns::Host;
use crate::process::{remove_env_prefixed, Proc};
use crate::{bin, free_port, wait_for};

/// How long one call to a node may take before the next node is asked.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One control-plane node process.
pub struct NodeProc {
    pub id: u64,
    pub dir: PathBuf,
    pub addr: String,
    pub log: PathBuf,
    /// The network namespace it runs in; `None`: the test's own.
    pub netns: Option<Host>,
    proc_: Proc,
}

impl NodeProc {
    /// Until it is killed or stopped.
    pub fn is_running(&self) -> bool {
        self.proc_.pid().is_some()
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc_.pid()
    }

    /// What the node printed so far.
    pub fn output(&self) -> String {
        self.proc_.output()
    }
}

/// A local control-plane cluster of real processes.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub trust_domain: String,
    /// In start order: node 1 first.
    pub nodes: Vec<NodeProc>,
    /// Extra flags for every node (timeouts, snapshot policy).
    pub node_flags: Vec<String>,
    /// The IP address nodes listen on (127.0.0.1 unless a test needs the
    /// control plane reachable from network namespaces).
    pub host: String,
    /// Extra environment for nodes started from now on (e.g. systemd's
    /// `NOTIFY_SOCKET`).
    pub node_env: Vec<(String, String)>,
}

impl Cluster {
    /// Its directory, no process yet: [`Cluster::spawn_init`] starts node 1.
    pub fn new(node_flags: &[&str]) -> anyhow::Result<Self> {
        Ok(Self {
            root: tempfile::Builder::new().prefix("trellis-e2e-").tempdir()?,
            trust_domain: "e2e.trellis.test".into(),
            nodes: Vec::new(),
            node_flags: node_flags.iter().map(|s| s.to_string()).collect(),
            host: "127.0.0.1".into(),
            node_env: Vec::new(),
        })
    }

    /// Starts node 1 with `init` and waits until it serves.
    pub async fn init(node_flags: &[&str]) -> anyhow::Result<Self> {
        let mut c = Self::new(node_flags)?;
        c.spawn_init()?;
        c.wait_ready(1).await?;
        c.wait_writable(1).await?;
        Ok(c)
    }

    /// Starts node 1 with `init`, without waiting for it.
    pub fn spawn_init(&mut self) -> anyhow::Result<()> {
        let dir = self.root.path().join("node-1");
        let addr = format!("{}:{}", self.host, free_port());
        let mut args = vec![
            "init".to_string(),
            "--trust-domain".into(),
            self.trust_domain.clone(),
        ];
        // No --ca-key-file: init generates the key in its data directory.
        args.extend(self.common_args(&dir, &addr, false));
        let log = self.log_path("node-1");
        let node = self.spawn(1, dir, addr, log, None, &args)?;
        self.nodes.push(node);
        Ok(())
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
        // A node in a Kubernetes cluster serves the admission webhooks, on
        // 0.0.0.0:15017 unless told: one port of its own each here.
        let flag = |f: &str| self.node_flags.iter().any(|a| a == f);
        if flag("--kubernetes") && !flag("--webhook-listen") {
            a.extend([
                "--webhook-listen".into(),
                format!("127.0.0.1:{}", free_port()),
            ]);
        }
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

    /// An admin config that talks to node `id` first, so that tokens made
    /// with it send their holders to that node (`NAME-admin.yaml`).
    pub fn admin_config_through(&self, id: u64, name: &str) -> anyhow::Result<PathBuf> {
        let mut cfg = AdminConfig::load(&self.admin_config())?;
        cfg.controlplanes = vec![self.node(id).addr.clone()];
        let path = self.root.path().join(format!("{name}-admin.yaml"));
        cfg.save(&path)?;
        Ok(path)
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.log"))
    }

    /// Starts a node process, inside `netns` if given, appending its
    /// output to `log`.
    fn spawn(
        &self,
        id: u64,
        dir: PathBuf,
        addr: String,
        log: PathBuf,
        netns: Option<Host>,
        args: &[String],
    ) -> anyhow::Result<NodeProc> {
        let program = bin("trellis-controlplane");
        let mut cmd = match &netns {
            Some(host) => host.command(program),
            None => Command::new(program),
        };
        cmd.args(args);
        remove_env_prefixed(&mut cmd, "TRELLIS_");
        cmd.env(
            "TRELLIS_LOG",
            "warn,trellis_controlplane=info,trellis_kubernetes=info",
        );
        cmd.envs(self.node_env.iter().map(|(k, v)| (k, v)));
        let name = match log.file_stem() {
            Some(stem) => format!("trellis-controlplane {}", stem.to_string_lossy()),
            None => "trellis-controlplane".into(),
        };
        let proc_ = Proc::spawn(&name, &mut cmd, &log)?;
        Ok(NodeProc {
            id,
            dir,
            addr,
            log,
            netns,
            proc_,
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
                let put = async {
                    let mut c = self.admin(id).await.ok()?;
                    c.put(PutRequest {
                        key: "e2e/ready".into(),
                        value: b"1".to_vec(),
                    })
                    .await
                    .ok()
                };
                // A put to a node that lost its leader may hang.
                tokio::time::timeout(CALL_TIMEOUT, put)
                    .await
                    .ok()
                    .flatten()
                    .map(drop)
            },
        )
        .await
    }

    /// Fails, with the end of its log, if node `id` has exited or was
    /// killed.
    pub fn check_running(&mut self, id: u64) -> anyhow::Result<()> {
        self.node_mut(id).proc_.check_running()
    }

    /// Creates a token with the CLI.
    pub fn token(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(&[&["token", "create"], args].concat())?;
        Ok(out.trim().to_string())
    }

    /// Creates a token through the admin API (no CLI involved).
    pub async fn create_token(&self, req: CreateTokenRequest) -> anyhow::Result<String> {
        let r = self
            .call_any("create a token", |mut c| {
                let req = req.clone();
                async move { c.create_token(req).await }
            })
            .await?;
        Ok(r.token)
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

    /// Joins a new node with a fresh single-use control-plane token, made
    /// through the admin API; see [`Cluster::join_with`].
    pub async fn join(&mut self, learner: bool) -> anyhow::Result<u64> {
        let token = self
            .create_token(CreateTokenRequest {
                kind: "controlplane".into(),
                max_uses: 1,
                ..Default::default()
            })
            .await?;
        self.join_with(&token, learner, &[]).await
    }

    /// Joins with a given token and extra flags; waits until the new node
    /// serves and is a member with the role asked for. Returns its id.
    pub async fn join_with(
        &mut self,
        token: &str,
        learner: bool,
        extra: &[&str],
    ) -> anyhow::Result<u64> {
        let mut flags: Vec<&str> = Vec::new();
        if learner {
            flags.push("--learner");
        }
        flags.extend(extra);
        // A --ca-key-file in `extra` replaces the cluster's.
        let with_key = !extra.contains(&"--ca-key-file");
        let host = self.host.clone();
        let role = if learner { "learner" } else { "voter" };
        self.join_node(token, &host, None, &flags, with_key, role)
            .await
    }

    /// Joins a cluster's node with a cluster token, listening on `host`
    /// (an address of its own), with `extra` flags: without the CA key
    /// unless it joins `--voter`. Waits until it serves and is a member
    /// with the role the flags give (a learner by default). Returns its id.
    pub async fn join_cluster(
        &mut self,
        token: &str,
        host: &str,
        extra: &[&str],
    ) -> anyhow::Result<u64> {
        self.join_cluster_in(token, host, None, extra).await
    }

    /// [`Cluster::join_cluster`] with the node run inside `netns` (a host
    /// of a [`crate::netns::Net`]), listening on `host`, one of its
    /// addresses.
    pub async fn join_cluster_in(
        &mut self,
        token: &str,
        host: &str,
        netns: Option<&Host>,
        extra: &[&str],
    ) -> anyhow::Result<u64> {
        let voter = extra.contains(&"--voter");
        let with_key = voter && !extra.contains(&"--ca-key-file");
        let role = if voter { "voter" } else { "learner" };
        self.join_node(token, host, netns, extra, with_key, role)
            .await
    }

    async fn join_node(
        &mut self,
        token: &str,
        host: &str,
        netns: Option<&Host>,
        flags: &[&str],
        with_key: bool,
        role: &str,
    ) -> anyhow::Result<u64> {
        // Unique per attempt: failed joins leave their directory and log.
        static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let seq = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.root.path().join(format!("joiner-{seq}"));
        let addr = format!("{host}:{}", free_port());
        let mut args = vec!["join".to_string(), "--token".into(), token.to_string()];
        args.extend(self.common_args(&dir, &addr, with_key));
        args.extend(flags.iter().map(|s| s.to_string()));
        // The node id is assigned by the cluster; log under a sequence
        // number until we know it.
        let log = self.log_path(&format!("joiner-{seq}"));
        let mut node = self.spawn(0, dir.clone(), addr.clone(), log, netns.cloned(), &args)?;
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
            &format!("node {id} to become a {role}"),
            || async {
                let members = self.members().await.ok()?;
                members
                    .iter()
                    .any(|m| m.node_id == id && m.role == role)
                    .then_some(())
            },
        )
        .await?;
        Ok(id)
    }

    /// Sends SIGKILL to a node.
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).proc_.kill();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self, id: u64) -> anyhow::Result<std::process::ExitStatus> {
        self.node_mut(id).proc_.terminate()
    }

    /// Restarts a stopped node from its data directory and waits for its
    /// ready line.
    pub async fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let (dir, addr, log, netns) = {
            let n = self.node(id);
            (
                n.dir.clone(),
                n.addr.clone(),
                n.log.clone(),
                n.netns.clone(),
            )
        };
        let mut args = vec!["run".to_string()];
        // A node with a CA key in its data directory (node 1, a cluster's
        // learner with its own) takes that one.
        let with_key = !dir.join("ca.key").exists();
        args.extend(self.common_args(&dir, &addr, with_key));
        let before = self.node(id).output().matches("ready: node").count();
        let proc_ = self.spawn(id, dir, addr, log, netns, &args)?;
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
    pub fn admin_tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(AdminConfig::load(&self.admin_config())?.tls()?)
    }

    /// An admin client to node `id`.
    pub async fn admin(&self, id: u64) -> anyhow::Result<AdminClient<Channel>> {
        admin_client(&self.node(id).addr, self.admin_tls()?).await
    }

    /// Members as seen by the first running node that answers.
    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        let r = self
            .call_any("list the members", |mut c| async move {
                c.members(Empty {}).await
            })
            .await?;
        Ok(r.members)
    }

    /// The current leader, as reported by running nodes.
    pub async fn leader(&self) -> Option<u64> {
        let members = self.members().await.ok()?;
        members.iter().find(|m| m.leader).map(|m| m.node_id)
    }

    /// `call` on the running nodes in turn, each bounded by
    /// [`CALL_TIMEOUT`], until one answers; else the last error.
    async fn call_any<T, F, Fut>(&self, what: &str, mut call: F) -> anyhow::Result<T>
    where
        F: FnMut(AdminClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = anyhow!("no node is running");
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let attempt = async { anyhow::Ok(call(self.admin(n.id).await?).await?) };
            match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(e)) => last = e.context(format!("node {}", n.id)),
                Err(_) => last = anyhow!("node {} did not answer within {CALL_TIMEOUT:?}", n.id),
            }
        }
        Err(last.context(format!("no node would {what}")))
    }
}

/// An admin client to the node at `addr`.
pub async fn admin_client(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<AdminClient<Channel>> {
    let (ch, _) = trellis_identity::grpc::connect_any(&[addr.to_string()], tls, None).await?;
    Ok(AdminClient::new(ch))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Before `root` goes: the processes die before their directory.
        for n in &mut self.nodes {
            n.proc_.kill();
        }
        if std::thread::panicking() {
            // Show what the nodes said: the directory goes with the test.
            for n in &self.nodes {
                eprintln!("--- node {} ({}) ---\n{}", n.id, n.addr, n.output());
            }
        }
    }
}
