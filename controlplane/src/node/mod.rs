//! A running control-plane node: its Raft instance, its replica, its CA and
//! the operations the APIs call. Writes and linearizable reads run on the
//! leader; a follower forwards them ([`Node::leader_op`], over the stream
//! of [`forward`]). Every operation fails with a [`NodeError`] that says
//! whether to retry or give up.
mod error;
pub mod forward;
mod op;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use tonic::transport::Channel;
use trellis_api::v1::peer_client::PeerClient;
use trellis_api::v1::{Empty, Member};

pub use crate::raft::now;
pub use error::{Internal, NodeError, Unreachable};
use forward::{ForwardResult, Forwarder};
pub use op::{LeaderOp, LeaderReply};

use crate::ca::{IntermediateCa, RootCa, SealKey, DEFAULT_INTERMEDIATE_LIFETIME};
use crate::raft::batch::WriteError;
use crate::raft::network::MAX_MESSAGE_BYTES;
use crate::raft::state::ClusterJoin;
use crate::raft::{Command, MeshInfo, NodeId, Raft, RaftSettings, Replica, Response, SharedState};
use crate::tokens::{JoinToken, KindRequired, Throttle, TokenRecord};

/// Settings of a node, from its command line.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Address to bind the gRPC port to; `None`: the node's own address.
    pub listen: Option<String>,
    pub raft: RaftSettings,
    /// Lifetime of issued workload certificates when the CSR asks for none.
    pub leaf_ttl: Duration,
    /// Longest lifetime a caller may ask for.
    pub max_leaf_ttl: Duration,
    /// How long a registered workload stays after its agent went away.
    pub workload_grace: Duration,
    /// Another cluster not heard from for longer is stale: its registered
    /// endpoints are pushed as not ready.
    pub cluster_stale_after: Duration,
    /// The API server of the Kubernetes cluster this node runs in, if any
    /// (`--kubernetes`).
    pub kubernetes: Option<trellis_kubernetes::client::Source>,
    /// Where `/ready` and `/metrics` are served (`--http-listen`); `None`:
    /// nowhere.
    pub http_listen: Option<HttpListen>,
    /// The admission webhooks served with [`Settings::kubernetes`].
    pub webhooks: trellis_kubernetes::webhook::Options,
}

/// The HTTP port's address, and whether failing to bind it stops the node
/// (given by the operator) or only warns (the default).
#[derive(Clone, Copy, Debug)]
pub struct HttpListen {
    pub addr: std::net::SocketAddr,
    pub required: bool,
}

enum Local {
    NotLeader,
    Failed(NodeError),
}

impl From<Local> for NodeError {
    fn from(l: Local) -> NodeError {
        match l {
            Local::NotLeader => NodeError::NoLeader,
            Local::Failed(e) => e,
        }
    }
}

/// Failed token attempts before a peer is locked out, within a minute.
const THROTTLE_MAX_FAILURES: u32 = 5;
const THROTTLE_WINDOW_SECS: u64 = 60;
const THROTTLE_LOCKOUT_SECS: u64 = 60;

/// What a cluster's joining node asks for, besides its token.
pub struct ClusterAsk {
    /// Its intermediate CA's CSR, already checked.
    pub csr_pem: String,
    /// The cluster it says it joins; empty: the token's.
    pub cluster: String,
    pub locality: String,
}

/// A cluster's node, accepted.
pub struct ClusterJoined {
    pub node_id: NodeId,
    pub cluster: String,
    pub network: String,
    pub intermediate_cert_pem: String,
}

/// Who a node is in the mesh.
pub struct NodeIdentity {
    pub id: NodeId,
    pub trust_domain: String,
    /// The address peers and clients reach it at.
    pub address: String,
}

/// A node's CA material: its intermediate, and the key that unseals the
/// mesh's root key for the one signing that needs it (`None` on a
/// cluster's learner, which never holds it).
pub struct CaKeys {
    pub intermediate: IntermediateCa,
    pub seal: Option<SealKey>,
}

