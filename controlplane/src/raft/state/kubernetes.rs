//! What Kubernetes discovery writes: each cluster's records
//! (`kube/CLUSTER/KIND/NS/NAME`, a [`StoredConfig`] like an applied
//! resource, pushed to agents alike) and the lease of its one writer
//! (`kube-lease/CLUSTER`).
//!
//! A [`KubeSync`] is the only write: it takes or renews the lease for its
//! node and applies its changes, all or nothing. The lease is held until
//! `expires`, in the time of the commands (the proposers' clocks): while
//! one node holds it, another node of the cluster is refused; once it
//! expired, the next node to write takes it over.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::registry::StoredConfig;
pub use super::registry::KUBE_PREFIX;
use super::{dec, Response, Store};

const LEASE_PREFIX: &str = "kube-lease/";

/// `kube/CLUSTER/`: the prefix of a cluster's records.
pub fn kube_prefix(cluster: &str) -> String {
    format!("{KUBE_PREFIX}{cluster}/")
}

/// (cluster, `KIND/NS/NAME`) of a `kube/` key.
pub fn parse_kube_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(KUBE_PREFIX)?.split_once('/')
}

fn lease_key(cluster: &str) -> String {
    format!("{LEASE_PREFIX}{cluster}")
}

/// Who writes a cluster's discovery, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeLease {
    pub holder: u64,
    /// Seconds since the epoch, in the holder's clock.
    pub expires: u64,
    /// Writes that changed records, since the cluster's first: a sync
    /// that finds nothing to change only renews the lease.
    pub changes: u64,
}

/// Node `node` of `cluster` takes or renews the cluster's lease at `now`
/// for `lease_secs`, and writes the changes of its records (keys
/// `KIND/NS/NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSync {
    pub cluster: String,
    pub node: u64,
    pub now: u64,
    pub lease_secs: u64,
    pub upserts: Vec<(String, StoredConfig)>,
    pub deletes: Vec<String>,
}

impl Store {
    /// The records of `cluster`, by `KIND/NS/NAME`.
    pub fn kube_records(&self, cluster: &str) -> BTreeMap<String, StoredConfig> {
        let prefix = kube_prefix(cluster);
        self.prefixed(&prefix)
            .filter_map(|(k, v)| Some((k[prefix.len()..].to_string(), dec(v)?)))
            .collect()
    }

    pub fn kube_lease(&self, cluster: &str) -> Option<KubeLease> {
        self.map.get(&lease_key(cluster)).and_then(|b| dec(b))
    }

    pub(super) fn kube_sync(&mut self, s: &KubeSync, changed: &mut Vec<String>) -> Response {
        if self.cluster(&s.cluster).is_none() {
            return Response::Refused(format!(
                "no cluster named {}; `trellis cluster list` shows the clusters",
                s.cluster
            ));
        }
        if self.node_record(s.node).map(|n| n.cluster) != Some(s.cluster.clone()) {
            return Response::Refused(format!(
                "node {} is not a node of cluster {}: only its own nodes write its Kubernetes \
                 discovery",
                s.node, s.cluster
            ));
        }
        let old = self.kube_lease(&s.cluster);
        if let Some(l) = old
            .as_ref()
            .filter(|l| l.holder != s.node && l.expires > s.now)
        {
            return Response::Refused(format!(
                "node {} writes the Kubernetes discovery of cluster {} until {} (now {})",
                l.holder, s.cluster, l.expires, s.now
            ));
        }
        let changes = !s.upserts.is_empty() || !s.deletes.is_empty();
        let lease = KubeLease {
            holder: s.node,
            expires: s.now + s.lease_secs,
            changes: old.map_or(0, |l| l.changes) + u64::from(changes),
        };
        self.set(lease_key(&s.cluster), &lease, changed);
        let prefix = kube_prefix(&s.cluster);
        // A ServiceEntry without addresses (a cluster's Istio resource)
        // gets virtual IPs, as one applied with `trellis apply` does.
        let mut vips_touched = false;
        for rel in &s.deletes {
            let key = format!("{prefix}{rel}");
            vips_touched |= self.config(&key).is_some_and(|o| !o.vip_hosts.is_empty());
            if self.map.remove(&key).is_some() {
                changed.push(key);
            }
        }
        for (rel, value) in &s.upserts {
            let key = format!("{prefix}{rel}");
            vips_touched |= !value.vip_hosts.is_empty()
                || self.config(&key).is_some_and(|o| !o.vip_hosts.is_empty());
            self.set(key, value, changed);
        }
        if vips_touched {
            self.reallocate_vips(changed);
        }
        Response::Ok
    }

