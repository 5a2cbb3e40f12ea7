//! The demo's processes, started, watched and stopped: the control plane
//! (`init`, then two `join`s with tokens: cluster-1's voters), the second
//! cluster's node (a `join` with a cluster token: a learner), an east-west
//! gateway per network, an echo server and an agent per workload, and the
//! client agent; and the conditions waited on between the steps, each with
//! a deadline.
//!
//! Every child runs in its own process group, so a Ctrl-C at the terminal
//! reaches only the demo, which then stops them in order: SIGTERM to the
//! workloads and agents, then to the control plane, SIGKILL to whatever is
//! left after a grace period. Their output goes to `DIR/logs/`, their pids
//! to `DIR/pids` as they start (for `kill` by hand should the demo itself
//! be killed with SIGKILL).
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::{
    ApplyConfigRequest, CreateTokenRequest, Empty, GetConfigRequest, ProxyStatus,
};
use trellis_identity::admin_config::AdminConfig;

use super::bookinfo::{
    self, Network, ServiceVersion, Topology, CLIENT_IDENTITY, NAMESPACE, NETWORKS, NETWORK_1,
    NETWORK_2, TRUST_DOMAIN,
};
use super::http::Http;
use crate::client::status;
use crate::config::{read_sources, sync_status};

/// The binaries the demo starts, found beside the running `trellis`.
pub struct Bins {
    pub controlplane: PathBuf,
    pub agent: PathBuf,
    pub eastwest: PathBuf,
    pub echo: PathBuf,
}

impl Bins {
    /// Beside [`std::env::current_exe`].
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the trellis executable")?;
        let dir = exe
            .parent()
            .context("the trellis executable has no directory")?;
        Self::find_in(dir)
    }

    /// In `dir`, or an error naming the first one missing.
    pub fn find_in(dir: &Path) -> anyhow::Result<Self> {
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(anyhow!(
                    "`{name}` is not in {} beside this trellis: the demo runs the binaries \
                     of the same build. Build them first with `cargo build --release` (or \
                     `cargo build`), then run target/release/trellis demo (or target/debug/...)",
                    dir.display()
                ))
            }
        };
        Ok(Self {
            controlplane: find("trellis-controlplane")?,
            agent: find("trellis-agent")?,
            eastwest: find("trellis-eastwest")?,
            echo: find("trellis-echo")?,
        })
    }
}

/// Where things go in the demo directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// Creates the folders under `root`.
    pub fn create(root: &Path) -> anyhow::Result<Self> {
        let l = Self {
            root: root.to_path_buf(),
        };
        for d in [
            l.logs(),
            l.mesh(),
            l.root.join("controlplane"),
            l.root.join("agents"),
            l.root.join("gateways"),
        ] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(l)
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The mesh's Istio resources, as applied.
    pub fn mesh(&self) -> PathBuf {
        self.root.join("mesh")
    }
    /// The admin config for `trellis` (`TRELLIS_CONFIG`).
    pub fn admin_config(&self) -> PathBuf {
        self.root.join("admin.yaml")
    }
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }
    pub fn report(&self) -> PathBuf {
        self.root.join("report.json")
    }
    fn node(&self, i: usize) -> PathBuf {
        self.root.join("controlplane").join(format!("node-{i}"))
    }
    fn agent(&self, name: &str) -> PathBuf {
        self.root.join("agents").join(name)
    }
    fn gateway(&self, network: &str) -> PathBuf {
        self.root.join("gateways").join(network)
    }
}

/// The order children are stopped in: workloads before the control plane
/// they report to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Workload,
    ControlPlane,
}

struct Child {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    tier: Tier,
    process: tokio::process::Child,
    exited: Option<ExitStatus>,
}

impl Child {
    /// The end of its log, for an error message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Every process the demo started.
pub struct Children {
    pids: PathBuf,
    list: Vec<Child>,
}

impl Children {
    /// Records pids in `pids` (a line `PID NAME` each).
    pub fn new(pids: PathBuf) -> Self {
        Self {
            pids,
            list: Vec::new(),
        }
    }

    /// How many were started.
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// Starts `program` with `args` and `env`, in its own process group,
    /// without the caller's `TRELLIS_` variables (a `TRELLIS_CONFIG` or
    /// `TRELLIS_TOKEN` there is not the demo's), its output to `log`.
    fn spawn(
        &mut self,
        name: &str,
        tier: Tier,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<()> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let process = self.start(name, program, args, env, out)?;
        self.list.push(Child {
            name: name.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            log,
            tier,
            process,
            exited: None,
        });
        Ok(())
    }

