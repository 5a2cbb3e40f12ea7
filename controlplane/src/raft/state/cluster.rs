//! The mesh's topology in the replicated key space: the DNS domain of
//! service names (`domain`), each cluster (`cluster/NAME`: its network and
//! when it joined) and which cluster each control-plane node belongs to
//! (`node/ID`). Pure functions of (store, command), as the rest of the
//! state.
use serde::{Deserialize, Serialize};
use trellis_api::topology::DEFAULT_DOMAIN;

use super::registry::{WorkloadRecord, WORKLOAD_PREFIX};
use super::{dec, MeshInfo, Response, Store, MESH_KEY, NEXT_NODE_ID};
use crate::tokens::{KindRequired, TokenKind};

/// The key of the mesh's DNS domain. A key of its own: [`MeshInfo`] is
/// bincode in snapshots and logs, so a field added to it would make them
/// unreadable.
pub const DOMAIN_KEY: &str = "domain";
pub const CLUSTER_PREFIX: &str = "cluster/";
pub const NODE_PREFIX: &str = "node/";
/// `stamp/NAME`: when cluster NAME was last heard from. Not pushed: the
/// push reads the stamps on a timer, not on every write of one.
pub const STAMP_PREFIX: &str = "stamp/";

/// `cluster/NAME`.
pub fn cluster_key(name: &str) -> String {
    format!("{CLUSTER_PREFIX}{name}")
}

/// `node/ID`.
pub fn node_key(id: u64) -> String {
    format!("{NODE_PREFIX}{id}")
}

/// `stamp/NAME`.
pub fn stamp_key(name: &str) -> String {
    format!("{STAMP_PREFIX}{name}")
}

/// A cluster of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The network its nodes, agents and gateways are on.
    pub network: String,
    /// When it joined the mesh (unix seconds); the first cluster, when the
    /// mesh was made.
    pub joined_at: u64,
}

/// Where a control-plane node is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The cluster it belongs to (its network is the cluster's).
    pub cluster: String,
    /// `region/zone/subzone`, possibly empty.
    pub locality: String,
}

/// What `init` writes: the mesh record, its domain, the first cluster and
/// the first node, together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub mesh: MeshInfo,
    pub next_node_id: u64,
    pub domain: String,
    pub cluster: String,
    pub record: ClusterRecord,
    pub node_id: u64,
    pub node: NodeRecord,
}

#[cfg(test)]
impl Bootstrap {
    /// For tests: mesh `example.org` (a stand-in root) with domain
    /// `cluster.local`, whose first cluster `east` is on `network` since
    /// `joined_at`, with node 1 there at `locality`; next node id 2.
    pub(crate) fn for_tests(network: &str, joined_at: u64, locality: &str) -> Bootstrap {
        Bootstrap {
            mesh: MeshInfo {
                trust_domain: "example.org".into(),
                root_cert_pem: "ROOT".into(),
                sealed_root_key: vec![1],
                seal_check: vec![2],
            },
            next_node_id: 2,
            domain: "cluster.local".into(),
            cluster: "east".into(),
            record: ClusterRecord {
                network: network.into(),
                joined_at,
            },
            node_id: 1,
            node: NodeRecord {
                cluster: "east".into(),
                locality: locality.into(),
            },
        }
    }
}

/// A cluster's control-plane node asking to join with a cluster token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterJoin {
    pub token_id: String,
    /// Hex SHA-256 of the token's secret: secrets never enter the log.
    pub secret_sha256: String,
    pub now: u64,
    /// The cluster the node says it joins (`--cluster`); empty: the
    /// token's.
    pub cluster: String,
    /// The node's `region/zone/subzone`, possibly empty.
    pub locality: String,
}

