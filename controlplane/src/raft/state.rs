//! The replicated state and its commands: a pure, deterministic function
//! from (state, command) to (state, response). No I/O and no clock: the
//! proposer puts the time into the command, so every replica decides alike.
//!
//! The state is one ordered key space of bytes, so that snapshots and
//! reads see the same thing:
//! - `mesh` — [`MeshInfo`]: trust domain, root certificate, sealed root key;
//! - `next-node-id` — the next control-plane node id to hand out;
//! - `token/ID` — a [`TokenRecord`] (hashed secret, kind, expiry, uses);
//! - `kv/KEY` — user data written through the admin API;
//! - `config/…`, `vip/…`, `workload/…` — the mesh's configuration and
//!   registry ([`registry`]);
//! - `kube/CLUSTER/…`, `kube-lease/CLUSTER` — each cluster's Kubernetes
//!   services and endpoints, and its writer's lease ([`kubernetes`]);
//! - `domain`, `cluster/NAME`, `node/ID`, `stamp/NAME` — the DNS domain
//!   of service names, the clusters, which cluster each node belongs to
//!   and when each cluster was last heard from ([`cluster`]);
//! - `write/AT/ID` — the response to each write proposed in the last
//!   [`DEDUP_WINDOW_SECS`] ([`Command::Once`]), so that a write retried
//!   after its answer was lost is applied once.
pub mod cluster;
pub mod kubernetes;
pub mod registry;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::tokens::{KindRequired, TokenRecord};
pub use cluster::{Bootstrap, ClusterJoin, ClusterRecord, NodeRecord};
pub use registry::{ApplyAction, RegistryCommand};

/// The key of [`MeshInfo`].
pub const MESH_KEY: &str = "mesh";
const NEXT_NODE_ID: &str = "next-node-id";
const TOKEN_PREFIX: &str = "token/";
const KV_PREFIX: &str = "kv/";
const WRITE_PREFIX: &str = "write/";

/// How long a write's id is remembered: far longer than a node retries a
/// write (five seconds) plus the clock difference between the nodes that
/// propose, short enough that the record stays small under load (about
/// 140,000 writes at the control plane's 2,300 a second).
pub const DEDUP_WINDOW_SECS: u64 = 60;

/// What the whole mesh agrees on about itself, set once by `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshInfo {
    pub trust_domain: String,
    pub root_cert_pem: String,
    /// The root CA key, sealed with the CA key given to every node: it is
    /// replicated so that any node can sign a joining node's intermediate,
    /// but it is never stored or sent in the clear.
    pub sealed_root_key: Vec<u8>,
    /// [`SEAL_CHECK_TEXT`] sealed with the same key, so a joining node can
    /// check it was given the right CA key without seeing the root key.
    pub seal_check: Vec<u8>,
}

/// The known plaintext of [`MeshInfo::seal_check`].
pub const SEAL_CHECK_TEXT: &[u8] = b"trellis seal key check v1";

