//! The `Admin` service, for the `trellis` CLI: tokens, members, clusters
//! ([`admin_cluster`]), config ([`admin_config`]) and raw key-value
//! access to the store.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis_api::topology;
use trellis_api::v1::admin_server::Admin;
use trellis_api::v1::{
    AnalyzeRequest, AnalyzeResponse, ApplyConfigRequest, ApplyConfigResponse, CreateTokenRequest,
    CreateTokenResponse, DeleteConfigRequest, Empty, GetConfigRequest, GetConfigResponse,
    GetRequest, GetResponse, ListClustersResponse, ListTokensResponse, MembersResponse,
    ProxyStatusResponse, PutRequest, PutResponse, RemoveClusterRequest, RemoveNodeRequest,
    RevokeTokenRequest, TokenInfo,
};

use super::{admin_cluster, admin_config, require_admin};
use crate::config;
use crate::node::{now, LeaderOp, LeaderReply, Node, NodeError};
use crate::raft::state::cluster::cluster_taken;
use crate::raft::Command;
use crate::tokens::{JoinToken, TokenKind, TokenRecord};
use trellis_identity::spiffe::GATEWAY_NAMESPACE;
use trellis_identity::SpiffeId;

/// `NS/SA` of the east-west gateway of `network`.
fn gateway_workload(trust_domain: &str, network: &str) -> String {
    SpiffeId::eastwest_gateway(trust_domain, network)
        .workload_parts()
        .map(|(ns, sa)| format!("{ns}/{sa}"))
        .unwrap_or_default()
}

/// Token lifetime when the request names none.
const DEFAULT_TOKEN_TTL_SECS: u64 = 3600;

pub struct AdminService(pub Arc<Node>);

impl AdminService {
    /// For a token of a WorkloadGroup (`NS/NAME`): the group's name, with
    /// `r.identity` set to (or checked against) its service account.
    fn group_identity(&self, r: &mut CreateTokenRequest) -> Result<Option<String>, Status> {
        if r.workload_group.is_empty() {
            return Ok(None);
        }
        if r.kind != "vm" {
            return Err(Status::invalid_argument(
                "workload_group: only vm tokens register in a WorkloadGroup",
            ));
        }
        let Some((ns, name)) = r.workload_group.split_once('/') else {
            return Err(Status::invalid_argument(format!(
                "workload_group: `{}` should be NAMESPACE/NAME",
                r.workload_group
            )));
        };
        let group = self
            .0
            .read_state(|s| config::workload_group(&s.store, ns, name))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "workload_group: WorkloadGroup {ns}/{name} does not exist; `trellis apply` it first"
                ))
            })?;
        let identity = format!("{ns}/{}", config::service_account(&group));
        if !r.identity.is_empty() && r.identity != identity {
            return Err(Status::invalid_argument(format!(
                "identity: WorkloadGroup {ns}/{name} runs as {identity}, not {}",
                r.identity
            )));
        }
        r.identity = identity;
        Ok(Some(name.to_string()))
    }
}