impl Store {
    /// The DNS domain of service names; [`DEFAULT_DOMAIN`] in a mesh made
    /// without one.
    pub fn domain(&self) -> String {
        self.map
            .get(DOMAIN_KEY)
            .and_then(|b| dec(b))
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_string())
    }

    pub fn cluster(&self, name: &str) -> Option<ClusterRecord> {
        self.map.get(&cluster_key(name)).and_then(|b| dec(b))
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> Vec<(String, ClusterRecord)> {
        self.prefixed(CLUSTER_PREFIX)
            .filter_map(|(k, v)| Some((k[CLUSTER_PREFIX.len()..].to_string(), dec(v)?)))
            .collect()
    }

    pub fn node_record(&self, id: u64) -> Option<NodeRecord> {
        self.map.get(&node_key(id)).and_then(|b| dec(b))
    }

    /// Every node's record, by id.
    pub fn node_records(&self) -> Vec<(u64, NodeRecord)> {
        let mut v: Vec<(u64, NodeRecord)> = self
            .prefixed(NODE_PREFIX)
            .filter_map(|(k, v)| Some((k[NODE_PREFIX.len()..].parse().ok()?, dec(v)?)))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// The cluster and network of node `id`, if it has a record.
    pub fn node_topology(&self, id: u64) -> Option<(String, String)> {
        let node = self.node_record(id)?;
        let network = self.cluster(&node.cluster)?.network;
        Some((node.cluster, network))
    }

    /// The ids of the nodes of cluster `name`.
    pub fn cluster_nodes(&self, name: &str) -> Vec<u64> {
        self.node_records()
            .into_iter()
            .filter(|(_, n)| n.cluster == name)
            .map(|(id, _)| id)
            .collect()
    }

    /// When cluster `name` was last heard from (unix seconds): its latest
    /// stamp, else when it joined.
    pub fn heard_from(&self, name: &str) -> Option<u64> {
        let joined = self.cluster(name)?.joined_at;
        let stamp: Option<u64> = self.map.get(&stamp_key(name)).and_then(|b| dec(b));
        Some(stamp.map_or(joined, |s| s.max(joined)))
    }

    /// The workloads registered through one of `nodes`, by key.
    pub fn workloads_through<'a>(
        &'a self,
        nodes: &'a [u64],
    ) -> impl Iterator<Item = (&'a str, WorkloadRecord)> + 'a {
        self.prefixed(WORKLOAD_PREFIX)
            .filter_map(|(k, v)| Some((k, dec::<WorkloadRecord>(v)?)))
            .filter(|(_, r)| nodes.contains(&r.conn.node))
    }

    /// Checks the token, that it is for the cluster the node names, and
    /// that the cluster is not already on another network; then spends a
    /// use, records the cluster if new and the node. A refusal changes
    /// nothing.
    pub(super) fn join_cluster(&mut self, j: &ClusterJoin, changed: &mut Vec<String>) -> Response {
        let mut record =
            match self.check_token(&j.token_id, &j.secret_sha256, KindRequired::Cluster, j.now) {
                Ok(r) => r,
                Err(refused) => return refused,
            };
        let TokenKind::Cluster { cluster, network } = record.kind.clone() else {
            return Response::Refused(format!(
                "token {} is not a cluster token; create one with `trellis token create --kind cluster`",
                j.token_id
            ));
        };
        if !j.cluster.is_empty() && j.cluster != cluster {
            return Response::Refused(format!(
                "token {} is for cluster {cluster} and cannot join cluster {}; create a token \
                 for {} with `trellis token create --kind cluster --cluster {} --network NETWORK`",
                j.token_id, j.cluster, j.cluster, j.cluster
            ));
        }
        if let Some(existing) = self.cluster(&cluster) {
            if existing.network != network {
                return Response::Refused(cluster_taken(&cluster, &existing.network, &network));
            }
        } else {
            let rec = ClusterRecord {
                network: network.clone(),
                joined_at: j.now,
            };
            self.set(cluster_key(&cluster), &rec, changed);
        }
        self.spend_token(&mut record, changed);
        let node_id = self.next_node_id(changed);
        let node = NodeRecord {
            cluster: cluster.clone(),
            locality: j.locality.clone(),
        };
        self.set(node_key(node_id), &node, changed);
        Response::ClusterJoined {
            node_id,
            cluster,
            network,
        }
    }

    /// Records node `id` in an existing cluster.
    pub(super) fn record_node(
        &mut self,
        id: u64,
        record: &NodeRecord,
        changed: &mut Vec<String>,
    ) -> Response {
        if self.cluster(&record.cluster).is_none() {
            return Response::Refused(format!("no cluster named {}", record.cluster));
        }
        self.set(node_key(id), record, changed);
        Response::Ok
    }

    /// Removes cluster `name`, its nodes' records and the workloads
    /// registered through its nodes, in one command. (Its nodes leave the
    /// Raft membership by membership changes, which are not commands.)
    pub(super) fn remove_cluster(&mut self, name: &str, changed: &mut Vec<String>) -> Response {
        if self.cluster(name).is_none() {
            return Response::Refused(format!(
                "no cluster named {name}; `trellis cluster list` shows the clusters"
            ));
        }
        let nodes = self.cluster_nodes(name);
        let workloads: Vec<String> = self
            .workloads_through(&nodes)
            .map(|(k, _)| k.to_string())
            .collect();
        let keys = [cluster_key(name), stamp_key(name)]
            .into_iter()
            .chain(nodes.iter().map(|id| node_key(*id)))
            .chain(workloads);
        for k in keys {
            self.map.remove(&k);
            changed.push(k);
        }
        self.remove_kube(name, changed);
        Response::Ok
    }

    /// Cluster `name` was heard from at `at`; a stamp never goes back
    /// (nodes of one cluster stamp it with their own clocks).
    pub(super) fn stamp_cluster(
        &mut self,
        name: &str,
        at: u64,
        changed: &mut Vec<String>,
    ) -> Response {
        if self.cluster(name).is_none() {
            return Response::Refused(format!(
                "no cluster named {name}; `trellis cluster list` shows the clusters"
            ));
        }
        let key = stamp_key(name);
        let old: u64 = self.map.get(&key).and_then(|b| dec(b)).unwrap_or(0);
        if at > old {
            self.set(key, &at, changed);
        }
        Response::Ok
    }

    pub(super) fn bootstrap(&mut self, b: &Bootstrap, changed: &mut Vec<String>) -> Response {
        if self.mesh().is_some() {
            return Response::Refused("the mesh is already initialized".into());
        }
        self.set(MESH_KEY.into(), &b.mesh, changed);
        self.set(NEXT_NODE_ID.into(), &b.next_node_id, changed);
        self.set(DOMAIN_KEY.into(), &b.domain, changed);
        self.set(cluster_key(&b.cluster), &b.record, changed);
        self.set(node_key(b.node_id), &b.node, changed);
        Response::Ok
    }
}

/// Why a cluster cannot be (re)made on `wanted`: it exists on `existing`.
pub fn cluster_taken(name: &str, existing: &str, wanted: &str) -> String {
    format!(
        "cluster name {name} is taken: it is on network {existing}, not {wanted}; pick another \
         name, or use --network {existing} to add a node to that cluster"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::Command;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            domain: "corp.example".into(),
            ..Bootstrap::for_tests("net-east", 100, "us-east1/b")
        }
    }

    #[test]
    fn bootstrap_writes_the_mesh_its_domain_first_cluster_and_node_once() {
        let mut s = Store::default();
        assert_eq!(s.domain(), "cluster.local", "a mesh made without a domain");
        let mut ch = Vec::new();
        let cmd = Command::Bootstrap(Box::new(bootstrap()));
        assert_eq!(s.apply(&cmd, &mut ch), Response::Ok);
        assert_eq!(s.domain(), "corp.example");
        assert_eq!(s.mesh(), Some(bootstrap().mesh));
        assert_eq!(s.clusters(), vec![("east".to_string(), bootstrap().record)]);
        assert_eq!(s.node_records(), vec![(1, bootstrap().node)]);
        assert_eq!(
            s.node_topology(1),
            Some(("east".to_string(), "net-east".to_string()))
        );
        assert_eq!(s.node_topology(2), None);
        for key in ["mesh", "domain", "cluster/east", "node/1"] {
            assert!(ch.iter().any(|k| k == key), "{key} not in {ch:?}");
        }
        let before = s.clone();
        assert!(matches!(s.apply(&cmd, &mut ch), Response::Refused(_)));
        assert_eq!(s, before);
    }

    #[test]
    fn a_stamp_only_moves_forward_and_only_for_a_known_cluster() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        s.apply(&Command::Bootstrap(Box::new(bootstrap())), &mut ch);
        assert_eq!(s.heard_from("east"), Some(100), "joined_at before a stamp");
        let stamp = |at| Command::StampCluster {
            cluster: "east".into(),
            at,
        };
        assert_eq!(s.apply(&stamp(500), &mut ch), Response::Ok);
        assert_eq!(s.heard_from("east"), Some(500));
        // Another node of the cluster, with a clock behind.
        assert_eq!(s.apply(&stamp(400), &mut ch), Response::Ok);
        assert_eq!(s.heard_from("east"), Some(500));
        let unknown = Command::StampCluster {
            cluster: "west".into(),
            at: 600,
        };
        let Response::Refused(why) = s.apply(&unknown, &mut ch) else {
            panic!("a stamp of no cluster is refused");
        };
        assert!(why.contains("no cluster named west"), "{why}");
        assert_eq!(s.heard_from("west"), None);
    }

    mod joining {
        use super::*;
        use crate::raft::state::registry::{Conn, Health, RegistryCommand, WorkloadRecord};
        use crate::tokens::{secret_sha256, JoinToken, TokenRecord};

        const NOW: u64 = 1_800_000_000;

        /// A bootstrapped mesh (cluster east on net-east, node 1) with a
        /// cluster token for `cluster` on `network`, `uses` uses.
        fn mesh_with_token(cluster: &str, network: &str, uses: u32) -> (Store, JoinToken) {
            let mut s = Store::default();
            let mut ch = Vec::new();
            s.apply(&Command::Bootstrap(Box::new(bootstrap())), &mut ch);
            let t = JoinToken::generate(vec!["127.0.0.1:15012".into()], [7; 32]);
            let kind = TokenKind::Cluster {
                cluster: cluster.into(),
                network: network.into(),
            };
            let record = TokenRecord::new(&t, kind, NOW, 3600, Some(uses));
            s.apply(&Command::CreateToken { record }, &mut ch);
            (s, t)
        }

        fn join(t: &JoinToken, cluster: &str, now: u64) -> Command {
            Command::JoinCluster(Box::new(ClusterJoin {
                token_id: t.id.clone(),
                secret_sha256: secret_sha256(&t.secret),
                now,
                cluster: cluster.into(),
                locality: "eu-west1/a".into(),
            }))
        }

        fn refused(s: &mut Store, cmd: &Command) -> String {
            let before = s.clone();
            let r = s.apply(cmd, &mut Vec::new());
            assert_eq!(*s, before, "a refused join changed the store");
            match r {
                Response::Refused(why) => why,
                other => panic!("{cmd:?} was not refused: {other:?}"),
            }
        }

        #[test]
        fn a_cluster_token_records_the_cluster_and_node_and_hands_out_ids() {
            let (mut s, t) = mesh_with_token("west", "net-west", 2);
            let mut ch = Vec::new();
            let first = s.apply(&join(&t, "", NOW + 1), &mut ch);
            assert_eq!(
                first,
                Response::ClusterJoined {
                    node_id: 2,
                    cluster: "west".into(),
                    network: "net-west".into()
                }
            );
            assert_eq!(
                s.cluster("west"),
                Some(ClusterRecord {
                    network: "net-west".into(),
                    joined_at: NOW + 1
                })
            );
            assert_eq!(
                s.node_topology(2),
                Some(("west".to_string(), "net-west".to_string()))
            );
            // A second node of the same cluster names it: same record.
            let Response::ClusterJoined { node_id, .. } =
                s.apply(&join(&t, "west", NOW + 2), &mut ch)
            else {
                panic!("second join refused");
            };
            assert_eq!(node_id, 3);
            assert_eq!(s.cluster("west").unwrap().joined_at, NOW + 1);
            assert_eq!(s.cluster_nodes("west"), vec![2, 3]);
            assert!(refused(&mut s, &join(&t, "west", NOW + 3)).contains("used up"));
        }

        #[test]
        fn a_token_for_one_cluster_cannot_join_another_name() {
            let (mut s, t) = mesh_with_token("west", "net-west", 1);
            let why = refused(&mut s, &join(&t, "south", NOW));
            assert!(why.contains("for cluster west"), "{why}");
            assert!(why.contains("cannot join cluster south"), "{why}");
            assert!(why.contains("--cluster south"), "{why}");
        }

        #[test]
        fn a_cluster_name_taken_on_another_network_is_refused() {
            // east is the first cluster, on net-east.
            let (mut s, t) = mesh_with_token("east", "net-other", 1);
            let why = refused(&mut s, &join(&t, "", NOW));
            assert!(why.contains("cluster name east is taken"), "{why}");
            assert!(why.contains("network net-east, not net-other"), "{why}");
        }

        #[test]
        fn expired_wrong_kind_and_unknown_tokens_are_refused() {
            let (mut s, t) = mesh_with_token("west", "net-west", 1);
            assert!(refused(&mut s, &join(&t, "", NOW + 3600)).contains("expired"));
            let other = JoinToken::generate(vec!["127.0.0.1:1".into()], [7; 32]);
            assert!(refused(&mut s, &join(&other, "", NOW)).contains("not known"));
            // A cluster token does not admit a VM or a voter of the core.
            for required in [KindRequired::Vm, KindRequired::ControlPlane] {
                let cmd = Command::UseToken {
                    id: t.id.clone(),
                    secret_sha256: secret_sha256(&t.secret),
                    required,
                    now: NOW,
                };
                assert!(refused(&mut s, &cmd).contains("cannot be used to join"));
            }
        }

        #[test]
        fn removing_a_cluster_removes_its_nodes_and_their_workloads_only() {
            let (mut s, t) = mesh_with_token("west", "net-west", 1);
            let mut ch = Vec::new();
            s.apply(&join(&t, "", NOW), &mut ch);
            let workload = |node| WorkloadRecord {
                entry_json: b"{}".to_vec(),
                group: "g".into(),
                conn: Conn { node, stream: 1 },
                registered_at: NOW,
                disconnected_at: None,
                health: Health::NoProbe,
            };
            for (key, node) in [("workload/default/a", 2), ("workload/default/b", 1)] {
                let cmd = Command::Registry(RegistryCommand::RegisterWorkload {
                    key: key.into(),
                    record: workload(node),
                });
                s.apply(&cmd, &mut ch);
            }
            assert_eq!(s.workloads_through(&[2]).count(), 1);
            let stamp = Command::StampCluster {
                cluster: "west".into(),
                at: NOW + 5,
            };
            assert_eq!(s.apply(&stamp, &mut ch), Response::Ok);
            ch.clear();
            let remove = Command::RemoveCluster {
                name: "west".into(),
            };
            assert_eq!(s.apply(&remove, &mut ch), Response::Ok);
            assert_eq!(s.cluster("west"), None);
            assert_eq!(s.node_record(2), None);
            assert!(s.workload("workload/default/a").is_none());
            assert!(s.workload("workload/default/b").is_some(), "east's stays");
            assert!(s.cluster("east").is_some());
            assert_eq!(s.heard_from("west"), None);
            for key in ["cluster/west", "stamp/west", "node/2", "workload/default/a"] {
                assert!(ch.iter().any(|k| k == key), "{key} not in {ch:?}");
            }
            assert!(refused(&mut s, &remove).contains("no cluster named west"));
        }
    }
}
