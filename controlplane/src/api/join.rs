//! The `Join` service: a new control-plane node proves itself with a token
//! (a control-plane token, or a cluster token for a cluster's node) and
//! gets its id and its intermediate CA certificate.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis_api::topology;
use trellis_api::v1::join_server::Join;
use trellis_api::v1::{
    JoinClusterRequest, JoinClusterResponse, JoinControlPlaneRequest, JoinControlPlaneResponse,
};

use super::peer_ip;
use crate::ca::DEFAULT_INTERMEDIATE_LIFETIME;
use crate::node::{ClusterAsk, Node};
use crate::raft::state::{Command, NodeRecord};
use crate::tokens::KindRequired;

pub struct JoinService(pub Arc<Node>);

#[tonic::async_trait]
impl Join for JoinService {
    async fn join_control_plane(
        &self,
        req: Request<JoinControlPlaneRequest>,
    ) -> Result<Response<JoinControlPlaneResponse>, Status> {
        let node = &self.0;
        let ip = peer_ip(&req);
        let r = req.into_inner();
        validate_address(&r.address)?;
        // Check the CSR before spending a use of the token on it.
        crate::ca::check_ca_csr(r.intermediate_csr_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("intermediate_csr_pem: {e}")))?;
        let (_, node_id) = node
            .use_token(&r.token, KindRequired::ControlPlane, &ip)
            .await?;
        let node_id = node_id.ok_or_else(|| {
            Status::internal("the store allocated no node id for a control-plane token")
        })?;
        let root = node.root_ca()?;
        let seal_check = node.mesh().map(|m| m.seal_check).unwrap_or_default();
        let cert = root
            .sign_intermediate(
                &r.intermediate_csr_pem,
                &format!("node-{node_id}"),
                DEFAULT_INTERMEDIATE_LIFETIME,
            )
            .map_err(|e| Status::invalid_argument(format!("intermediate_csr_pem: {e}")))?;
        // The node is in the cluster of the node it joined through.
        if let Some(record) = node.read_state(|s| s.store.node_record(node.id)) {
            let locality = String::new();
            let record = NodeRecord { locality, ..record };
            if let Err(e) = node
                .write(Command::RecordNode {
                    id: node_id,
                    record,
                })
                .await
            {
                tracing::warn!(node_id, error = %e.message(), "recording the node's cluster");
            }
        }
        tracing::info!(node_id, address = %r.address, "control-plane node joined with a token");
        Ok(Response::new(JoinControlPlaneResponse {
            node_id,
            trust_domain: node.trust_domain.clone(),
            intermediate_cert_pem: cert,
            root_cert_pem: root.cert_pem().to_string(),
            members: node.members().await,
            seal_check,
        }))
    }

    async fn join_cluster(
        &self,
        req: Request<JoinClusterRequest>,
    ) -> Result<Response<JoinClusterResponse>, Status> {
        let node = &self.0;
        let ip = peer_ip(&req);
        let r = req.into_inner();
        validate_address(&r.address)?;
        if !r.cluster.is_empty() {
            topology::validate_name("cluster", &r.cluster)
                .map_err(|e| Status::invalid_argument(format!("cluster: {e}")))?;
        }
        topology::Locality::parse(&r.locality)
            .map_err(|e| Status::invalid_argument(format!("locality: {e}")))?;
        // Check the CSR before spending a use of the token on it.
        crate::ca::check_ca_csr(r.intermediate_csr_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("intermediate_csr_pem: {e}")))?;
        let ask = ClusterAsk {
            csr_pem: r.intermediate_csr_pem,
            cluster: r.cluster,
            locality: r.locality,
        };
        let joined = node.join_cluster(&r.token, ask, &ip).await?;
        let mesh = node.mesh().ok_or_else(|| {
            Status::unavailable("this node has no mesh record yet; retry in a moment")
        })?;
        tracing::info!(
            node_id = joined.node_id,
            cluster = %joined.cluster,
            address = %r.address,
            "a cluster's control-plane node joined with a token"
        );
        Ok(Response::new(JoinClusterResponse {
            node_id: joined.node_id,
            trust_domain: node.trust_domain.clone(),
            intermediate_cert_pem: joined.intermediate_cert_pem,
            root_cert_pem: mesh.root_cert_pem,
            cluster: joined.cluster,
            network: joined.network,
            seal_check: mesh.seal_check,
        }))
    }
}

/// `host:port` with a port.
fn validate_address(addr: &str) -> Result<(), Status> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(Status::invalid_argument(format!(
            "address: `{addr}` is not host:port"
        ))),
    }
}
