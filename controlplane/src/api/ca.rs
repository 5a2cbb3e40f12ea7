//! The `Ca` service: signs workload CSRs for the identity the caller proved
//! (a VM token's identity, a gateway token's gateway identity, a pod's
//! service account that this node's Kubernetes API server vouches for, or
//! the caller's current certificate), and serves the trust bundle.
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use trellis_api::v1::ca_server::Ca;
use trellis_api::v1::{Empty, IssueCertificateRequest, IssueCertificateResponse, TrustBundle};
use trellis_identity::SpiffeId;
use trellis_kubernetes::tokenreview::Reviewer;

use super::{mesh_caller, peer_ip};
use crate::ca::{check_csr, CsrPolicy};
use crate::node::{Node, NodeError};
use crate::tokens::{parse_vm_identity, JoinToken, KindRequired, TokenKind};

pub struct CaService {
    node: Arc<Node>,
    /// Reviews pods' tokens, on a node in a Kubernetes cluster.
    pods: Option<Reviewer>,
}

impl CaService {
    pub fn new(node: Arc<Node>) -> Self {
        let pods = node.kube.clone().map(Reviewer::new);
        Self { node, pods }
    }

    fn policy(&self, id: &SpiffeId, ttl_seconds: u64) -> CsrPolicy {
        let s = &self.node.settings;
        CsrPolicy {
            expected_uri: id.to_string(),
            requested_ttl: (ttl_seconds > 0).then(|| Duration::from_secs(ttl_seconds)),
            default_ttl: s.leaf_ttl,
            max_ttl: s.max_leaf_ttl,
        }
    }

    /// The kind of a token, read from this node's replica so the CSR can
    /// be checked before a use of the token is spent.
    fn token_kind(&self, token: &str) -> Option<TokenKind> {
        let t = JoinToken::parse(token).ok()?;
        Some(self.node.read_state(|s| s.store.token(&t.id))?.kind)
    }

    fn identity_of(&self, kind: &TokenKind) -> Result<SpiffeId, Status> {
        match kind {
            TokenKind::Vm { identity } => {
                let (ns, sa) = parse_vm_identity(identity).map_err(|e| {
                    Status::internal(format!("the token's stored identity {identity}: {e}"))
                })?;
                Ok(SpiffeId::workload(&self.node.trust_domain, &ns, &sa))
            }
            TokenKind::Gateway { network } => {
                Ok(SpiffeId::eastwest_gateway(&self.node.trust_domain, network))
            }
            TokenKind::ControlPlane | TokenKind::Cluster { .. } => {
                Err(Status::failed_precondition(
                    "a control-plane or cluster token cannot be used to get a workload certificate",
                ))
            }
        }
    }

    /// The identity of the pod whose service-account token `token` is,
    /// reviewed by this node's API server, and the pod's name if the
    /// token is bound to one. Refusals count against `peer` as a wrong
    /// join token does.
    async fn pod_identity(
        &self,
        token: &str,
        peer: &str,
    ) -> Result<(SpiffeId, Option<String>), NodeError> {
        let reviewed = self
            .node
            .throttled(peer, |_| async {
                let pods = self.pods.as_ref().ok_or(NodeError::NotInKubernetes)?;
                pods.review(token).await.map_err(NodeError::PodToken)
            })
            .await
            .inspect_err(|e| {
                tracing::warn!(%peer, error = %e.message(), "refused a pod's service-account token");
            })?;
        let id = SpiffeId::workload(
            &self.node.trust_domain,
            &reviewed.namespace,
            &reviewed.service_account,
        );
        Ok((id, reviewed.pod))
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn issue_certificate(
        &self,
        req: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let node = &self.node;
        let ip = peer_ip(&req);
        let current = trellis_identity::grpc::peer_info(&req).and_then(|p| p.spiffe_id());
        let r = req.into_inner();
        let mut pod = None;
        if !r.token.is_empty() && !r.kubernetes_token.is_empty() {
            return Err(Status::invalid_argument(
                "give either a join token (token) or a pod's service-account token \
                 (kubernetes_token), not both",
            ));
        }
        let id = if !r.token.is_empty() {
            let kind = self.token_kind(&r.token);
            if let Some(id) = kind.as_ref().and_then(|k| self.identity_of(k).ok()) {
                check_csr(r.csr_pem.as_bytes(), &self.policy(&id, r.ttl_seconds))
                    .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
            }
            // A workload certificate is for a VM or a gateway; any other
            // token is refused as a VM token would be. A token this
            // node's replica does not have yet (made through another node
            // a moment ago: a learner may lag) may be either: the
            // leader's record tells.
            let required = match kind {
                Some(TokenKind::Gateway { .. }) => KindRequired::Gateway,
                Some(_) => KindRequired::Vm,
                None => KindRequired::Workload,
            };
            let (record, _) = node.use_token(&r.token, required, &ip).await?;
            self.identity_of(&record.kind)?
        } else if !r.kubernetes_token.is_empty() {
            let (id, bound) = self.pod_identity(&r.kubernetes_token, &ip).await?;
            pod = bound;
            id
        } else {
            match current {
                Some(id) if id.trust_domain() == node.trust_domain => id,
                Some(id) => {
                    return Err(Status::permission_denied(format!(
                        "{id} is not in trust domain {}",
                        node.trust_domain
                    )))
                }
                None => {
                    return Err(Status::unauthenticated(
                        "present a join token (token), a pod's service-account token \
                     (kubernetes_token) or a current certificate of this mesh (renewal)",
                    ))
                }
            }
        };
        let issued = node
            .intermediate
            .issue(r.csr_pem.as_bytes(), &self.policy(&id, r.ttl_seconds))
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        match pod {
            Some(pod) => {
                tracing::info!(identity = %id, %pod, not_after = issued.not_after_unix, "issued certificate to a pod")
            }
            None => {
                tracing::info!(identity = %id, not_after = issued.not_after_unix, "issued certificate")
            }
        }
        Ok(Response::new(IssueCertificateResponse {
            chain_pem: issued.chain_pem,
            trust_bundle_pem: vec![node.intermediate.root_pem().to_string()],
            not_after_unix: issued.not_after_unix,
        }))
    }

    async fn get_trust_bundle(&self, req: Request<Empty>) -> Result<Response<TrustBundle>, Status> {
        mesh_caller(&self.node, &req)?;
        Ok(Response::new(TrustBundle {
            trust_domain: self.node.trust_domain.clone(),
            roots_pem: vec![self.node.intermediate.root_pem().to_string()],
        }))
    }
}
