//! The `Raft` service: hands peers' Raft RPCs to openraft.
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};
use trellis_api::v1::raft_server::Raft;
use trellis_api::v1::RaftPayload;

use super::require_controlplane;
use crate::node::Node;

pub struct RaftService(pub Arc<Node>);

fn decode<T: DeserializeOwned>(p: &RaftPayload) -> Result<T, Status> {
    bincode::deserialize(&p.data)
        .map_err(|e| Status::invalid_argument(format!("bad Raft payload: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    bincode::serialize(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        require_controlplane(&self.0, &req)?;
        let rpc = decode(req.get_ref())?;
        encode(&self.0.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        require_controlplane(&self.0, &req)?;
        let rpc = decode(req.get_ref())?;
        encode(&self.0.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        require_controlplane(&self.0, &req)?;
        let rpc = decode(req.get_ref())?;
        encode(&self.0.raft.install_snapshot(rpc).await)
    }
}