/// A write to the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Bootstraps the mesh without its topology; refused if it is already
    /// set. Written by `init` before there were clusters, and still
    /// applied when such a log is replayed; `init` writes
    /// [`Command::Bootstrap`].
    InitMesh { mesh: MeshInfo, next_node_id: u64 },
    /// Sets `kv/KEY`.
    Put { key: String, value: Vec<u8> },
    /// Removes `kv/KEY`.
    Delete { key: String },
    /// Stores a new (hashed) token.
    CreateToken { record: TokenRecord },
    /// Revokes a token at `now`.
    RevokeToken { id: String, now: u64 },
    /// Spends one use of a token if it is still good for `required` at
    /// `now`; for a control-plane token also hands out a node id.
    UseToken {
        id: String,
        secret_sha256: String,
        required: KindRequired,
        now: u64,
    },
    /// Configuration and workload registry changes.
    Registry(RegistryCommand),
    /// Commands proposed together (concurrent writes the leader gathered
    /// into one log entry), applied in order; each has its own response.
    Batch(Vec<Command>),
    /// `cmd`, applied once whatever how often it is proposed: the node
    /// that takes a write gives it a random `id` and the time `at` once,
    /// and retries it with both (after a lost answer or a new leader); a
    /// second apply answers the first's response and changes nothing.
    Once {
        id: u128,
        at: u64,
        cmd: Box<Command>,
    },
    /// Bootstraps the mesh with its domain, first cluster and first node;
    /// refused if the mesh is already set.
    Bootstrap(Box<Bootstrap>),
    /// A cluster's control-plane node joins with a cluster token: spends a
    /// use, records the cluster (if new) and the node, hands out its id.
    JoinCluster(Box<ClusterJoin>),
    /// Removes cluster `name` and everything it registered: its nodes'
    /// records, the workloads registered through them, and its Kubernetes
    /// discovery's records.
    RemoveCluster { name: String },
    /// Records which cluster node `id` belongs to (a node that joined with
    /// a control-plane token is in the cluster of the node it joined
    /// through).
    RecordNode { id: u64, record: NodeRecord },
    /// Cluster `cluster` was heard from at `at` (its node's clock): each
    /// control-plane node writes its cluster's stamp every few seconds, so
    /// that every replica knows how fresh each cluster's data is.
    StampCluster { cluster: String, at: u64 },
    /// A cluster's Kubernetes discovery writes its changes, holding the
    /// cluster's writer lease ([`kubernetes`]).
    SyncKubernetes(Box<kubernetes::KubeSync>),
}

impl Command {
    /// `self` with a new random id and the time `at`, for [`Command::Once`].
    pub fn once(self, at: u64) -> Command {
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .expect("the system's random source");
        Command::Once {
            id: u128::from_le_bytes(id),
            at,
            cmd: Box::new(self),
        }
    }
}

/// The outcome of a command, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    /// A token was spent; `node_id` is set for control-plane tokens.
    TokenUsed {
        record: TokenRecord,
        node_id: Option<u64>,
    },
    /// The command was valid Raft input but refused by the state, with the
    /// operator-facing reason. Nothing changed.
    Refused(String),
    /// A config apply: what happened to each resource, in order.
    Applied(Vec<ApplyAction>),
    /// The responses of a [`Command::Batch`], in order.
    Batch(Vec<Response>),
    /// A [`Command::JoinCluster`] was accepted.
    ClusterJoined {
        node_id: u64,
        cluster: String,
        network: String,
    },
}

/// The replicated key space.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    map: BTreeMap<String, Vec<u8>>,
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("in-memory bincode encoding cannot fail")
}

pub(crate) fn dec<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Option<T> {
    bincode::deserialize(b).ok()
}

impl Store {
    pub fn mesh(&self) -> Option<MeshInfo> {
        self.map.get(MESH_KEY).and_then(|b| dec(b))
    }

    pub fn kv(&self, key: &str) -> Option<&Vec<u8>> {
        self.map.get(&format!("{KV_PREFIX}{key}"))
    }

    pub fn token(&self, id: &str) -> Option<TokenRecord> {
        self.map
            .get(&format!("{TOKEN_PREFIX}{id}"))
            .and_then(|b| dec(b))
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.map
            .range(TOKEN_PREFIX.to_string()..)
            .take_while(|(k, _)| k.starts_with(TOKEN_PREFIX))
            .filter_map(|(_, v)| dec(v))
            .collect()
    }

    fn set<T: Serialize>(&mut self, key: String, v: &T, changed: &mut Vec<String>) {
        self.map.insert(key.clone(), enc(v));
        changed.push(key);
    }

