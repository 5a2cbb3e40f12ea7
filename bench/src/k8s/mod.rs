//! The two-cluster mesh `kube-ingest` and `kube-ready` share: cluster
//! `west`, whose `init` node the agents stream from, and cluster `east`,
//! whose node joined with a cluster token and runs `--kubernetes` against
//! a real `kube-apiserver` v1.20 ([`KubeCluster`]): its discovery writes
//! east's Services and ready pods into the mesh, and west's agents get
//! them from west's node. Both clusters are on one network
//! ([`topology::DEFAULT_NETWORK`]): west's agents reach east's pods
//! directly, with no east-west gateway.
pub mod ingest;
pub mod ready;

use std::path::Path;

use trellis_api::topology;
use trellis_e2e::kube::KubeCluster;
use trellis_e2e::{free_port, Cluster, Proc};

use crate::agent;

/// The binaries of the mesh and its agents.
pub const PACKAGES: [&str; 4] = [
    "trellis-controlplane",
    "trellis",
    "trellis-agent",
    "trellis-echo",
];

/// The two clusters. Field order is drop order: the control plane, then
/// the API server it watches.
pub struct Mesh {
    pub cp: Cluster,
    /// East's node.
    pub east: u64,
    pub kube: KubeCluster,
}

impl Mesh {
    /// West's `init` node, then east's node on `east_host` (an address of
    /// its own) joined with a cluster token, watching `kube`.
    pub async fn start(kube: KubeCluster, east_host: &str) -> anyhow::Result<Mesh> {
        let mut cp = Cluster::new(&[])?;
        // The first cluster's name is `init`'s; joined nodes take theirs
        // from their token.
        cp.node_env = vec![("TRELLIS_CLUSTER".into(), "west".into())];
        cp.spawn_init()?;
        cp.wait_ready(1).await?;
        cp.wait_writable(1).await?;
        cp.node_env.clear();
        let token = cp.token(&[
            "--kind",
            "cluster",
            "--cluster",
            "east",
            "--network",
            topology::DEFAULT_NETWORK,
            "--uses",
            "1",
        ])?;
        let kubeconfig = kube.kubeconfig.display().to_string();
        let webhook = format!("127.0.0.1:{}", free_port());
        let east = cp
            .join_cluster(
                &token,
                east_host,
                &[
                    "--kubernetes",
                    &kubeconfig,
                    "--webhook-listen",
                    &webhook,
                    "--locality",
                    "east/east-1",
                ],
            )
            .await?;
        Ok(Mesh { cp, east, kube })
    }

    /// An agent of west on `ip` (identity `default/NAME`, DNS proxy off),
    /// streaming from west's node, with `args`.
    pub fn agent(&self, name: &str, ip: &str, args: &[String]) -> anyhow::Result<Proc> {
        let mut all = vec!["--dns".to_string(), "off".into()];
        all.extend_from_slice(args);
        agent::spawn(&self.cp, self.dir(), None, "warn", name, ip, &all)
    }

    /// Where the logs are.
    pub fn dir(&self) -> &Path {
        self.cp.root.path()
    }

    /// West's and east's node processes, by name.
    pub fn nodes(&self) -> [(&'static str, Option<u32>); 2] {
        [
            ("west node", self.cp.node(1).pid()),
            ("east node", self.cp.node(self.east).pid()),
        ]
    }
}