impl AdminService {
    /// The kind of a cluster token: valid names, and a cluster that, if
    /// it exists, is on that network.
    fn cluster_kind(&self, r: &CreateTokenRequest) -> Result<TokenKind, Status> {
        let field = |f: &'static str| move |e| Status::invalid_argument(format!("{f}: {e}"));
        if r.cluster.is_empty() {
            return Err(Status::invalid_argument(
                "cluster: a cluster token needs --cluster NAME",
            ));
        }
        if r.network.is_empty() {
            return Err(Status::invalid_argument(
                "network: a cluster token needs --network NETWORK",
            ));
        }
        topology::validate_name("cluster", &r.cluster).map_err(field("cluster"))?;
        topology::validate_name("network", &r.network).map_err(field("network"))?;
        if let Some(existing) = self.0.read_state(|s| s.store.cluster(&r.cluster)) {
            if existing.network != r.network {
                return Err(Status::failed_precondition(format!(
                    "cluster: {}",
                    cluster_taken(&r.cluster, &existing.network, &r.network)
                )));
            }
        }
        Ok(TokenKind::Cluster {
            cluster: r.cluster.clone(),
            network: r.network.clone(),
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        require_admin(&self.0, &req)?;
        let mut r = req.into_inner();
        let group = self.group_identity(&mut r)?;
        if r.kind != "cluster" && !r.cluster.is_empty() {
            return Err(Status::invalid_argument(
                "cluster: only cluster tokens name a cluster",
            ));
        }
        if !matches!(r.kind.as_str(), "cluster" | "gateway") && !r.network.is_empty() {
            return Err(Status::invalid_argument(
                "network: only cluster and gateway tokens name a network",
            ));
        }
        let kind = match (r.kind.as_str(), r.identity.as_str()) {
            ("controlplane", "") => TokenKind::ControlPlane,
            ("cluster", "") => self.cluster_kind(&r)?,
            ("controlplane" | "cluster", _) => {
                return Err(Status::invalid_argument(
                    "identity: only vm tokens carry an identity",
                ))
            }
            ("vm", "") => {
                return Err(Status::invalid_argument(
                    "identity: a vm token needs --identity NAMESPACE/SERVICEACCOUNT",
                ))
            }
            ("vm", id) => {
                let kind = TokenKind::vm(id)
                    .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
                if id.split('/').next() == Some(GATEWAY_NAMESPACE) {
                    return Err(Status::invalid_argument(format!(
                        "identity: namespace {GATEWAY_NAMESPACE} is Trellis's own (east-west gateways); \
                         give the gateway a token with `--kind gateway --network NET`"
                    )));
                }
                kind
            }
            ("gateway", "") => TokenKind::gateway(&r.network)
                .map_err(|e| Status::invalid_argument(format!("network: {e}")))?,
            ("gateway", _) => {
                return Err(Status::invalid_argument(
                    "identity: a gateway token's identity is its network's gateway; give --network only",
                ))
            }
            (other, _) => {
                return Err(Status::invalid_argument(format!(
                    "kind: `{other}` is not a token kind; use controlplane, cluster, vm or gateway"
                )))
            }
        };
        let mesh = self.0.mesh().ok_or(NodeError::NoLeader)?;
        let pin = crate::ca::cert_fingerprint(&mesh.root_cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?;
        // Every member's address, this node's first: the joiner tries them
        // in order.
        let mut addrs = vec![self.0.address.clone()];
        for a in self.0.member_addresses() {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let token = JoinToken::generate(addrs, pin);
        // A VM token also says which identity it is for, so the agent can
        // name its SPIFFE ID in its CSR without another round trip.
        let token = match &kind {
            TokenKind::Vm { identity } => token.with_workload(&self.0.trust_domain, identity),
            TokenKind::Cluster { cluster, .. } => token.with_cluster(cluster),
            TokenKind::Gateway { network } => token.with_workload(
                &self.0.trust_domain,
                &gateway_workload(&self.0.trust_domain, network),
            ),
            TokenKind::ControlPlane => token,
        };
        let token = match &group {
            Some(g) => token.with_group(g),
            None => token,
        };
        let ttl = if r.ttl_seconds == 0 {
            DEFAULT_TOKEN_TTL_SECS
        } else {
            r.ttl_seconds
        };
        let max_uses = (r.max_uses > 0).then_some(r.max_uses);
        let record = TokenRecord::new(&token, kind, now(), ttl, max_uses);
        let expires = record.expires_at;
        self.0.write(Command::CreateToken { record }).await?;
        Ok(Response::new(CreateTokenResponse {
            token: token.encode(),
            id: token.id.clone(),
            expires_at_unix: expires as i64,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        require_admin(&self.0, &req)?;
        let now = now();
        let tokens = self
            .0
            .read_state(|s| s.store.tokens())
            .into_iter()
            .map(|t| {
                let gateway;
                let (kind, identity, cluster, network) = match &t.kind {
                    TokenKind::ControlPlane => ("controlplane", "", "", ""),
                    TokenKind::Vm { identity } => ("vm", identity.as_str(), "", ""),
                    TokenKind::Cluster { cluster, network } => {
                        ("cluster", "", cluster.as_str(), network.as_str())
                    }
                    TokenKind::Gateway { network } => {
                        gateway = gateway_workload(&self.0.trust_domain, network);
                        ("gateway", gateway.as_str(), "", network.as_str())
                    }
                };
                TokenInfo {
                    id: t.id.clone(),
                    kind: kind.to_string(),
                    identity: identity.to_string(),
                    cluster: cluster.to_string(),
                    network: network.to_string(),
                    created_at_unix: t.created_at as i64,
                    expires_at_unix: t.expires_at as i64,
                    uses: t.uses,
                    max_uses: t.max_uses.unwrap_or(0),
                    status: t.summary(now).to_string(),
                }
            })
            .collect();
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<Empty>, Status> {
        require_admin(&self.0, &req)?;
        let id = req.into_inner().id;
        self.0
            .write(Command::RevokeToken { id, now: now() })
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn members(&self, req: Request<Empty>) -> Result<Response<MembersResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(MembersResponse {
            members: self.0.members().await,
        }))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        require_admin(&self.0, &req)?;
        let id = req.into_inner().node_id;
        self.0.leader_op(LeaderOp::RemoveNode { id }).await?;
        Ok(Response::new(MembersResponse {
            members: self.0.members().await,
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        require_admin(&self.0, &req)?;
        let r = req.into_inner();
        if r.key.is_empty() {
            return Err(Status::invalid_argument("key: must not be empty"));
        }
        let (index, _) = self
            .0
            .write(Command::Put {
                key: r.key,
                value: r.value,
            })
            .await?;
        Ok(Response::new(PutResponse { index }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        require_admin(&self.0, &req)?;
        let r = req.into_inner();
        let value = if r.linearizable {
            match self.0.leader_op(LeaderOp::Read { key: r.key }).await? {
                LeaderReply::Read(v) => v,
                other => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            }
        } else {
            self.0.read_state(|s| s.store.kv(&r.key).cloned())
        };
        Ok(Response::new(GetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn apply_config(
        &self,
        req: Request<ApplyConfigRequest>,
    ) -> Result<Response<ApplyConfigResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(
            admin_config::apply(&self.0, req.into_inner()).await?,
        ))
    }

    async fn get_config(
        &self,
        req: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(admin_config::get(&self.0, req.into_inner())?))
    }

    async fn delete_config(
        &self,
        req: Request<DeleteConfigRequest>,
    ) -> Result<Response<ApplyConfigResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(
            admin_config::delete(&self.0, req.into_inner()).await?,
        ))
    }

    async fn analyze(
        &self,
        req: Request<AnalyzeRequest>,
    ) -> Result<Response<AnalyzeResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(admin_config::analyze_config(
            &self.0,
            req.into_inner(),
        )?))
    }

    async fn proxy_status(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<ProxyStatusResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(admin_config::proxy_status(&self.0).await))
    }

    async fn list_clusters(
        &self,
        req: Request<Empty>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        require_admin(&self.0, &req)?;
        Ok(Response::new(admin_cluster::list(&self.0).await))
    }

    async fn remove_cluster(
        &self,
        req: Request<RemoveClusterRequest>,
    ) -> Result<Response<ListClustersResponse>, Status> {
        require_admin(&self.0, &req)?;
        let name = req.into_inner().name;
        Ok(Response::new(admin_cluster::remove(&self.0, &name).await?))
    }
}
