//! openraft's network over tonic with mTLS: each RPC is one unary gRPC call
//! carrying the bincode-encoded openraft request and reply.
use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
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

/// Most bytes of entries one AppendEntries carries when it has more than
/// one. openraft gives an AppendEntries the heartbeat interval to answer
/// and sends a lagging follower up to 300 entries at once: a learner that
/// fell behind a cluster's large discovery writes was sent megabytes that
/// could not arrive in time, again and again. Above this size the call is
/// refused as too large with a hint of how many entries fit, and openraft
/// sends fewer.
const MAX_APPEND_BYTES: u64 = 256 << 10;

/// How many of `entries` entries of `bytes` bytes fit in
/// [`MAX_APPEND_BYTES`], if not all do (at least one).
fn entries_that_fit(entries: usize, bytes: u64) -> Option<u64> {
    (entries > 1 && bytes > MAX_APPEND_BYTES)
        .then(|| (entries as u64 * MAX_APPEND_BYTES / bytes).max(1))
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
        let fut = which(client, RaftPayload { data });
        let reply = match tokio::time::timeout(option.hard_ttl(), fut).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TimedOut(
                    option.hard_ttl(),
                ))))
            }
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
        let bytes = bincode::serialized_size(&rpc).unwrap_or(0);
        if let Some(hint) = entries_that_fit(rpc.entries.len(), bytes) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
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
    use super::{entries_that_fit, MAX_APPEND_BYTES};

    #[test]
    fn too_many_bytes_of_entries_are_sent_in_fewer() {
        assert_eq!(entries_that_fit(300, MAX_APPEND_BYTES), None);
        assert_eq!(entries_that_fit(300, MAX_APPEND_BYTES * 4), Some(75));
        assert_eq!(entries_that_fit(3, MAX_APPEND_BYTES * 100), Some(1));
        // One entry goes whatever its size: it cannot be split.
        assert_eq!(entries_that_fit(1, MAX_APPEND_BYTES * 100), None);
    }
}