    /// Removes every record and the lease of `cluster` (it left the mesh).
    pub(super) fn remove_kube(&mut self, cluster: &str, changed: &mut Vec<String>) {
        let keys: Vec<String> = self
            .prefixed(&kube_prefix(cluster))
            .map(|(k, _)| k.to_string())
            .chain(std::iter::once(lease_key(cluster)))
            .collect();
        for k in keys {
            if self.map.remove(&k).is_some() {
                changed.push(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::cluster::{Bootstrap, NodeRecord};
    use crate::raft::state::Command;

    /// Cluster east with nodes 1 and 2, and node 3 of cluster west.
    fn store() -> Store {
        let mut s = Store::default();
        let mut ch = Vec::new();
        s.apply(
            &Command::Bootstrap(Box::new(Bootstrap::for_tests("net-east", 1, ""))),
            &mut ch,
        );
        for (id, cluster) in [(2, "east"), (3, "west")] {
            s.apply(
                &Command::RecordNode {
                    id,
                    record: NodeRecord {
                        cluster: cluster.into(),
                        locality: String::new(),
                    },
                },
                &mut ch,
            );
        }
        s
    }

    fn record(json: &str) -> StoredConfig {
        StoredConfig {
            json: json.as_bytes().to_vec(),
            vip_hosts: vec![],
        }
    }

    fn sync(node: u64, now: u64, upserts: &[(&str, &str)], deletes: &[&str]) -> Command {
        Command::SyncKubernetes(Box::new(KubeSync {
            cluster: "east".into(),
            node,
            now,
            lease_secs: 15,
            upserts: upserts
                .iter()
                .map(|(k, v)| (k.to_string(), record(v)))
                .collect(),
            deletes: deletes.iter().map(|k| k.to_string()).collect(),
        }))
    }

    fn apply(s: &mut Store, cmd: &Command) -> Response {
        s.apply(cmd, &mut Vec::new())
    }

    #[test]
    fn the_holder_writes_and_another_node_waits_for_the_lease_to_expire() {
        let mut s = store();
        let se = "ServiceEntry/prod/reviews";
        assert_eq!(
            apply(&mut s, &sync(1, 100, &[(se, "1")], &[])),
            Response::Ok
        );
        assert_eq!(
            s.kube_records("east"),
            [(se.to_string(), record("1"))].into()
        );
        let lease = s.kube_lease("east").unwrap();
        assert_eq!((lease.holder, lease.expires, lease.changes), (1, 115, 1));
        // Node 2 of the same cluster: refused while node 1 holds it.
        let before = s.clone();
        let Response::Refused(why) = apply(&mut s, &sync(2, 114, &[(se, "2")], &[])) else {
            panic!("node 2 wrote while node 1 held the lease")
        };
        assert!(
            why.contains("node 1 writes the Kubernetes discovery of cluster east until 115"),
            "{why}"
        );
        assert_eq!(s, before, "nothing changed");
        // Node 1 renews without changes: not counted as a change.
        assert_eq!(apply(&mut s, &sync(1, 110, &[], &[])), Response::Ok);
        let lease = s.kube_lease("east").unwrap();
        assert_eq!((lease.holder, lease.expires, lease.changes), (1, 125, 1));
        // Node 1 stops renewing; node 2 takes over once it expired.
        assert!(matches!(
            apply(&mut s, &sync(2, 124, &[], &[])),
            Response::Refused(_)
        ));
        assert_eq!(
            apply(&mut s, &sync(2, 125, &[(se, "2")], &[])),
            Response::Ok
        );
        let lease = s.kube_lease("east").unwrap();
        assert_eq!((lease.holder, lease.expires, lease.changes), (2, 140, 2));
        // Now node 1 is the one refused.
        assert!(matches!(
            apply(&mut s, &sync(1, 130, &[], &[se]),),
            Response::Refused(_)
        ));
        assert_eq!(s.kube_records("east")[se], record("2"));
    }

    #[test]
    fn only_a_node_of_the_cluster_writes_it() {
        let mut s = store();
        let Response::Refused(why) = apply(&mut s, &sync(3, 100, &[("a/b/c", "1")], &[])) else {
            panic!()
        };
        assert!(
            why.contains("node 3 is not a node of cluster east"),
            "{why}"
        );
        let mut other = sync(1, 100, &[], &[]);
        if let Command::SyncKubernetes(k) = &mut other {
            k.cluster = "nowhere".into();
        }
        assert!(matches!(apply(&mut s, &other), Response::Refused(_)));
        assert_eq!(s.kube_lease("east"), None);
    }

    #[test]
    fn deletes_and_upserts_touch_only_their_records_and_say_so() {
        let mut s = store();
        let mut ch = Vec::new();
        s.apply(
            &sync(1, 100, &[("A/ns/a", "1"), ("B/ns/b", "1")], &[]),
            &mut ch,
        );
        ch.clear();
        // A delete of a record that is gone already is no error.
        s.apply(
            &sync(1, 101, &[("B/ns/b", "2")], &["A/ns/a", "C/ns/gone"]),
            &mut ch,
        );
        assert_eq!(
            s.kube_records("east").into_keys().collect::<Vec<_>>(),
            ["B/ns/b"]
        );
        assert_eq!(
            ch,
            ["kube-lease/east", "kube/east/A/ns/a", "kube/east/B/ns/b"]
        );
        assert_eq!(parse_kube_key("kube/east/B/ns/b"), Some(("east", "B/ns/b")));
    }

    #[test]
    fn a_clusters_service_entry_without_addresses_gets_a_virtual_ip() {
        let mut s = store();
        let se = StoredConfig {
            json: b"{}".to_vec(),
            vip_hosts: vec!["ratings.example".into()],
        };
        let key = "config/ServiceEntry/prod/ratings";
        let cmd = Command::SyncKubernetes(Box::new(KubeSync {
            cluster: "east".into(),
            node: 1,
            now: 100,
            lease_secs: 15,
            upserts: vec![(key.into(), se)],
            deletes: vec![],
        }));
        s.apply(&cmd, &mut Vec::new());
        assert!(s.vip("ratings.example").is_some());
        s.apply(&sync(1, 101, &[], &[key]), &mut Vec::new());
        assert_eq!(s.vip("ratings.example"), None, "freed with it");
    }

    #[test]
    fn removing_the_cluster_removes_its_records_and_lease_only() {
        let mut s = store();
        s.apply(&sync(1, 100, &[("A/ns/a", "1")], &[]), &mut Vec::new());
        // A cluster whose name starts alike keeps its records.
        s.map
            .insert("kube/east2/A/ns/a".into(), super::super::enc(&record("1")));
        let mut ch = Vec::new();
        assert_eq!(
            s.apply(
                &Command::RemoveCluster {
                    name: "east".into()
                },
                &mut ch
            ),
            Response::Ok
        );
        assert!(s.kube_records("east").is_empty());
        assert_eq!(s.kube_lease("east"), None);
        assert_eq!(s.kube_records("east2").len(), 1);
        for key in ["kube/east/A/ns/a", "kube-lease/east"] {
            assert!(ch.iter().any(|k| k == key), "{key} not in {ch:?}");
        }
    }
}
