//! The `Peer` service: operations carried to the leader, node status, and
//! adding a node that joined with a token.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis_api::v1::peer_server::Peer;
use trellis_api::v1::{
    AddNodeRequest, Empty, MembersResponse, NodeStatusResponse, ProxyStatusResponse, RaftPayload,
};
use trellis_identity::SpiffeId;

use super::require_controlplane;
use crate::node::{LeaderOp, Node};

pub struct PeerService(pub Arc<Node>);

#[tonic::async_trait]
impl Peer for PeerService {
    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_controlplane(&self.0, &req)?;
        let ops: Vec<LeaderOp> = bincode::deserialize(&req.get_ref().data)
            .map_err(|e| Status::invalid_argument(format!("bad forwarded operations: {e}")))?;
        let res = self.0.serve_forwarded(ops).await;
        let data = bincode::serialize(&res).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftPayload { data }))
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
