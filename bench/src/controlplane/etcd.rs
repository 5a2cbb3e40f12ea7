//! A local etcd cluster as the reference: static `--initial-cluster`
//! bootstrap on 127.0.0.1, data in a temporary directory, default timing
//! (heartbeat 100 ms, election 1000 ms), plaintext gRPC.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};
use trellis_e2e::{free_port, remove_env_prefixed, Proc};

use super::cluster::{BenchCluster, Client};
use super::probe;

/// etcd's v3 KV service, generated from `bench/proto/etcd.proto`.
use super::etcd_pb as pb;
use pb::kv_client::KvClient;

/// How long a member may take to start and serve a write.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the etcd binaries are.
#[derive(Clone, Debug)]
pub struct EtcdBins {
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
}

impl EtcdBins {
    /// Checks both binaries run; returns etcd's version line.
    pub fn check(&self) -> anyhow::Result<String> {
        for b in [&self.etcd, &self.etcdctl] {
            if !b.is_file() {
                bail!(
                    "{} not found; install etcd 3.4 (`apt-get install etcd-server etcd-client` on Debian 12) or pass --etcd/--etcdctl",
                    b.display()
                );
            }
        }
        let out = Command::new(&self.etcd)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", self.etcd.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .lines()
            .find_map(|l| l.strip_prefix("etcd Version: "))
            .context("etcd --version printed no version")?;
        Ok(version.trim().to_string())
    }
}

struct Member {
    proc_: Proc,
    spec: Spec,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    // Before `root`: the processes die before their directory goes.
    members: Vec<Member>,
    bins: EtcdBins,
    initial_cluster: String,
    root: tempfile::TempDir,
}

/// Ports and names of one member.
struct Spec {
    name: String,
    client_url: String,
    peer_url: String,
}

impl Spec {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
        }
    }
}

impl EtcdCluster {
    /// Starts `n` members and waits until a put through each succeeds.
    pub async fn start(bins: &EtcdBins, n: usize) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
        let specs: Vec<Spec> = (1..=n).map(|i| Spec::new(&format!("etcd-{i}"))).collect();
        let initial = specs
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for spec in specs {
            members.push(Member {
                proc_: spawn(&bins.etcd, root.path(), &spec, &initial)?,
                spec,
            });
        }
        let c = Self {
            members,
            bins: bins.clone(),
            initial_cluster: initial,
            root,
        };
        for m in &c.members {
            wait_writable(&m.spec.client_url, Instant::now()).await?;
        }
        Ok(c)
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.proc_.pid().is_some())
            .map(|m| m.spec.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl BenchCluster for EtcdCluster {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn transport(&self) -> &'static str {
        "gRPC, plaintext"
    }

    fn pids(&self) -> Vec<u32> {
        self.members.iter().filter_map(|m| m.proc_.pid()).collect()
    }

    fn len(&self) -> usize {
        self.members.len()
    }

    async fn client(&self, node: usize) -> anyhow::Result<Client> {
        Ok(Client::Etcd(
            connect(&self.members[node].spec.client_url).await?,
        ))
    }

    /// Asks `etcdctl endpoint status`: the leader is the endpoint whose
    /// own member id is the leader id it reports.
    async fn leader(&self) -> anyhow::Result<usize> {
        let out = tokio::process::Command::new(&self.bins.etcdctl)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.endpoints(),
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(10), out)
            .await
            .context("etcdctl endpoint status did not return")??;
        let json = String::from_utf8_lossy(&out.stdout);
        let url = leader_endpoint(&json).with_context(|| {
            format!(
                "no leader in `etcdctl endpoint status`: {json}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        self.members
            .iter()
            .position(|m| m.spec.client_url == url)
            .with_context(|| format!("leader {url} is not one of ours"))
    }

    fn kill(&mut self, node: usize) {
        self.members[node].proc_.kill();
    }

    /// With the same flags: a member with data ignores the bootstrap ones.
    async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        let m = &mut self.members[node];
        m.proc_ = spawn(
            &self.bins.etcd,
            self.root.path(),
            &m.spec,
            &self.initial_cluster,
        )?;
        let res = wait_writable(&m.spec.client_url, Instant::now()).await;
        m.proc_.check_running()?;
        res.map(drop)
    }
}

/// Time from starting a fresh single-member etcd until a put succeeds.
pub async fn time_to_first_write(bins: &EtcdBins) -> anyhow::Result<Duration> {
    let root = tempfile::Builder::new()
        .prefix("etcd-bench-start-")
        .tempdir()?;
    let spec = Spec::new("etcd-solo");
    let initial = format!("{}={}", spec.name, spec.peer_url);
    let since = Instant::now();
    let mut member = spawn(&bins.etcd, root.path(), &spec, &initial)?;
    let took = wait_writable(&spec.client_url, since).await;
    member.check_running()?;
    took
}

fn spawn(etcd: &Path, root: &Path, s: &Spec, initial_cluster: &str) -> anyhow::Result<Proc> {
    let data = root.join(&s.name);
    let mut cmd = Command::new(etcd);
    cmd.args(["--name", &s.name])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen-client-urls", &s.client_url])
        .args(["--advertise-client-urls", &s.client_url])
        .args(["--listen-peer-urls", &s.peer_url])
        .args(["--initial-advertise-peer-urls", &s.peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", "trellis-bench"])
        // etcd's defaults, spelled out: they are part of what is compared.
        .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    remove_env_prefixed(&mut cmd, "ETCD_");
    Proc::spawn(
        &format!("etcd {}", s.name),
        &mut cmd,
        &root.join(format!("{}.log", s.name)),
    )
}

async fn connect(url: &str) -> anyhow::Result<KvClient<Channel>> {
    let ch = Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(KvClient::new(ch))
}

async fn wait_writable(url: &str, since: Instant) -> anyhow::Result<Duration> {
    let url = url.to_string();
    probe::first_success(since, START_TIMEOUT, &format!("etcd {url}"), move || {
        let url = url.clone();
        async move {
            connect(&url)
                .await?
                .put(pb::PutRequest {
                    key: b"bench/ready".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                })
                .await?;
            Ok(())
        }
    })
    .await
}

#[derive(Deserialize)]
struct EndpointStatus {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: Status,
}

#[derive(Deserialize)]
struct Status {
    header: Header,
    leader: u64,
}

#[derive(Deserialize)]
struct Header {
    member_id: u64,
}

/// The endpoint, in `etcdctl endpoint status -w json` output, of the member
/// that is the leader.
fn leader_endpoint(json: &str) -> Option<String> {
    let all: Vec<EndpointStatus> = serde_json::from_str(json).ok()?;
    all.into_iter()
        .find(|e| e.status.leader != 0 && e.status.leader == e.status.header.member_id)
        .map(|e| e.endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_leader_in_endpoint_status() {
        // As printed by etcdctl 3.4.23 (trimmed).
        let json = r#"[{"Endpoint":"http://127.0.0.1:40001","Status":{"header":{"cluster_id":17237436991929493444,"member_id":9372538179322589801,"revision":5,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":10501334649042878790,"raftIndex":9,"raftTerm":2}},{"Endpoint":"http://127.0.0.1:40003","Status":{"header":{"cluster_id":17237436991929493444,"member_id":10501334649042878790,"revision":5,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":10501334649042878790,"raftIndex":9,"raftTerm":2}}]"#;
        assert_eq!(
            leader_endpoint(json).as_deref(),
            Some("http://127.0.0.1:40003")
        );
        assert_eq!(leader_endpoint("[]"), None);
        assert_eq!(leader_endpoint("not json"), None);
    }
}