pub struct Node {
    pub id: NodeId,
    pub trust_domain: String,
    pub address: String,
    pub raft: Raft,
    /// Proposes writes to `raft`, gathering concurrent ones.
    writer: crate::raft::batch::Batcher,
    pub state: SharedState,
    pub settings: Settings,
    pub intermediate: IntermediateCa,
    /// Config push to the agents streaming from this node.
    pub push: crate::push::Push,
    seal: Option<SealKey>,
    peer_tls: Arc<rustls::ClientConfig>,
    peers: Mutex<HashMap<String, PeerClient<Channel>>>,
    throttle: Mutex<Throttle>,
    forwarder: Forwarder,
    /// A client of [`Settings::kubernetes`]'s API server.
    pub kube: Option<kube::Client>,
    /// What `/ready` and `/metrics` on `--http-listen` report.
    pub stats: Stats,
}

/// Facts about a node that its Raft metrics and push state do not hold.
#[derive(Debug, Default)]
pub struct Stats {
    /// Set once the node serves: the mesh is written (`init`) and it is a
    /// member (`join`).
    pub serving: std::sync::atomic::AtomicBool,
    /// Kubernetes discovery's writes to the store, and the records they
    /// upserted or deleted.
    pub kube_writes: std::sync::atomic::AtomicU64,
    pub kube_records_written: std::sync::atomic::AtomicU64,
}

impl Node {
    /// A node over its running `replica`; `peer_tls` is how it calls
    /// other nodes.
    pub fn new(
        me: NodeIdentity,
        replica: Replica,
        settings: Settings,
        keys: CaKeys,
        peer_tls: Arc<rustls::ClientConfig>,
        kube: Option<kube::Client>,
    ) -> Self {
        let NodeIdentity {
            id,
            trust_domain,
            address,
        } = me;
        let Replica {
            raft,
            state,
            writer,
        } = replica;
        let CaKeys { intermediate, seal } = keys;
        Self {
            id,
            trust_domain,
            address,
            raft,
            writer,
            push: crate::push::Push::start(state.clone(), id, settings.cluster_stale_after),
            state,
            settings,
            intermediate,
            seal,
            peer_tls,
            peers: Mutex::new(HashMap::new()),
            forwarder: Forwarder::default(),
            kube,
            stats: Stats::default(),
            throttle: Mutex::new(Throttle::new(
                THROTTLE_MAX_FAILURES,
                THROTTLE_WINDOW_SECS,
                THROTTLE_LOCKOUT_SECS,
            )),
        }
    }

    /// The mesh record from this node's replica.
    pub fn mesh(&self) -> Option<MeshInfo> {
        self.read_state(|s| s.store.mesh())
    }

