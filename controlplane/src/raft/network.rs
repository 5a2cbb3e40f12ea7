//! openraft's network over tonic with mTLS: each RPC is one unary gRPC call
//! carrying the bincode-encoded openraft request and reply.
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use trellis_api::v1::raft_client::RaftClient;
use trellis_api::v1::RaftPayload;
use trellis_identity::IdentityError;

use crate::raft::types::{Node, NodeId, TypeConfig};

/// Largest message a node takes or sends, on the Raft service and on every
/// other gRPC service of the node: snapshots, config applies and full
/// pushes of big meshes run to tens of megabytes.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Makes a client per peer; all share one TLS client configuration.
#[derive(Clone)]
pub struct Network {
    tls: Arc<rustls::ClientConfig>,
}

impl Network {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self { tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerConnection {
        PeerConnection {
            target,
            client: trellis_identity::grpc::channel(&node.addr, self.tls.clone(), None).map(|ch| {
                RaftClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }),
        }
    }
}

/// The connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    /// The client, or why none could be made (a bad address).
    client: Result<RaftClient<tonic::transport::Channel>, IdentityError>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

/// One of the generated client's calls, boxed so `call` can take any.
type Call =
    fn(
        RaftClient<tonic::transport::Channel>,
        RaftPayload,
    )
        -> futures::future::BoxFuture<'static, Result<tonic::Response<RaftPayload>, tonic::Status>>;

/// The peer did not answer within the RPC's time limit.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
struct TimedOut(std::time::Duration);

/// How long a call of `bytes` may take: openraft's limit (for
/// AppendEntries, about the heartbeat interval), plus a second per MiB.
/// A large entry (a cluster's discovery write) takes longer to send and
/// store than a heartbeat; under openraft's limit alone it timed out and
/// was sent again, whole, again and again.
fn time_limit(ttl: std::time::Duration, bytes: usize) -> std::time::Duration {
    ttl + std::time::Duration::from_secs_f64(bytes as f64 / f64::from(1 << 20))
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        which: Call,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e))),
        };
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let ttl = time_limit(option.hard_ttl(), data.len());
        let fut = which(client, RaftPayload { data });
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => return Err(RPCError::Unreachable(Unreachable::new(&TimedOut(ttl)))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)))
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let res: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.append_entries(p).await })
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.install_snapshot(p).await })
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(&rpc, &option, |mut c, p| {
            Box::pin(async move { c.vote(p).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::time_limit;

    #[test]
    fn a_large_call_gets_a_second_per_mib_more() {
        let ttl = Duration::from_millis(150);
        assert!(time_limit(ttl, 200) < Duration::from_millis(151));
        assert_eq!(time_limit(ttl, 3 << 20), Duration::from_millis(3150));
    }
}
