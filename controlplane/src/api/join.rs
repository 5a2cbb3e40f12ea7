//! The `Join` service: a new control-plane node proves itself with a token
//! and gets its id and its intermediate CA certificate.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis_api::v1::join_server::Join;
use trellis_api::v1::{JoinControlPlaneRequest, JoinControlPlaneResponse};

use super::peer_ip;
use crate::ca::DEFAULT_INTERMEDIATE_LIFETIME;
use crate::node::Node;
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
