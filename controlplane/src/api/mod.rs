//! The gRPC services of a node, all on one port with mTLS. Each service is
//! thin: it checks who the caller is, then calls [`Node`](crate::node::Node).
//!
//! Who may call what:
//! - `Raft`, `Peer`: control-plane nodes of this trust domain;
//! - `Join`: anyone holding a valid control-plane or cluster join token;
//! - `Ca.IssueCertificate`: a join token scoped to an identity, or a
//!   current certificate of this mesh (renewal of that same identity);
//! - `Ca.GetTrustBundle`: any caller with a certificate of this mesh;
//! - `Admin`: the admin identity `spiffe://TD/trellis/admin`;
//! - `Discovery`: workload identities (`spiffe://TD/ns/NS/sa/SA`), each
//!   only for its own namespace.
mod admin;
mod admin_cluster;
mod admin_config;
mod ca;
mod discovery;
mod join;
mod peer;
mod raft;

use std::sync::Arc;

use tonic::{Request, Status};
use trellis_api::v1::{
    admin_server, ca_server, discovery_server, join_server, peer_server, raft_server,
};
use trellis_identity::SpiffeId;

use crate::node::Node;
use crate::raft::network::MAX_MESSAGE_BYTES;

/// The caller's verified identity, or `Unauthenticated`.
fn caller<T>(req: &Request<T>) -> Result<SpiffeId, Status> {
    trellis_identity::grpc::peer_info(req)
        .and_then(|p| p.spiffe_id())
        .ok_or_else(|| {
            Status::unauthenticated("this call needs a client certificate issued by the mesh CA")
        })
}

/// The caller's identity, which must belong to this trust domain.
fn mesh_caller<T>(node: &Node, req: &Request<T>) -> Result<SpiffeId, Status> {
    let id = caller(req)?;
    if id.trust_domain() != node.trust_domain {
        return Err(Status::permission_denied(format!(
            "{id} is not in trust domain {}",
            node.trust_domain
        )));
    }
    Ok(id)
}

fn require_controlplane<T>(node: &Node, req: &Request<T>) -> Result<SpiffeId, Status> {
    let id = mesh_caller(node, req)?;
    if id.controlplane_node().is_none() {
        return Err(Status::permission_denied(format!(
            "{id} is not a control-plane node"
        )));
    }
    Ok(id)
}

fn require_admin<T>(node: &Node, req: &Request<T>) -> Result<SpiffeId, Status> {
    let id = mesh_caller(node, req)?;
    if !id.is_admin() {
        return Err(Status::permission_denied(format!(
            "{id} is not the admin identity {}; use the admin config written by `trellis-controlplane init`",
            SpiffeId::admin(&node.trust_domain)
        )));
    }
    Ok(id)
}

/// The caller's IP, the unit of throttling.
fn peer_ip<T>(req: &Request<T>) -> String {
    trellis_identity::grpc::peer_info(req)
        .map(|p| p.remote_addr.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// All services of a node, ready to serve.
pub fn router(node: Arc<Node>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(
            raft_server::RaftServer::new(raft::RaftService(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            peer_server::PeerServer::new(peer::PeerService(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(join_server::JoinServer::new(join::JoinService(
            node.clone(),
        )))
        .add_service(ca_server::CaServer::new(ca::CaService::new(node.clone())))
        .add_service(
            admin_server::AdminServer::new(admin::AdminService(node.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            discovery_server::DiscoveryServer::new(discovery::DiscoveryService(node))
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
}