    /// Applies one command. Keys it wrote or removed are pushed on `changed`.
    pub fn apply(&mut self, cmd: &Command, changed: &mut Vec<String>) -> Response {
        match cmd {
            Command::Batch(cmds) => {
                Response::Batch(cmds.iter().map(|c| self.apply(c, changed)).collect())
            }
            Command::InitMesh { mesh, next_node_id } => {
                if self.mesh().is_some() {
                    return Response::Refused("the mesh is already initialized".into());
                }
                self.set(MESH_KEY.into(), mesh, changed);
                self.set(NEXT_NODE_ID.into(), next_node_id, changed);
                Response::Ok
            }
            Command::Put { key, value } => {
                let k = format!("{KV_PREFIX}{key}");
                self.map.insert(k.clone(), value.clone());
                changed.push(k);
                Response::Ok
            }
            Command::Delete { key } => {
                let k = format!("{KV_PREFIX}{key}");
                self.map.remove(&k);
                changed.push(k);
                Response::Ok
            }
            Command::CreateToken { record } => {
                let k = format!("{TOKEN_PREFIX}{}", record.id);
                if self.map.contains_key(&k) {
                    return Response::Refused(format!("token id {} already exists", record.id));
                }
                self.set(k, record, changed);
                Response::Ok
            }
            Command::RevokeToken { id, now } => match self.token(id) {
                None => Response::Refused(format!(
                    "no token with id {id}; `trellis token list` shows the ids"
                )),
                Some(mut record) => {
                    // Revoking twice keeps the first time.
                    record.revoke(*now);
                    self.set(format!("{TOKEN_PREFIX}{id}"), &record, changed);
                    Response::Ok
                }
            },
            Command::UseToken {
                id,
                secret_sha256,
                required,
                now,
            } => {
                let mut record = match self.check_token(id, secret_sha256, *required, *now) {
                    Ok(r) => r,
                    Err(refused) => return refused,
                };
                self.spend_token(&mut record, changed);
                let node_id = match required {
                    KindRequired::ControlPlane => Some(self.next_node_id(changed)),
                    KindRequired::Vm
                    | KindRequired::Cluster
                    | KindRequired::Gateway
                    | KindRequired::Workload => None,
                };
                Response::TokenUsed { record, node_id }
            }
            Command::JoinCluster(join) => self.join_cluster(join, changed),
            Command::RemoveCluster { name } => self.remove_cluster(name, changed),
            Command::RecordNode { id, record } => self.record_node(*id, record, changed),
            Command::StampCluster { cluster, at } => self.stamp_cluster(cluster, *at, changed),
            Command::Registry(cmd) => self.apply_registry(cmd, changed),
            Command::Bootstrap(b) => self.bootstrap(b, changed),
            Command::SyncKubernetes(sync) => self.kube_sync(sync, changed),
            Command::Once { id, at, cmd } => {
                let key = format!("{WRITE_PREFIX}{at:020}/{id:032x}");
                if let Some(first) = self.map.get(&key).and_then(|b| dec(b)) {
                    return first;
                }
                self.forget_writes_before(at.saturating_sub(DEDUP_WINDOW_SECS));
                let response = self.apply(cmd, changed);
                // Bookkeeping, not state agents see: not in `changed`.
                self.map.insert(key, enc(&response));
                response
            }
        }
    }

    /// The token `id` if `secret_sha256` may spend a use of it for
    /// `required` at `now`; else the refusal to answer.
    fn check_token(
        &self,
        id: &str,
        secret_sha256: &str,
        required: KindRequired,
        now: u64,
    ) -> Result<TokenRecord, Response> {
        let Some(record) = self.token(id) else {
            return Err(Response::Refused(format!(
                "token {id} is not known to this mesh; create one with `trellis token create`"
            )));
        };
        record
            .check_hash(secret_sha256, required, now)
            .map_err(|e| Response::Refused(e.to_string()))?;
        Ok(record)
    }

    /// Counts one use of a checked token.
    fn spend_token(&mut self, record: &mut TokenRecord, changed: &mut Vec<String>) {
        record.consume();
        self.set(format!("{TOKEN_PREFIX}{}", record.id), &*record, changed);
    }

    /// Hands out the next control-plane node id.
    fn next_node_id(&mut self, changed: &mut Vec<String>) -> u64 {
        let next: u64 = self.map.get(NEXT_NODE_ID).and_then(|b| dec(b)).unwrap_or(1);
        self.set(NEXT_NODE_ID.into(), &(next + 1), changed);
        next
    }

    /// How many writes' responses are remembered.
    #[cfg(test)]
    fn writes_remembered(&self) -> usize {
        self.map
            .keys()
            .filter(|k| k.starts_with(WRITE_PREFIX))
            .count()
    }

