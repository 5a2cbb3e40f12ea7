//! The `Peer` service: operations carried to the leader, node status, and
//! adding a node that joined with a token.
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use trellis_api::v1::peer_server::Peer;
use trellis_api::v1::{
    AddNodeRequest, Empty, MembersResponse, NodeStatusResponse, ProxyStatusResponse, RaftPayload,
};
use trellis_identity::SpiffeId;

use super::require_controlplane;
use crate::node::{forward, LeaderOp, Node};

pub struct PeerService(pub Arc<Node>);

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type ForwardStreamStream = ReplyStream;

    /// Runs each forwarded operation as it arrives, concurrently, and sends
    /// its result back as soon as it is done.
    async fn forward_stream(
        &self,
        req: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let caller = require_controlplane(&self.0, &req)?;
        let caller_id = caller
            .controlplane_node()
            .and_then(|n| n.strip_prefix("node-")?.parse::<u64>().ok());
        // A node removed from the membership (a removed cluster's) keeps
        // a valid certificate: it must not keep writing through the
        // leader, on a new stream or on one it opened before.
        let not_member = {
            let node = self.0.clone();
            move || {
                let m = node.raft.metrics().borrow().membership_config.clone();
                let member = caller_id.is_some_and(|id| m.membership().get_node(&id).is_some());
                (!member).then(|| {
                    Status::permission_denied(format!(
                        "{caller} is not a member of the control plane (removed?); \
                         it may not forward operations"
                    ))
                })
            }
        };
        if let Some(denied) = not_member() {
            return Err(denied);
        }
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let node = self.0.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                if let Some(denied) = not_member() {
                    let _ = tx.send(Err(denied));
                    break;
                }
                let forward::Request { id, op } = match bincode::deserialize(&msg.data) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(Status::invalid_argument(format!(
                            "bad forwarded operation: {e}"
                        ))));
                        break;
                    }
                };
                let (node, tx) = (node.clone(), tx.clone());
                tokio::spawn(async move {
                    let result = node.serve_forwarded(&op).await;
                    let reply = bincode::serialize(&forward::Reply { id, result })
                        .map(|data| RaftPayload { data })
                        .map_err(|e| Status::internal(e.to_string()));
                    let _ = tx.send(reply);
                });
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn node_status(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        require_controlplane(&self.0, &req)?;
        let m = self.0.raft.metrics().borrow().clone();
        Ok(Response::new(NodeStatusResponse {
            node_id: self.0.id,
            last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            current_term: m.current_term,
            leader_id: m.current_leader.unwrap_or(0),
            has_leader: m.current_leader.is_some(),
        }))
    }

    async fn add_node(
        &self,
        req: Request<AddNodeRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let caller = require_controlplane(&self.0, &req)?;
        let r = req.into_inner();
        // A node may only add itself: its certificate names its id.
        let expected = SpiffeId::controlplane(&self.0.trust_domain, &format!("node-{}", r.node_id));
        if caller != expected {
            return Err(Status::permission_denied(format!(
                "{caller} may not add node {} (only {expected} may)",
                r.node_id
            )));
        }
        self.0
            .leader_op(LeaderOp::AddNode {
                id: r.node_id,
                addr: r.address,
                learner: r.learner,
            })
            .await?;
        Ok(Response::new(MembersResponse {
            members: self.0.members().await,
        }))
    }

    async fn proxy_status(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<ProxyStatusResponse>, Status> {
        require_controlplane(&self.0, &req)?;
        Ok(Response::new(ProxyStatusResponse {
            proxies: self.0.push.streams.list(self.0.id),
            unreachable_nodes: Vec::new(),
        }))
    }
}
