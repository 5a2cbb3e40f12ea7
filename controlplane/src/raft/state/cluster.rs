//! The mesh's topology in the replicated key space: the DNS domain of
//! service names (`domain`), each cluster (`cluster/NAME`: its network and
//! when it joined) and which cluster each control-plane node belongs to
//! (`node/ID`). Pure functions of (store, command), as the rest of the
//! state.
use serde::{Deserialize, Serialize};
use trellis_api::topology::DEFAULT_DOMAIN;

use super::{dec, MeshInfo, Response, Store, MESH_KEY, NEXT_NODE_ID};

/// The key of the mesh's DNS domain. A key of its own: [`MeshInfo`] is
/// bincode in snapshots and logs, so a field added to it would make them
/// unreadable.
pub const DOMAIN_KEY: &str = "domain";
pub const CLUSTER_PREFIX: &str = "cluster/";
pub const NODE_PREFIX: &str = "node/";

/// `cluster/NAME`.
pub fn cluster_key(name: &str) -> String {
    format!("{CLUSTER_PREFIX}{name}")
}

/// `node/ID`.
pub fn node_key(id: u64) -> String {
    format!("{NODE_PREFIX}{id}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::Command;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            mesh: MeshInfo {
                trust_domain: "example.org".into(),
                root_cert_pem: "ROOT".into(),
                sealed_root_key: vec![1],
                seal_check: vec![2],
            },
            next_node_id: 2,
            domain: "corp.example".into(),
            cluster: "east".into(),
            record: ClusterRecord {
                network: "net-east".into(),
                joined_at: 100,
            },
            node_id: 1,
            node: NodeRecord {
                cluster: "east".into(),
                locality: "us-east1/b".into(),
            },
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
}