    /// Drops the responses of writes proposed before `cutoff`.
    fn forget_writes_before(&mut self, cutoff: u64) {
        let end = format!("{WRITE_PREFIX}{cutoff:020}");
        let old: Vec<String> = self
            .map
            .range(WRITE_PREFIX.to_string()..end)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{secret_sha256, JoinToken, TokenKind};

    const NOW: u64 = 1_800_000_000;

    fn mesh() -> MeshInfo {
        MeshInfo {
            trust_domain: "example.org".into(),
            root_cert_pem: "ROOT".into(),
            sealed_root_key: vec![1, 2, 3],
            seal_check: vec![4, 5],
        }
    }

    fn token(kind: TokenKind, max_uses: Option<u32>) -> (JoinToken, TokenRecord) {
        let t = JoinToken::generate(vec!["127.0.0.1:15012".into()], [7; 32]);
        let r = TokenRecord::new(&t, kind, NOW, 3600, max_uses);
        (t, r)
    }

    fn use_cmd(t: &JoinToken, required: KindRequired, now: u64) -> Command {
        Command::UseToken {
            id: t.id.clone(),
            secret_sha256: secret_sha256(&t.secret),
            required,
            now,
        }
    }

    /// Every command survives the Raft log's encoding (bincode cannot read
    /// every serde shape; a command it cannot decode would poison the log).
    #[test]
    fn every_command_round_trips_through_the_log_encoding() {
        let (t, record) = token(TokenKind::vm("default/web").unwrap(), Some(2));
        let cmds = vec![
            Command::InitMesh {
                mesh: mesh(),
                next_node_id: 2,
            },
            Command::Put {
                key: "a".into(),
                value: vec![0; 256],
            },
            Command::Delete { key: "a".into() },
            Command::CreateToken {
                record: record.clone(),
            },
            Command::CreateToken {
                record: token(TokenKind::ControlPlane, None).1,
            },
            Command::RevokeToken {
                id: t.id.clone(),
                now: NOW,
            },
            use_cmd(&t, KindRequired::Vm, NOW),
            Command::Registry(RegistryCommand::ApplyConfig {
                upserts: vec![(
                    "config/ServiceEntry/default/a".into(),
                    registry::StoredConfig {
                        json: b"{}".to_vec(),
                        vip_hosts: vec!["a.example".into()],
                    },
                )],
                deletes: vec!["config/VirtualService/default/b".into()],
            }),
            Command::Registry(RegistryCommand::RegisterWorkload {
                key: "workload/default/w".into(),
                record: registry::WorkloadRecord {
                    entry_json: b"{}".to_vec(),
                    group: "g".into(),
                    conn: registry::Conn { node: 1, stream: 2 },
                    registered_at: NOW,
                    disconnected_at: Some(NOW),
                    health: registry::Health::Unhealthy("probe failed".into()),
                },
            }),
            Command::Registry(RegistryCommand::RemoveWorkloads {
                workloads: vec![(
                    "workload/default/w".into(),
                    registry::Conn { node: 1, stream: 2 },
                )],
            }),
            Command::Delete { key: "b".into() }.once(NOW),
            Command::JoinCluster(Box::new(ClusterJoin {
                token_id: t.id.clone(),
                secret_sha256: secret_sha256(&t.secret),
                now: NOW,
                cluster: "west".into(),
                locality: "eu/a".into(),
            })),
            Command::RemoveCluster {
                name: "west".into(),
            },
            Command::StampCluster {
                cluster: "west".into(),
                at: NOW,
            },
            Command::Bootstrap(Box::new(Bootstrap {
                mesh: mesh(),
                next_node_id: 2,
                domain: "cluster.local".into(),
                cluster: "cluster-1".into(),
                record: ClusterRecord {
                    network: "network-1".into(),
                    joined_at: NOW,
                },
                node_id: 1,
                node: NodeRecord {
                    cluster: "cluster-1".into(),
                    locality: String::new(),
                },
            })),
        ];
        for cmd in cmds {
            let b = bincode::serialize(&cmd).unwrap();
            assert_eq!(bincode::deserialize::<Command>(&b).unwrap(), cmd);
        }
        let resp = Response::TokenUsed {
            record,
            node_id: Some(3),
        };
        let b = bincode::serialize(&resp).unwrap();
        assert_eq!(bincode::deserialize::<Response>(&b).unwrap(), resp);
        let resp = Response::ClusterJoined {
            node_id: 4,
            cluster: "west".into(),
            network: "net-west".into(),
        };
        let b = bincode::serialize(&resp).unwrap();
        assert_eq!(bincode::deserialize::<Response>(&b).unwrap(), resp);
        let resp = Response::Applied(vec![ApplyAction::Created, ApplyAction::Deleted]);
        let b = bincode::serialize(&resp).unwrap();
        assert_eq!(bincode::deserialize::<Response>(&b).unwrap(), resp);
    }

    #[test]
    fn init_mesh_only_once() {
        let mut s = Store::default();
        let mut changed = Vec::new();
        let cmd = Command::InitMesh {
            mesh: mesh(),
            next_node_id: 2,
        };
        assert_eq!(s.apply(&cmd, &mut changed), Response::Ok);
        assert_eq!(s.mesh(), Some(mesh()));
        assert!(matches!(s.apply(&cmd, &mut changed), Response::Refused(_)));
    }

    #[test]
    fn a_batch_applies_in_order_with_a_response_each() {
        let mut s = Store::default();
        let mut changed = Vec::new();
        let init = Command::InitMesh {
            mesh: mesh(),
            next_node_id: 2,
        };
        let batch = Command::Batch(vec![
            Command::Put {
                key: "x".into(),
                value: b"1".to_vec(),
            },
            init.clone(),
            // Refused: the one before it just did it. Refusing it leaves
            // the others in the batch applied.
            init,
            Command::Delete { key: "x".into() },
        ]);
        let Response::Batch(r) = s.apply(&batch, &mut changed) else {
            panic!("not a batch response");
        };
        assert_eq!(r.len(), 4);
        assert_eq!(
            (&r[0], &r[1], &r[3]),
            (&Response::Ok, &Response::Ok, &Response::Ok)
        );
        assert!(matches!(r[2], Response::Refused(_)), "{:?}", r[2]);
        assert_eq!(s.mesh(), Some(mesh()));
        assert_eq!(s.kv("x"), None);
        assert_eq!(changed.first().map(String::as_str), Some("kv/x"));
        assert_eq!(changed.last().map(String::as_str), Some("kv/x"));
        // It travels through the log as any command does.
        let b = bincode::serialize(&batch).unwrap();
        assert_eq!(bincode::deserialize::<Command>(&b).unwrap(), batch);
    }

    #[test]
    fn put_and_delete_report_changed_keys() {
        let mut s = Store::default();
        let mut changed = Vec::new();
        s.apply(
            &Command::Put {
                key: "x".into(),
                value: b"1".to_vec(),
            },
            &mut changed,
        );
        assert_eq!(s.kv("x"), Some(&b"1".to_vec()));
        s.apply(&Command::Delete { key: "x".into() }, &mut changed);
        assert_eq!(s.kv("x"), None);
        assert_eq!(changed, vec!["kv/x".to_string(), "kv/x".to_string()]);
    }

    #[test]
    fn controlplane_token_hands_out_increasing_node_ids_until_used_up() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        s.apply(
            &Command::InitMesh {
                mesh: mesh(),
                next_node_id: 2,
            },
            &mut ch,
        );
        let (t, r) = token(TokenKind::ControlPlane, Some(2));
        s.apply(&Command::CreateToken { record: r }, &mut ch);
        let ids: Vec<Option<u64>> = (0..2)
            .map(
                |_| match s.apply(&use_cmd(&t, KindRequired::ControlPlane, NOW + 1), &mut ch) {
                    Response::TokenUsed { node_id, .. } => node_id,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(ids, vec![Some(2), Some(3)]);
        let Response::Refused(why) =
            s.apply(&use_cmd(&t, KindRequired::ControlPlane, NOW + 1), &mut ch)
        else {
            panic!("a used-up token was accepted");
        };
        assert!(why.contains("used up"), "{why}");
    }

    #[test]
    fn token_refusals_change_nothing() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let (t, r) = token(TokenKind::vm("default/web").unwrap(), None);
        s.apply(&Command::CreateToken { record: r.clone() }, &mut ch);
        let before = s.clone();
        let mut wrong_secret = use_cmd(&t, KindRequired::Vm, NOW);
        if let Command::UseToken { secret_sha256, .. } = &mut wrong_secret {
            *secret_sha256 = "00".repeat(32);
        }
        let cases = [
            (wrong_secret, "secret"),
            (use_cmd(&t, KindRequired::ControlPlane, NOW), "control"),
            (use_cmd(&t, KindRequired::Vm, NOW + 7200), "expired"),
            (
                Command::UseToken {
                    id: "nosuchid".into(),
                    secret_sha256: secret_sha256(&t.secret),
                    required: KindRequired::Vm,
                    now: NOW,
                },
                "not known",
            ),
        ];
        for (cmd, word) in cases {
            match s.apply(&cmd, &mut ch) {
                Response::Refused(why) => assert!(why.contains(word), "{why} lacks {word}"),
                other => panic!("{cmd:?} gave {other:?}"),
            }
            assert_eq!(s, before, "a refused {cmd:?} changed the store");
        }
        s.apply(
            &Command::RevokeToken {
                id: t.id.clone(),
                now: NOW + 5,
            },
            &mut ch,
        );
        let Response::Refused(why) = s.apply(&use_cmd(&t, KindRequired::Vm, NOW + 6), &mut ch)
        else {
            panic!("a revoked token was accepted");
        };
        assert!(why.contains("revoked"), "{why}");
    }

    #[test]
    fn a_workload_use_takes_a_vm_or_gateway_token_as_its_record_says() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        for kind in [
            TokenKind::vm("default/web").unwrap(),
            TokenKind::gateway("net-2").unwrap(),
        ] {
            let (t, record) = token(kind.clone(), None);
            s.apply(&Command::CreateToken { record }, &mut ch);
            match s.apply(&use_cmd(&t, KindRequired::Workload, NOW), &mut ch) {
                Response::TokenUsed { record, node_id } => {
                    assert_eq!(record.kind, kind);
                    assert_eq!(node_id, None);
                }
                other => panic!("{kind:?} gave {other:?}"),
            }
        }
        let (t, record) = token(TokenKind::ControlPlane, None);
        s.apply(&Command::CreateToken { record }, &mut ch);
        let Response::Refused(why) = s.apply(&use_cmd(&t, KindRequired::Workload, NOW), &mut ch)
        else {
            panic!("a control-plane token gave a workload certificate");
        };
        assert!(
            why.contains("cannot be used to join a VM or east-west gateway"),
            "{why}"
        );
    }

