//! The clusters part of the `Admin` service: `trellis cluster list` and
//! `trellis cluster remove`. What a listing shows is a plain function of
//! the store and the members' status ([`clusters`]).
use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::Status;
use trellis_api::v1::{ClusterInfo, ClusterNode, ListClustersResponse, Member};

use crate::node::{now, LeaderOp, Node, NodeError};
use crate::push::local::stale_clusters;
use crate::raft::state::Command;
use crate::raft::Store;

/// Every cluster with its nodes (role and freshness from `members`, as
/// seen by a node that applied up to `applied`), its endpoints, and the
/// age of its stamp at `now` (`stale`: the clusters the answering node
/// takes as stale).
pub fn clusters(
    store: &Store,
    members: &[Member],
    applied: u64,
    now: u64,
    stale: &BTreeSet<String>,
) -> Vec<ClusterInfo> {
    let records = store.node_records();
    store
        .clusters()
        .into_iter()
        .map(|(name, rec)| {
            let ids = store.cluster_nodes(&name);
            let nodes = records
                .iter()
                .filter(|(_, n)| n.cluster == name)
                .map(|(id, n)| {
                    let m = members.iter().find(|m| m.node_id == *id);
                    let last = m.and_then(|m| m.last_applied_index);
                    ClusterNode {
                        node_id: *id,
                        address: m.map(|m| m.address.clone()).unwrap_or_default(),
                        role: m.map_or("removed", |m| m.role.as_str()).to_string(),
                        leader: m.is_some_and(|m| m.leader),
                        locality: n.locality.clone(),
                        last_applied_index: last,
                        lag: last.map(|l| applied.saturating_sub(l)),
                    }
                })
                .collect();
            let is_stale = stale.contains(&name);
            let (mut endpoints, mut ready) = (0, 0);
            for (_, w) in store.workloads_through(&ids) {
                endpoints += 1;
                if w.disconnected_at.is_none() && w.health.is_ready() && !is_stale {
                    ready += 1;
                }
            }
            let heard = store.heard_from(&name).unwrap_or(rec.joined_at);
            ClusterInfo {
                stamp_age_seconds: now.saturating_sub(heard),
                stale: is_stale,
                name,
                network: rec.network,
                joined_at_unix: rec.joined_at as i64,
                nodes,
                endpoints,
                ready_endpoints: ready,
            }
        })
        .collect()
}

/// `ListClusters`.
pub async fn list(node: &Arc<Node>) -> ListClustersResponse {
    let members = node.members().await;
    let applied = node
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |l| l.index);
    let now = now();
    ListClustersResponse {
        clusters: node.read_state(|s| {
            let stale = stale_clusters(&s.store, node.id, now, node.settings.cluster_stale_after);
            clusters(&s.store, &members, applied, now, &stale)
        }),
    }
}

