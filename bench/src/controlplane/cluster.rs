//! What the benchmark needs of a 3-node cluster, whichever system it is,
//! and a put client for either.
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;

use super::etcd_pb::kv_client::KvClient;

/// A running local cluster under benchmark. Nodes are numbered from 0 in
/// start order.
pub trait BenchCluster {
    /// "Trellis", "etcd".
    fn name(&self) -> &'static str;
    /// How clients reach it, for the report.
    fn transport(&self) -> &'static str;
    /// Process ids of the running nodes, in node order (killed nodes left out).
    fn pids(&self) -> Vec<u32>;
    fn len(&self) -> usize;
    /// A client on a connection of its own to node `node`.
    async fn client(&self, node: usize) -> anyhow::Result<Client>;
    /// The node that is leader now.
    async fn leader(&self) -> anyhow::Result<usize>;
    /// SIGKILL node `node`.
    fn kill(&mut self, node: usize);
    /// Starts a killed node again from its data and waits until a write
    /// through it succeeds.
    async fn restart(&mut self, node: usize) -> anyhow::Result<()>;
}

/// A client of either system that writes one key. Cloning shares the
/// connection (one HTTP/2 channel).
#[derive(Clone)]
pub enum Client {
    Trellis(AdminClient<Channel>),
    Etcd(KvClient<Channel>),
}

impl Client {
    /// Returns once the write is committed: both systems answer a put only
    /// after a majority has it on disk.
    pub async fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), tonic::Status> {
        match self {
            Client::Trellis(c) => c
                .put(trellis_api::v1::PutRequest { key, value })
                .await
                .map(drop),
            Client::Etcd(c) => c
                .put(super::etcd_pb::PutRequest {
                    key: key.into_bytes(),
                    value,
                    ..Default::default()
                })
                .await
                .map(drop),
        }
    }
}
