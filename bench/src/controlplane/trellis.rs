//! A local Trellis control plane, the harness's [`trellis_e2e::Cluster`]
//! (node 1 `init`, the others `join` with tokens created through the admin
//! API, all on 127.0.0.1 with their data in a temporary directory), seen as
//! a [`BenchCluster`].
use std::time::{Duration, Instant};

use anyhow::Context;
use trellis_api::v1::PutRequest;
use trellis_e2e::{admin_client, Cluster};
use trellis_identity::admin_config::AdminConfig;

use super::cluster::{BenchCluster, Client};
use super::probe;

/// How long a fresh node may take to serve its first write.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running Trellis control plane. Bench node `i` is `nodes[i]`: start
/// order.
pub struct TrellisCluster(Cluster);

impl TrellisCluster {
    /// Starts `n` voters and waits until a write through each succeeds.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        let c = Cluster::start(n, &[]).await?;
        for node in &c.nodes {
            c.wait_writable(node.id).await?;
        }
        Ok(Self(c))
    }

    fn id(&self, node: usize) -> u64 {
        self.0.nodes[node].id
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
        self.0.nodes.iter().filter_map(|n| n.pid()).collect()
    }

    fn len(&self) -> usize {
        self.0.nodes.len()
    }

    async fn client(&self, node: usize) -> anyhow::Result<Client> {
        Ok(Client::Trellis(self.0.admin(self.id(node)).await?))
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        let members = self.0.members().await?;
        let leader = members
            .iter()
            .find(|m| m.leader)
            .context("the cluster reports no leader")?;
        self.0
            .nodes
            .iter()
            .position(|n| n.id == leader.node_id)
            .with_context(|| format!("leader {} is not one of ours", leader.address))
    }

    fn kill(&mut self, node: usize) {
        let id = self.id(node);
        self.0.kill(id);
    }

    async fn restart(&mut self, node: usize) -> anyhow::Result<()> {
        let id = self.id(node);
        let res = match self.0.restart(id).await {
            Ok(()) => self.0.wait_writable(id).await,
            Err(e) => Err(e),
        };
        // If it died, its log says why better than a timeout does.
        self.0.check_running(id)?;
        res
    }
}

/// Time from starting `init` of a fresh node until a write through it
/// succeeds (the admin config it writes is polled for).
pub async fn time_to_first_write() -> anyhow::Result<Duration> {
    let mut c = Cluster::new(&[])?;
    let since = Instant::now();
    c.spawn_init()?;
    let (addr, admin_yaml) = (c.node(1).addr.clone(), c.admin_config());
    let took = probe::first_success(since, START_TIMEOUT, "a fresh Trellis node", || {
        let (addr, admin_yaml) = (addr.clone(), admin_yaml.clone());
        async move {
            let tls = AdminConfig::load(&admin_yaml)?.tls()?;
            admin_client(&addr, tls)
                .await?
                .put(PutRequest {
                    key: "bench/ready".into(),
                    value: b"1".to_vec(),
                })
                .await?;
            Ok(())
        }
    })
    .await;
    c.check_running(1)?;
    took
}