/// `RemoveCluster`: its nodes leave the membership (learners only: a
/// cluster holding voters is refused, as removing them could cost the
/// quorum), then the cluster and everything it registered go in one write.
pub async fn remove(node: &Arc<Node>, name: &str) -> Result<ListClustersResponse, Status> {
    let (exists, ids) =
        node.read_state(|s| (s.store.cluster(name).is_some(), s.store.cluster_nodes(name)));
    if !exists {
        return Err(Status::not_found(format!(
            "no cluster named {name}; `trellis cluster list` shows the clusters"
        )));
    }
    let members = node.raft.metrics().borrow().membership_config.clone();
    let membership = members.membership();
    let voters: Vec<u64> = membership.voter_ids().filter(|v| ids.contains(v)).collect();
    if !voters.is_empty() {
        return Err(Status::failed_precondition(format!(
            "cluster {name} holds voters (nodes {voters:?}); join voters elsewhere, then remove \
             these one by one with `trellis controlplane remove ID` before removing the cluster"
        )));
    }
    for id in ids.iter().filter(|id| membership.get_node(id).is_some()) {
        match node.leader_op(LeaderOp::RemoveNode { id: *id }).await {
            Ok(_) | Err(NodeError::NotMember(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    node.write(Command::RemoveCluster {
        name: name.to_string(),
    })
    .await?;
    tracing::info!(cluster = %name, nodes = ?ids, "removed a cluster");
    Ok(list(node).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::registry::{Conn, Health, RegistryCommand, WorkloadRecord};
    use crate::raft::state::{Bootstrap, ClusterRecord, MeshInfo, NodeRecord};

    fn store() -> Store {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let b = Bootstrap {
            mesh: MeshInfo {
                trust_domain: "example.org".into(),
                root_cert_pem: "ROOT".into(),
                sealed_root_key: vec![1],
                seal_check: vec![2],
            },
            next_node_id: 3,
            domain: "cluster.local".into(),
            cluster: "east".into(),
            record: ClusterRecord {
                network: "net-east".into(),
                joined_at: 100,
            },
            node_id: 1,
            node: NodeRecord {
                cluster: "east".into(),
                locality: "us/a".into(),
            },
        };
        s.apply(&Command::Bootstrap(Box::new(b)), &mut ch);
        for (key, node, health, gone) in [
            ("workload/default/a", 1, Health::NoProbe, None),
            (
                "workload/default/b",
                1,
                Health::Unhealthy("probe".into()),
                None,
            ),
            ("workload/default/c", 1, Health::Healthy, Some(5)),
            ("workload/default/d", 2, Health::Healthy, None),
        ] {
            let record = WorkloadRecord {
                entry_json: b"{}".to_vec(),
                group: "g".into(),
                conn: Conn { node, stream: 1 },
                registered_at: 1,
                disconnected_at: gone,
                health,
            };
            let cmd = Command::Registry(RegistryCommand::RegisterWorkload {
                key: key.into(),
                record,
            });
            s.apply(&cmd, &mut ch);
        }
        s
    }

    fn member(id: u64, role: &str, applied: Option<u64>) -> Member {
        Member {
            node_id: id,
            address: format!("127.0.0.{id}:15012"),
            role: role.into(),
            leader: id == 1,
            last_applied_index: applied,
        }
    }

    #[test]
    fn a_listing_counts_ready_endpoints_and_says_how_far_behind_each_node_is() {
        let c = clusters(
            &store(),
            &[member(1, "voter", Some(40))],
            42,
            130,
            &BTreeSet::new(),
        );
        assert_eq!(c.len(), 1);
        let east = &c[0];
        assert_eq!(
            (east.name.as_str(), east.network.as_str()),
            ("east", "net-east")
        );
        // d registered through node 2, which is not east's.
        assert_eq!((east.endpoints, east.ready_endpoints), (3, 1));
        let n = &east.nodes[0];
        assert_eq!((n.node_id, n.role.as_str(), n.leader), (1, "voter", true));
        assert_eq!((n.last_applied_index, n.lag), (Some(40), Some(2)));
        assert_eq!(n.locality, "us/a");
        assert_eq!((east.stamp_age_seconds, east.stale), (30, false));
    }

    #[test]
    fn a_stale_cluster_has_no_ready_endpoint_and_its_stamp_age_shows() {
        let mut s = store();
        let stamp = Command::StampCluster {
            cluster: "east".into(),
            at: 150,
        };
        s.apply(&stamp, &mut Vec::new());
        let stale = BTreeSet::from(["east".to_string()]);
        let c = clusters(&s, &[member(1, "voter", Some(42))], 42, 200, &stale);
        let east = &c[0];
        assert_eq!((east.stamp_age_seconds, east.stale), (50, true));
        assert_eq!((east.endpoints, east.ready_endpoints), (3, 0));
    }

    #[test]
    fn a_node_that_left_the_membership_or_did_not_answer_says_so() {
        let none = BTreeSet::new();
        let c = clusters(&store(), &[], 42, 100, &none);
        let n = &c[0].nodes[0];
        assert_eq!((n.role.as_str(), n.lag), ("removed", None));
        let c = clusters(&store(), &[member(1, "voter", None)], 42, 100, &none);
        assert_eq!(c[0].nodes[0].lag, None, "unreachable: no freshness");
    }
}