    /// The process of [`Self::spawn`], its pid recorded.
    fn start(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        out: std::fs::File,
    ) -> anyhow::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            // Should the demo unwind without stopping them.
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TRELLIS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let process = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = process.id().unwrap_or_default();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pids)
            .with_context(|| format!("writing {}", self.pids.display()))?;
        writeln!(f, "{pid} {name}")?;
        Ok(process)
    }

    fn named(&mut self, name: &str) -> anyhow::Result<&mut Child> {
        self.list
            .iter_mut()
            .find(|c| c.name == name)
            .with_context(|| format!("the demo started no process named {name}"))
    }

    /// Kills `name` with SIGKILL, as a crash would end it, and waits for
    /// it: it is then not reported as exited.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let c = self.named(name)?;
        c.process
            .kill()
            .await
            .with_context(|| format!("killing {name}"))?;
        c.exited = c.process.try_wait()?;
        Ok(())
    }

    /// Starts `name` again, killed by [`Self::kill`], with the same
    /// arguments, its output appended to its log. Without the environment
    /// it was first given: that is a join token, spent by now; an agent
    /// restarts on the certificate in its data directory.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let c = self.named(name)?;
        if c.exited.is_none() {
            bail!("{name} is still running");
        }
        let (program, args, log) = (c.program.clone(), c.args.clone(), c.log.clone());
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let process = self.start(name, &program, &args, &[], out)?;
        let c = self.named(name)?;
        c.process = process;
        c.exited = None;
        Ok(())
    }

    /// Those that exited since the last look: name, status and log.
    pub fn newly_exited(&mut self) -> Vec<(String, ExitStatus, PathBuf)> {
        let mut v = Vec::new();
        for c in &mut self.list {
            if c.exited.is_some() {
                continue;
            }
            if let Ok(Some(st)) = c.process.try_wait() {
                c.exited = Some(st);
                v.push((c.name.clone(), st, c.log.clone()));
            }
        }
        v
    }

    /// Fails, with the end of its log, if a child has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        if let Some((name, st, _)) = self.newly_exited().into_iter().next() {
            let c = self.list.iter().find(|c| c.name == name).expect("listed");
            bail!(
                "{name} exited ({st}); the end of {}:\n{}",
                c.log.display(),
                c.tail()
            );
        }
        Ok(())
    }

    /// Stops every child: SIGTERM by tier, each tier given `grace` to
    /// exit, then SIGKILL. Returns how many had to be killed.
    pub async fn stop(&mut self, grace: Duration) -> usize {
        let mut killed = 0;
        for tier in [Tier::Workload, Tier::ControlPlane] {
            let group: Vec<&mut Child> = self
                .list
                .iter_mut()
                .filter(|c| c.tier == tier && c.exited.is_none())
                .collect();
            for c in &group {
                if let Some(pid) = c
                    .process
                    .id()
                    .and_then(|p| rustix::process::Pid::from_raw(p as i32))
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
            let deadline = tokio::time::Instant::now() + grace;
            for c in group {
                match tokio::time::timeout_at(deadline, c.process.wait()).await {
                    Ok(Ok(st)) => c.exited = Some(st),
                    _ => {
                        killed += 1;
                        let _ = c.process.kill().await;
                        c.exited = c.process.try_wait().ok().flatten();
                    }
                }
            }
        }
        killed
    }
}

