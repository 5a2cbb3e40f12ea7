//! The clusters part of the `Admin` service: `trellis cluster list` and
//! `trellis cluster remove`. What a listing shows is a plain function of
//! the store and the members' status ([`listing`]).
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tonic::Status;
use trellis_api::v1::{
    ClusterInfo, ClusterNode, GatewayInfo, ListClustersResponse, Member, NetworkInfo,
};

use crate::node::{now, LeaderOp, Node, NodeError};
use crate::push::item::endpoint_network;
use crate::push::local::stale_clusters;
use crate::raft::state::registry::{gateway_key, WorkloadRecord, WORKLOAD_PREFIX};
use crate::raft::state::Command;
use crate::raft::Store;

/// Every cluster with its nodes (role and freshness from `members`, as
/// seen by a node that applied up to `applied`), its gateways, its
/// endpoints, and the age of its stamp at `now`; and every network with
/// its endpoints and gateways (`stale`: the clusters the answering node
/// takes as stale).
pub fn listing(
    store: &Store,
    members: &[Member],
    applied: u64,
    now: u64,
    stale: &BTreeSet<String>,
) -> ListClustersResponse {
    let endpoints = endpoints_by_network(store, stale);
    let gateways = gateways(store, now, stale, &endpoints);
    ListClustersResponse {
        clusters: clusters(store, members, applied, now, stale, &gateways),
        networks: networks(store, &endpoints, &gateways),
    }
}

fn clusters(
    store: &Store,
    members: &[Member],
    applied: u64,
    now: u64,
    stale: &BTreeSet<String>,
    gateways: &[GatewayInfo],
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
                if is_ready(&w, is_stale) {
                    ready += 1;
                }
            }
            // The pods its Kubernetes discovery wrote: ready unless stale.
            let pods = kube_endpoints(store, &name).count() as u32;
            endpoints += pods;
            if !is_stale {
                ready += pods;
            }
            let heard = store.heard_from(&name).unwrap_or(rec.joined_at);
            ClusterInfo {
                stamp_age_seconds: now.saturating_sub(heard),
                stale: is_stale,
                gateways: gateways
                    .iter()
                    .filter(|g| g.cluster == name || g.network == rec.network)
                    .cloned()
                    .collect(),
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

/// The JSON of the pods' WorkloadEntries `cluster`'s Kubernetes discovery
/// wrote (a Service's inline endpoints are not counted).
fn kube_endpoints<'a>(store: &'a Store, cluster: &str) -> impl Iterator<Item = Vec<u8>> + 'a {
    store
        .kube_records(cluster)
        .into_iter()
        .filter(|(k, _)| k.starts_with("WorkloadEntry/"))
        .map(|(_, v)| v.json)
}

/// Whether a registered workload takes traffic: connected, healthy, and
/// not registered through a node of a stale cluster.
fn is_ready(w: &WorkloadRecord, through_stale: bool) -> bool {
    w.disconnected_at.is_none() && w.health.is_ready() && !through_stale
}

/// Endpoints (all, ready), registered or a cluster's pods, by their network as agents read it;
/// one that says none is every caller's own, on no network listed.
fn endpoints_by_network(store: &Store, stale: &BTreeSet<String>) -> BTreeMap<String, (u32, u32)> {
    let cluster_of: BTreeMap<u64, String> = store
        .node_records()
        .into_iter()
        .map(|(id, n)| (id, n.cluster))
        .collect();
    let mut by_network: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for (cluster, _) in store.clusters() {
        for json in kube_endpoints(store, &cluster) {
            let network = endpoint_network(&json);
            if network.is_empty() {
                continue;
            }
            let (all, ready) = by_network.entry(network.to_string()).or_default();
            *all += 1;
            if !stale.contains(&cluster) {
                *ready += 1;
            }
        }
    }
    for w in store
        .prefixed(WORKLOAD_PREFIX)
        .filter_map(|(k, _)| store.workload(k))
    {
        let network = endpoint_network(&w.entry_json);
        if network.is_empty() {
            continue;
        }
        let through_stale = cluster_of
            .get(&w.conn.node)
            .is_some_and(|c| stale.contains(c));
        let (all, ready) = by_network.entry(network.to_string()).or_default();
        *all += 1;
        if is_ready(&w, through_stale) {
            *ready += 1;
        }
    }
    by_network
}