    /// Reads this node's replica.
    pub fn read_state<T>(&self, f: impl FnOnce(&crate::raft::state_machine::Applied) -> T) -> T {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&st)
    }

    /// The root CA, unsealed for one signing: only ever held in memory.
    pub fn root_ca(&self) -> Result<RootCa, NodeError> {
        let seal = self.seal.as_ref().ok_or(Internal::NoCaKey)?;
        let mesh = self.mesh().ok_or(Internal::NoMeshRecord)?;
        let key = seal
            .open(&mesh.sealed_root_key)
            .map_err(Internal::RootKey)?;
        let key = String::from_utf8(key).map_err(Internal::RootKeyText)?;
        Ok(RootCa::from_pem(&mesh.root_cert_pem, &key).map_err(Internal::RootCa)?)
    }

    /// The current leader and its address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())?;
        Some((leader, addr))
    }

    async fn wait_leader(&self, deadline: Instant) -> Result<(NodeId, String), NodeError> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NodeError::NoLeader);
            }
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    /// A (cached) client to a peer's `Peer` service.
    pub fn peer_client(&self, addr: &str) -> Result<PeerClient<Channel>, NodeError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let ch = trellis_identity::grpc::channel(addr, self.peer_tls.clone(), None).map_err(
            |source| Internal::PeerClient {
                addr: addr.to_string(),
                source,
            },
        )?;
        let c = PeerClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Runs `op` on the leader: here if this node leads, else forwarded.
    /// Retries through elections for up to five seconds.
    pub async fn leader_op(self: &Arc<Self>, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (leader, addr) = self.wait_leader(deadline).await?;
            let res = if leader == self.id {
                self.run_local(&op).await.map_err(NodeError::from)
            } else {
                self.forwarder
                    .call(leader, &addr, || self.peer_client(&addr), op.clone())
                    .await
            };
            match res {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Runs an operation a follower forwarded: only if this node leads.
    pub async fn serve_forwarded(&self, op: &LeaderOp) -> ForwardResult {
        self.run_local(op).await.map_err(|l| {
            let e = NodeError::from(l);
            (e.code() as i32, e.message())
        })
    }

    async fn run_local(&self, op: &LeaderOp) -> Result<LeaderReply, Local> {
        fn write_err(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Local {
            match e {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => Local::NotLeader,
                RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                    Local::Failed(NodeError::Membership(e))
                }
                RaftError::Fatal(e) => Local::Failed(Internal::Raft(e).into()),
            }
        }
        match op {
            LeaderOp::Write(cmd) => {
                let (index, response) =
                    self.writer.write(cmd.clone()).await.map_err(|e| match e {
                        WriteError::Raft(e) => write_err(e),
                        e => Local::Failed(Internal::Write(e).into()),
                    })?;
                Ok(LeaderReply::Written { index, response })
            }
            LeaderOp::Read { key } => {
                self.raft.ensure_linearizable().await.map_err(|e| match e {
                    RaftError::APIError(_) => Local::NotLeader,
                    RaftError::Fatal(e) => Local::Failed(Internal::Raft(e).into()),
                })?;
                Ok(LeaderReply::Read(
                    self.read_state(|s| s.store.kv(key).cloned()),
                ))
            }
            LeaderOp::AddNode { id, addr, learner } => {
                self.raft
                    .add_learner(*id, BasicNode::new(addr.clone()), true)
                    .await
                    .map_err(write_err)?;
                if !learner {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                        .await
                        .map_err(write_err)?;
                }
                Ok(LeaderReply::Done)
            }
            LeaderOp::RemoveNode { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                let membership = m.membership();
                if membership.get_node(id).is_none() {
                    return Err(Local::Failed(NodeError::NotMember(*id)));
                }
                let is_voter = membership.voter_ids().any(|v| v == *id);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([*id]))
                };
                self.raft
                    .change_membership(change, false)
                    .await
                    .map_err(write_err)?;
                Ok(LeaderReply::Done)
            }
            LeaderOp::JoinCluster { join, csr_pem } => {
                let (_, response) = self.writer.write(join.clone()).await.map_err(|e| match e {
                    WriteError::Raft(e) => write_err(e),
                    e => Local::Failed(Internal::Write(e).into()),
                })?;
                let Response::ClusterJoined { node_id, .. } = &response else {
                    return Ok(LeaderReply::ClusterJoined {
                        response,
                        intermediate_cert_pem: String::new(),
                    });
                };
                let cert = self
                    .root_ca()
                    .and_then(|root| {
                        root.sign_intermediate(
                            csr_pem,
                            &format!("node-{node_id}"),
                            DEFAULT_INTERMEDIATE_LIFETIME,
                        )
                        .map_err(|e| Internal::SignIntermediate(e).into())
                    })
                    .map_err(Local::Failed)?;
                Ok(LeaderReply::ClusterJoined {
                    response,
                    intermediate_cert_pem: cert,
                })
            }
        }
    }

    /// Writes a command through the leader; a refusal by the store becomes
    /// [`NodeError::Refused`]. Returns the commit index and the response.
    /// The write is applied once, however often it is retried here.
    pub async fn write(self: &Arc<Self>, cmd: Command) -> Result<(u64, Response), NodeError> {
        self.write_once(cmd.once(now())).await
    }

    /// [`Node::write`] of a command already made a [`Command::Once`], for
    /// a caller that retries it longer than a write does.
    pub async fn write_once(self: &Arc<Self>, cmd: Command) -> Result<(u64, Response), NodeError> {
        match self.leader_op(LeaderOp::Write(cmd)).await? {
            LeaderReply::Written {
                response: Response::Refused(why),
                ..
            } => Err(NodeError::Refused(why)),
            LeaderReply::Written { index, response } => Ok((index, response)),
            other => Err(Internal::UnexpectedReply(Box::new(other)).into()),
        }
    }

    /// Checks a join token presented by `peer` and spends one use of it.
    /// Failures count against the peer; too many lock it out for a while.
    pub async fn use_token(
        self: &Arc<Self>,
        token: &str,
        required: KindRequired,
        peer: &str,
    ) -> Result<(TokenRecord, Option<u64>), NodeError> {
        self.throttled(peer, |now| self.try_use_token(token, required, now))
            .await
    }

    /// Runs `attempt` (given the time) unless `peer` is locked out; a
    /// refusal counts against the peer, a success clears its count.
    pub(crate) async fn throttled<T, F>(
        &self,
        peer: &str,
        attempt: impl FnOnce(u64) -> F,
    ) -> Result<T, NodeError>
    where
        F: std::future::Future<Output = Result<T, NodeError>>,
    {
        let now = now();
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(peer, now)
            .map_err(NodeError::Throttled)?;
        let res = attempt(now).await;
        let mut throttle = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        match &res {
            Ok(_) => throttle.record_success(peer),
            Err(e) if e.is_refusal() => throttle.record_failure(peer, now),
            Err(_) => {}
        }
        res
    }

    /// Parses a token presented to this node and checks it pins this
    /// mesh's root.
    fn our_token(&self, token: &str) -> Result<JoinToken, NodeError> {
        let token = JoinToken::parse(token).map_err(NodeError::BadToken)?;
        let mesh = self.mesh().ok_or(NodeError::NoLeader)?;
        let ours = trellis_identity::pem::certs(&mesh.root_cert_pem, "root")
            .map_err(Internal::RootCert)?;
        if trellis_identity::sha256(&ours[0]) != token.root_pin {
            return Err(NodeError::ForeignToken {
                id: token.id.clone(),
            });
        }
        Ok(token)
    }

    /// A cluster's control-plane node joins with a cluster token presented
    /// by `peer` (throttled as [`Node::use_token`]): the store records it,
    /// a voter signs its intermediate CSR. Returns the node's id, cluster,
    /// network and intermediate certificate.
    pub async fn join_cluster(
        self: &Arc<Self>,
        token: &str,
        ask: ClusterAsk,
        peer: &str,
    ) -> Result<ClusterJoined, NodeError> {
        self.throttled(peer, |now| async move {
            let token = self.our_token(token)?;
            let join = Command::JoinCluster(Box::new(ClusterJoin {
                token_id: token.id,
                secret_sha256: crate::tokens::secret_sha256(&token.secret),
                now,
                cluster: ask.cluster,
                locality: ask.locality,
            }));
            let op = LeaderOp::JoinCluster {
                join: join.once(now),
                csr_pem: ask.csr_pem,
            };
            match self.leader_op(op).await? {
                LeaderReply::ClusterJoined {
                    response:
                        Response::ClusterJoined {
                            node_id,
                            cluster,
                            network,
                        },
                    intermediate_cert_pem,
                } => Ok(ClusterJoined {
                    node_id,
                    cluster,
                    network,
                    intermediate_cert_pem,
                }),
                LeaderReply::ClusterJoined {
                    response: Response::Refused(why),
                    ..
                } => Err(NodeError::Refused(why)),
                other => Err(Internal::UnexpectedReply(Box::new(other)).into()),
            }
        })
        .await
    }

    async fn try_use_token(
        self: &Arc<Self>,
        token: &str,
        required: KindRequired,
        now: u64,
    ) -> Result<(TokenRecord, Option<u64>), NodeError> {
        let token = self.our_token(token)?;
        let cmd = Command::UseToken {
            id: token.id,
            secret_sha256: crate::tokens::secret_sha256(&token.secret),
            required,
            now,
        };
        match self.write(cmd).await? {
            (_, Response::TokenUsed { record, node_id }) => Ok((record, node_id)),
            (_, other) => Err(Internal::UnexpectedResponse(Box::new(other)).into()),
        }
    }

    /// Every member's address, from this node's view of the membership:
    /// no network calls, unlike [`Node::members`].
    pub fn member_addresses(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership()
            .nodes()
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    /// Every member, with role, leadership and (when it answers within a
    /// second) the last log index it applied.
    pub async fn members(&self) -> Vec<Member> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let futs = membership.nodes().map(|(id, node)| {
            let id = *id;
            let addr = node.addr.clone();
            let is_voter = voters.contains(&id);
            let leader = m.current_leader == Some(id);
            async move {
                let last_applied = if id == self.id {
                    self.raft.metrics().borrow().last_applied.map(|l| l.index)
                } else {
                    match self.peer_client(&addr) {
                        Ok(mut c) => {
                            tokio::time::timeout(Duration::from_secs(1), c.node_status(Empty {}))
                                .await
                                .ok()
                                .and_then(|r| r.ok())
                                .map(|r| r.into_inner().last_applied_index)
                        }
                        Err(_) => None,
                    }
                };
                Member {
                    node_id: id,
                    address: addr,
                    role: if is_voter { "voter" } else { "learner" }.into(),
                    leader,
                    last_applied_index: last_applied,
                }
            }
        });
        futures::future::join_all(futs).await
    }
}