/// Polls `f` until it gives `Ok`, failing if a child exits or `timeout`
/// passes; `f`'s `Err` says what it saw, for the timeout's message.
async fn wait_until<T, F, Fut>(
    kids: &mut Children,
    timeout: Duration,
    what: &str,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        kids.check()
            .with_context(|| format!("while waiting for {what}"))?;
        let last = match f().await {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One admin call, bounded: a node without a leader may not answer.
async fn bounded<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(status(s).to_string()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// `n` distinct free ports on 127.0.0.1, all bound at once so they differ,
/// then released for the processes to take.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .context("finding free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Whether every address in `addrs` can be listened on now.
pub fn all_free(addrs: &[SocketAddr]) -> bool {
    addrs.iter().all(|a| TcpListener::bind(a).is_ok())
}

/// A token from the admin API.
async fn token(admin: &AdminClient<Channel>, req: CreateTokenRequest) -> Result<String, String> {
    let mut c = admin.clone();
    bounded(c.create_token(req)).await.map(|r| r.token)
}

fn controlplane_token() -> CreateTokenRequest {
    CreateTokenRequest {
        kind: "controlplane".into(),
        ttl_seconds: 600,
        max_uses: 1,
        ..Default::default()
    }
}

/// Starts a 3-node control plane on free ports of 127.0.0.1: `init`, then
/// a `join` at a time, each waited on until it is a voter. Returns an
/// admin client and the nodes' addresses.
pub async fn start_controlplane(
    kids: &mut Children,
    bins: &Bins,
    layout: &Layout,
) -> anyhow::Result<(AdminClient<Channel>, Vec<String>)> {
    let addrs: Vec<String> = free_ports(3)?
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let node = |i: usize| layout.node(i).display().to_string();
    let log = |i: usize| layout.logs().join(format!("controlplane-{i}.log"));
    let init = [
        "init",
        "--trust-domain",
        TRUST_DOMAIN,
        "--data-dir",
        &node(1),
        "--listen",
        &addrs[0],
    ];
    let init: Vec<String> = init.iter().map(|s| s.to_string()).collect();
    kids.spawn(
        "controlplane-1",
        Tier::ControlPlane,
        &bins.controlplane,
        &init,
        &[],
        log(1),
    )?;

    // init writes its admin config, then serves; the first token it makes
    // shows it is up and has elected itself.
    let written = layout.node(1).join("admin.yaml");
    let first_token = wait_until(
        kids,
        Duration::from_secs(30),
        "controlplane-1 to serve",
        || async {
            AdminConfig::load(&written).map_err(|e| e.to_string())?;
            std::fs::copy(&written, layout.admin_config()).map_err(|e| e.to_string())?;
            let admin = connect(layout).await?;
            token(&admin, controlplane_token()).await
        },
    )
    .await?;
    let ca_key = layout.node(1).join("ca.key").display().to_string();
    let mut tok = Some(first_token);
    for i in 2..=3 {
        let t = match tok.take() {
            Some(t) => t,
            None => {
                let admin = connect(layout).await.map_err(|e| anyhow!(e))?;
                token(&admin, controlplane_token())
                    .await
                    .map_err(|e| anyhow!(e))?
            }
        };
        let args: Vec<String> = [
            "join",
            "--data-dir",
            &node(i),
            "--listen",
            &addrs[i - 1],
            "--ca-key-file",
            &ca_key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        kids.spawn(
            &format!("controlplane-{i}"),
            Tier::ControlPlane,
            &bins.controlplane,
            &args,
            &[("TRELLIS_TOKEN", &t)],
            log(i),
        )?;
        wait_member(
            kids,
            layout,
            &addrs[i - 1],
            "voter",
            &format!("controlplane-{i} to join as a voter"),
        )
        .await?;
    }
    // Connected again, the client learns every node into admin.yaml.
    let admin = connect(layout).await.map_err(|e| anyhow!(e))?;
    Ok((admin, addrs))
}

/// Joins the second cluster's node on `topology`'s address for it, with a
/// cluster token (`--kind cluster --cluster cluster-2 --network
/// network-2`): a learner with its own intermediate CA and no CA key of
/// the mesh. Waits until it is a learner that has applied the log.
/// Returns its address.
pub async fn start_second_cluster(
    kids: &mut Children,
    bins: &Bins,
    layout: &Layout,
    admin: &AdminClient<Channel>,
    topology: &Topology,
) -> anyhow::Result<String> {
    let port = free_ports(1)?[0];
    let addr = SocketAddr::from((topology.node_ip(), port));
    if !all_free(&[addr]) {
        bail!("{addr} is taken: run the demo again for another port");
    }
    let addr = addr.to_string();
    let t = token(
        admin,
        CreateTokenRequest {
            kind: "cluster".into(),
            cluster: NETWORK_2.cluster.into(),
            network: NETWORK_2.name.into(),
            ttl_seconds: 600,
            max_uses: 1,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow!("a cluster token for {}: {e}", NETWORK_2.cluster))?;
    let args: Vec<String> = [
        "join",
        "--data-dir",
        &layout.node(4).display().to_string(),
        "--listen",
        &addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    kids.spawn(
        &format!("controlplane-{}", NETWORK_2.cluster),
        Tier::ControlPlane,
        &bins.controlplane,
        &args,
        &[("TRELLIS_TOKEN", &t)],
        layout
            .logs()
            .join(format!("controlplane-{}.log", NETWORK_2.cluster)),
    )?;
    wait_member(
        kids,
        layout,
        &addr,
        "learner",
        &format!("{}'s node to join as a learner", NETWORK_2.cluster),
    )
    .await?;
    Ok(addr)
}

/// Waits until the node at `addr` is a member with `role` that has applied
/// the log.
async fn wait_member(
    kids: &mut Children,
    layout: &Layout,
    addr: &str,
    role: &str,
    what: &str,
) -> anyhow::Result<()> {
    wait_until(kids, Duration::from_secs(60), what, || async {
        let mut admin = connect(layout).await?;
        let members = bounded(admin.members(Empty {})).await?.members;
        match members.iter().find(|m| m.address == addr) {
            Some(m) if m.role == role && m.last_applied_index.is_some() => Ok(()),
            _ => Err(format!(
                "members: {:?}",
                members
                    .iter()
                    .map(|m| (&m.address, &m.role))
                    .collect::<Vec<_>>()
            )),
        }
    })
    .await
}

/// Starts each network's east-west gateway with a gateway token, on its
/// address in `topology`, streaming from `node(network)`.
pub async fn start_gateways(
    kids: &mut Children,
    bins: &Bins,
    layout: &Layout,
    admin: &AdminClient<Channel>,
    topology: &Topology,
    node: impl Fn(Network) -> String,
) -> anyhow::Result<()> {
    for n in NETWORKS {
        let t = token(
            admin,
            CreateTokenRequest {
                kind: "gateway".into(),
                network: n.name.into(),
                ttl_seconds: 600,
                max_uses: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("a gateway token for {}: {e}", n.name))?;
        let mut args = topology.gateway_args(n, &layout.gateway(n.name));
        args.extend(["--control-plane".to_string(), node(n)]);
        kids.spawn(
            &format!("eastwest-{}", n.name),
            Tier::Workload,
            &bins.eastwest,
            &args,
            &[("TRELLIS_TOKEN", &t)],
            layout.logs().join(format!("eastwest-{}.log", n.name)),
        )?;
    }
    Ok(())
}

/// An admin client with the demo's admin config.
async fn connect(layout: &Layout) -> Result<AdminClient<Channel>, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        crate::client::admin(Some(&layout.admin_config())),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("no control-plane node answered within 5s".into()),
    }
}

/// `trellis apply -f DIR/mesh/`: resources applied, by kind.
pub async fn apply(
    admin: &AdminClient<Channel>,
    layout: &Layout,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let sources = read_sources(&[layout.mesh()])?;
    let mut c = admin.clone();
    let r = c
        .apply_config(ApplyConfigRequest {
            sources,
            dry_run: false,
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut kinds = BTreeMap::new();
    for x in r.results {
        if let Some(res) = x.resource {
            *kinds.entry(res.kind).or_default() += 1;
        }
    }
    Ok(kinds)
}

/// The names of a workload's processes: its echo server and its agent.
pub fn workload_processes(w: &ServiceVersion) -> [String; 2] {
    [format!("echo-{}", w.name()), format!("agent-{}", w.name())]
}

/// Starts each workload's echo server and its agent (registering through
/// its WorkloadGroup), and the client agent. The first network's agents
/// stream from the voters `nodes` in turn, so every node pushes config
/// (each still fails over to the others, learned from the pushed bundle);
/// the second network's from its cluster's node, `second`.
pub async fn start_workloads(
    kids: &mut Children,
    bins: &Bins,
    layout: &Layout,
    admin: &AdminClient<Channel>,
    topology: &Topology,
    nodes: &[String],
    second: &str,
) -> anyhow::Result<()> {
    let logs = layout.logs();
    let mut node = nodes.iter().cycle();
    let mut with_node = |mut args: Vec<String>, network: Network| {
        let n = if network == NETWORK_2 {
            Some(second.to_string())
        } else {
            node.next().cloned()
        };
        if let Some(n) = n {
            args.extend(["--control-plane".to_string(), n]);
        }
        args
    };
    for p in topology.placed() {
        let (group, name) = (p.workload.group(), p.workload.name());
        let [echo, agent] = workload_processes(&p.workload);
        kids.spawn(
            &echo,
            Tier::Workload,
            &bins.echo,
            &p.echo_args(),
            &[],
            logs.join(p.log_name("echo")),
        )?;
        let t = token(
            admin,
            CreateTokenRequest {
                kind: "vm".into(),
                workload_group: format!("{NAMESPACE}/{group}"),
                ttl_seconds: 600,
                max_uses: 1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow!("a token for WorkloadGroup {group}: {e}"))?;
        kids.spawn(
            &agent,
            Tier::Workload,
            &bins.agent,
            &with_node(p.agent_args(&layout.agent(&name)), p.workload.network),
            &[("TRELLIS_TOKEN", &t)],
            logs.join(p.log_name("agent")),
        )?;
    }
    let t = token(
        admin,
        CreateTokenRequest {
            kind: "vm".into(),
            identity: CLIENT_IDENTITY.into(),
            ttl_seconds: 600,
            max_uses: 1,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow!("a token for the client agent: {e}"))?;
    kids.spawn(
        "agent-client",
        Tier::Workload,
        &bins.agent,
        &with_node(
            topology.client_agent_args(&layout.agent("client")),
            NETWORK_1,
        ),
        &[("TRELLIS_TOKEN", &t)],
        logs.join("agent-client.log"),
    )?;
    Ok(())
}

/// Waits until the mesh carries traffic: every agent and gateway ready,
/// every workload registered and passing its probe, each caller's agent
/// seeing its callees' endpoints (behind a gateway for another network's),
/// and `proxy-status` showing every agent and gateway SYNCED. Returns that
/// proxy-status.
pub async fn wait_ready(
    kids: &mut Children,
    http: &Http,
    admin: &AdminClient<Channel>,
    topology: &Topology,
) -> anyhow::Result<Vec<ProxyStatus>> {
    let placed = topology.placed();
    let mut ready: Vec<String> = placed
        .iter()
        .map(|p| p.admin())
        .chain([topology.client_admin()])
        .map(|a| format!("http://{a}/ready"))
        .collect();
    ready.extend(NETWORKS.iter().map(|n| {
        format!(
            "http://{}/healthz/ready",
            SocketAddr::from((topology.gateway_ip(*n), bookinfo::GATEWAY_HEALTH_PORT))
        )
    }));
    let agents = ready.len();
    wait_until(
        kids,
        Duration::from_secs(60),
        "every agent and gateway to be ready",
        || async {
            let mut unready = Vec::new();
            for url in &ready {
                if http.get_ok(url).await.is_none() {
                    unready.push(url.clone());
                }
            }
            if unready.is_empty() {
                Ok(())
            } else {
                Err(format!("not ready: {}", unready.join(", ")))
            }
        },
    )
    .await?;
    wait_until(
        kids,
        Duration::from_secs(60),
        "every workload registered and healthy",
        || async {
            let mut c = admin.clone();
            let r = bounded(c.get_config(GetConfigRequest {
                kind: "WorkloadEntry".into(),
                namespace: NAMESPACE.into(),
                name: String::new(),
            }))
            .await?;
            let health: BTreeMap<String, String> = r
                .resources
                .iter()
                .filter_map(|j| {
                    let v: serde_json::Value = serde_json::from_str(j).ok()?;
                    let m = &v["metadata"];
                    let h = m["annotations"][trellis_api::annotations::HEALTH].as_str()?;
                    Some((m["name"].as_str()?.to_string(), h.to_string()))
                })
                .collect();
            let ready = health
                .values()
                .filter(|h| *h == trellis_api::annotations::READY)
                .count();
            if ready == placed.len() {
                Ok(())
            } else {
                Err(format!("{ready} of {} ready: {health:?}", placed.len()))
            }
        },
    )
    .await?;
    let expected = topology.expected_endpoints();
    wait_until(
        kids,
        Duration::from_secs(30),
        "each caller's agent to see its callees",
        || async {
            let mut missing = Vec::new();
            let mut texts: BTreeMap<SocketAddr, String> = BTreeMap::new();
            for (admin, cluster, ip) in &expected {
                if !texts.contains_key(admin) {
                    let t = http
                        .get_ok(&format!("http://{admin}/clusters"))
                        .await
                        .unwrap_or_default();
                    texts.insert(*admin, t);
                }
                if !bookinfo::has_healthy_endpoint(&texts[admin], cluster, *ip) {
                    missing.push(format!("{admin} lacks {cluster} at {ip}"));
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(missing.join("; "))
            }
        },
    )
    .await?;
    wait_until(
        kids,
        Duration::from_secs(30),
        "every agent and gateway SYNCED in proxy-status",
        || async {
            let mut c = admin.clone();
            let r = bounded(c.proxy_status(Empty {})).await?;
            let synced = r
                .proxies
                .iter()
                .filter(|p| sync_status(p) == "SYNCED")
                .count();
            if r.proxies.len() == agents && synced == agents && r.unreachable_nodes.is_empty() {
                Ok(r.proxies)
            } else {
                let seen: Vec<String> = r
                    .proxies
                    .iter()
                    .map(|p| format!("{} {}", p.proxy, sync_status(p)))
                    .collect();
                Err(format!("{synced} of {agents} SYNCED: {}", seen.join(", ")))
            }
        },
    )
    .await
}