    #[test]
    fn a_write_proposed_twice_is_applied_once() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let (t, record) = token(TokenKind::vm("default/web").unwrap(), Some(1));
        s.apply(&Command::CreateToken { record }, &mut ch);
        // A token with one use left, spent by a write that is retried
        // (its first answer lost): the retry gets the first answer.
        let spend = use_cmd(&t, KindRequired::Vm, NOW).once(NOW);
        let first = s.apply(&spend, &mut ch);
        assert!(matches!(first, Response::TokenUsed { .. }), "{first:?}");
        let after_first = s.clone();
        assert_eq!(s.apply(&spend, &mut ch), first);
        assert_eq!(s, after_first, "the retry changed the store");
        // Another write of the same command is another write: refused,
        // the token is used up.
        let again = use_cmd(&t, KindRequired::Vm, NOW).once(NOW);
        assert!(matches!(s.apply(&again, &mut ch), Response::Refused(_)));
    }

    #[test]
    fn write_ids_are_forgotten_after_the_window() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let put = |at: u64| {
            Command::Put {
                key: format!("k{at}"),
                value: vec![1],
            }
            .once(at)
        };
        let old = put(NOW);
        s.apply(&old, &mut ch);
        s.apply(&put(NOW + DEDUP_WINDOW_SECS - 1), &mut ch);
        assert_eq!(s.writes_remembered(), 2, "both within the window");
        s.apply(&put(NOW + DEDUP_WINDOW_SECS + 1), &mut ch);
        assert_eq!(s.writes_remembered(), 2, "the oldest is forgotten");
        assert!(
            !ch.iter().any(|k| k.starts_with(WRITE_PREFIX)),
            "write ids are not changes agents see: {ch:?}"
        );
    }
}