/// Every registered gateway. A registration lasts as long as the
/// gateway's stream (the sweep removes one whose node lost it), so a
/// registered gateway is healthy unless the node holding its stream is
/// in a stale cluster (or has no record): then nobody knows.
fn gateways(
    store: &Store,
    now: u64,
    stale: &BTreeSet<String>,
    endpoints: &BTreeMap<String, (u32, u32)>,
) -> Vec<GatewayInfo> {
    store
        .gateways()
        .into_iter()
        .map(|(key, g)| {
            let cluster = store.node_record(g.conn.node).map(|n| n.cluster);
            let heard = cluster.as_deref().and_then(|c| store.heard_from(c));
            GatewayInfo {
                name: key
                    .strip_prefix(&gateway_key(&g.network, ""))
                    .unwrap_or(&key)
                    .to_string(),
                healthy: cluster.is_some_and(|c| !stale.contains(&c)),
                heard_from_seconds: heard.map(|h| now.saturating_sub(h)),
                endpoints: endpoints.get(&g.network).map_or(0, |(_, ready)| *ready),
                network: g.network,
                cluster: g.cluster,
                addresses: g.addresses,
                node_id: g.conn.node,
                registered_at_unix: g.registered_at as i64,
            }
        })
        .collect()
}

/// Every network named by a cluster, a gateway or a registered endpoint.
fn networks(
    store: &Store,
    endpoints: &BTreeMap<String, (u32, u32)>,
    gateways: &[GatewayInfo],
) -> Vec<NetworkInfo> {
    let names: BTreeSet<String> = store
        .clusters()
        .into_iter()
        .map(|(_, c)| c.network)
        .chain(gateways.iter().map(|g| g.network.clone()))
        .chain(endpoints.keys().cloned())
        .collect();
    names
        .into_iter()
        .map(|name| {
            let (all, ready) = endpoints.get(&name).copied().unwrap_or_default();
            let on = || gateways.iter().filter(|g| g.network == name);
            NetworkInfo {
                endpoints: all,
                ready_endpoints: ready,
                gateways: on().count() as u32,
                healthy_gateways: on().filter(|g| g.healthy).count() as u32,
                name,
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
    node.read_state(|s| {
        let stale = stale_clusters(&s.store, node.id, now, node.settings.cluster_stale_after);
        listing(&s.store, &members, applied, now, &stale)
    })
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
    use crate::raft::state::registry::{
        gateway_key, Conn, GatewayRecord, Health, RegistryCommand, WorkloadRecord,
    };
    use crate::raft::state::Bootstrap;

    fn store() -> Store {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let b = Bootstrap {
            next_node_id: 3,
            ..Bootstrap::for_tests("net-east", 100, "us/a")
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
        let c = listing(
            &store(),
            &[member(1, "voter", Some(40))],
            42,
            130,
            &BTreeSet::new(),
        )
        .clusters;
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
        let c = listing(&s, &[member(1, "voter", Some(42))], 42, 200, &stale).clusters;
        let east = &c[0];
        assert_eq!((east.stamp_age_seconds, east.stale), (50, true));
        assert_eq!((east.endpoints, east.ready_endpoints), (3, 0));
    }

    #[test]
    fn a_clusters_pods_count_among_its_endpoints_and_its_networks() {
        use crate::raft::state::kubernetes::KubeSync;
        use crate::raft::state::registry::StoredConfig;
        let mut s = store();
        let entry = |ip: &str| StoredConfig {
            json: serde_json::to_vec(&serde_json::json!({
                "spec": {"address": ip, "network": "net-east"}
            }))
            .unwrap(),
            vip_hosts: vec![],
        };
        let sync = Command::SyncKubernetes(Box::new(KubeSync {
            cluster: "east".into(),
            node: 1,
            now: 100,
            lease_secs: 15,
            upserts: vec![
                ("ServiceEntry/default/r".into(), entry("")),
                ("WorkloadEntry/default/p1.east".into(), entry("10.0.0.1")),
                ("WorkloadEntry/default/p2.east".into(), entry("10.0.0.2")),
            ],
            deletes: vec![],
        }));
        s.apply(&sync, &mut Vec::new());
        let members = [member(1, "voter", Some(42))];
        let l = listing(&s, &members, 42, 130, &BTreeSet::new());
        // Three registered (one ready), two pods (ready).
        assert_eq!(
            (l.clusters[0].endpoints, l.clusters[0].ready_endpoints),
            (5, 3)
        );
        let net = l.networks.iter().find(|n| n.name == "net-east").unwrap();
        assert_eq!((net.endpoints, net.ready_endpoints), (2, 2));
        let stale = BTreeSet::from(["east".to_string()]);
        let l = listing(&s, &members, 42, 130, &stale);
        assert_eq!(
            (l.clusters[0].endpoints, l.clusters[0].ready_endpoints),
            (5, 0)
        );
    }

    #[test]
    fn a_node_that_left_the_membership_or_did_not_answer_says_so() {
        let none = BTreeSet::new();
        let c = listing(&store(), &[], 42, 100, &none).clusters;
        let n = &c[0].nodes[0];
        assert_eq!((n.role.as_str(), n.lag), ("removed", None));
        let c = listing(&store(), &[member(1, "voter", None)], 42, 100, &none).clusters;
        assert_eq!(c[0].nodes[0].lag, None, "unreachable: no freshness");
    }

    /// `store()` with endpoints that say their network (`e` and `f` on
    /// net-east, `f` gone; `g` on net-west through node 2), and net-east's
    /// gateway `gw-1` on stream `conn`, registered at 110; east stamped at
    /// 120.
    fn with_gateway(conn: Conn) -> Store {
        let mut s = store();
        let mut ch = Vec::new();
        for (key, network, node, gone) in [
            ("workload/default/e", "net-east", 1, None),
            ("workload/default/f", "net-east", 1, Some(5)),
            ("workload/default/g", "net-west", 2, None),
        ] {
            let entry = serde_json::json!({"spec": {"address": "10.0.0.1", "network": network}});
            let record = WorkloadRecord {
                entry_json: serde_json::to_vec(&entry).unwrap(),
                group: "g".into(),
                conn: Conn { node, stream: 1 },
                registered_at: 1,
                disconnected_at: gone,
                health: Health::NoProbe,
            };
            let cmd = RegistryCommand::RegisterWorkload {
                key: key.into(),
                record,
            };
            s.apply(&Command::Registry(cmd), &mut ch);
        }
        let record = GatewayRecord {
            network: "net-east".into(),
            cluster: "east".into(),
            addresses: vec!["192.0.2.1:15443".into()],
            conn,
            registered_at: 110,
        };
        let cmd = RegistryCommand::RegisterGateway {
            key: gateway_key("net-east", "gw-1"),
            record,
        };
        s.apply(&Command::Registry(cmd), &mut ch);
        let stamp = Command::StampCluster {
            cluster: "east".into(),
            at: 120,
        };
        s.apply(&stamp, &mut ch);
        s
    }

    #[test]
    fn a_registered_gateway_is_healthy_with_the_ready_endpoints_of_its_network() {
        let conn = Conn { node: 1, stream: 7 };
        let l = listing(&with_gateway(conn), &[], 42, 130, &BTreeSet::new());
        let gws = &l.clusters[0].gateways;
        assert_eq!(gws.len(), 1, "{gws:?}");
        let g = &gws[0];
        assert_eq!((g.name.as_str(), g.network.as_str()), ("gw-1", "net-east"));
        assert_eq!(g.addresses, ["192.0.2.1:15443"]);
        assert_eq!((g.node_id, g.registered_at_unix), (1, 110));
        assert!(g.healthy);
        assert_eq!(g.heard_from_seconds, Some(10));
        // e only: f is gone, g on another network.
        assert_eq!(g.endpoints, 1);
        let nets: Vec<(&str, u32, u32, u32, u32)> = l
            .networks
            .iter()
            .map(|n| {
                let counts = (n.endpoints, n.ready_endpoints);
                let gws = (n.gateways, n.healthy_gateways);
                (n.name.as_str(), counts.0, counts.1, gws.0, gws.1)
            })
            .collect();
        assert_eq!(
            nets,
            [("net-east", 2, 1, 1, 1), ("net-west", 1, 1, 0, 0)],
            "net-west's endpoint cannot be reached from other networks"
        );
    }

    #[test]
    fn a_gateway_held_by_a_stale_or_unknown_node_is_unhealthy() {
        let conn = Conn { node: 1, stream: 7 };
        let stale = BTreeSet::from(["east".to_string()]);
        let l = listing(&with_gateway(conn), &[], 42, 200, &stale);
        let g = &l.clusters[0].gateways[0];
        assert!(!g.healthy);
        assert_eq!((g.heard_from_seconds, g.endpoints), (Some(80), 0));
        assert_eq!(l.networks[0].healthy_gateways, 0);
        // Node 9 has no record: nobody vouches for its stream.
        let unknown = Conn { node: 9, stream: 7 };
        let l = listing(&with_gateway(unknown), &[], 42, 130, &BTreeSet::new());
        let g = &l.clusters[0].gateways[0];
        assert_eq!((g.healthy, g.heard_from_seconds), (false, None));
    }

    #[test]
    fn a_gateway_whose_stream_ended_is_not_listed_and_its_network_has_none() {
        let conn = Conn { node: 1, stream: 7 };
        let mut s = with_gateway(conn);
        let gone = RegistryCommand::GatewayDisconnected {
            key: gateway_key("net-east", "gw-1"),
            conn,
        };
        s.apply(&Command::Registry(gone), &mut Vec::new());
        let l = listing(&s, &[], 42, 130, &BTreeSet::new());
        assert!(l.clusters[0].gateways.is_empty());
        assert_eq!((l.networks[0].gateways, l.networks[0].endpoints), (0, 2));
    }
}
