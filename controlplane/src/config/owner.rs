//! The ownership rule: which copy of a resource is in force when the same
//! kind, namespace and name comes from `trellis apply` and from the Istio
//! custom resources of one or more Kubernetes clusters.
//!
//! - A copy applied with `trellis apply` (`config/KIND/NS/NAME`) wins over
//!   every cluster's.
//! - Between clusters (`kube/CLUSTER/config/KIND/NS/NAME`), the oldest
//!   `metadata.creationTimestamp` wins, ties by cluster name: Istio's rule
//!   for conflicting resources is "oldest wins".
//! - The other copies are kept but shadowed: never pushed to agents;
//!   `trellis get` shows them with the source that shadows them, and one
//!   takes over as soon as the copy in force goes.
//!
//! This is the one place the rule is decided; the push, `trellis get`,
//! `trellis delete` and `trellis analyze` ask it.
use trellis_api::annotations;
use trellis_kubernetes::config::{CONFIG, INVALID};

use crate::raft::state::kubernetes::{kube_prefix, parse_kube_key};
use crate::raft::state::registry::CONFIG_PREFIX;
use crate::raft::Store;

/// Where a copy comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `trellis apply`.
    Trellis,
    /// A cluster's custom resource, created at that time (RFC 3339; a
    /// copy without one ranks last).
    Kubernetes {
        created: Option<String>,
        cluster: String,
    },
}

impl Source {
    /// `trellis` or `kubernetes/CLUSTER`, as `trellis get` shows it.
    pub fn label(&self) -> String {
        match self {
            Source::Trellis => "trellis".into(),
            Source::Kubernetes { cluster, .. } => format!("kubernetes/{cluster}"),
        }
    }

    /// Its rank: the lowest is in force.
    fn rank(&self) -> (u8, bool, Option<&str>, &str) {
        match self {
            Source::Trellis => (0, false, None, ""),
            Source::Kubernetes { created, cluster } => {
                (1, created.is_none(), created.as_deref(), cluster)
            }
        }
    }
}

/// One copy of a resource: its store key and source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub key: String,
    pub source: Source,
}

/// `KIND/NS/NAME` of a key holding a copy of a configured resource, and
/// its cluster (`None` for `trellis apply`'s). Discovery's records of a
/// cluster's Services and pods are no copies: those of every cluster
/// are all pushed.
pub fn identity(key: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rel) = key.strip_prefix(CONFIG_PREFIX) {
        return Some((rel, None));
    }
    let (cluster, rel) = parse_kube_key(key)?;
    Some((rel.strip_prefix(CONFIG)?, Some(cluster)))
}

/// (kind, namespace, name) of `KIND/NS/NAME`.
pub fn split(rel: &str) -> Option<(&str, &str, &str)> {
    let mut it = rel.splitn(3, '/');
    Some((it.next()?, it.next()?, it.next()?))
}

/// Every copy of `rel` (`KIND/NS/NAME`) in the store, the one in force
/// first.
pub fn copies(store: &Store, rel: &str) -> Vec<Copy> {
    let mut out = Vec::new();
    let own = format!("{CONFIG_PREFIX}{rel}");
    if store.config(&own).is_some() {
        out.push(Copy {
            key: own,
            source: Source::Trellis,
        });
    }
    for (cluster, _) in store.clusters() {
        let key = format!("{}{CONFIG}{rel}", kube_prefix(&cluster));
        let Some(stored) = store.config(&key) else {
            continue;
        };
        out.push(Copy {
            key,
            source: Source::Kubernetes {
                created: created(&stored.json),
                cluster,
            },
        });
    }
    order(&mut out);
    out
}

/// Puts the copy in force first, the others in the order they would take
/// over.
fn order(copies: &mut [Copy]) {
    copies.sort_by(|a, b| a.source.rank().cmp(&b.source.rank()));
}

/// The creation time a cluster's copy carries.
fn created(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    Some(
        v.pointer("/metadata/annotations")?
            .get(annotations::CREATED)?
            .as_str()?
            .to_string(),
    )
}

/// The source of the copy that shadows the one at `key`, if another
/// copy is in force.
pub fn shadowed_by(store: &Store, key: &str) -> Option<String> {
    let (rel, _) = identity(key)?;
    let first = copies(store, rel).into_iter().next()?;
    (first.key != key).then(|| first.source.label())
}

/// Whether the record at `key` is pushed to agents: not a refused custom
/// resource, and no shadowed copy.
pub fn in_force(store: &Store, key: &str) -> bool {
    if parse_kube_key(key).is_some_and(|(_, rel)| rel.starts_with(INVALID)) {
        return false;
    }
    shadowed_by(store, key).is_none()
}

/// The keys of every copy of the resource at `key` (with `key`): when one
/// changes, which is in force may change for all.
pub fn siblings(store: &Store, key: &str) -> Vec<String> {
    match identity(key) {
        Some((rel, _)) => copies(store, rel).into_iter().map(|c| c.key).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::cluster::Bootstrap;
    use crate::raft::state::kubernetes::KubeSync;
    use crate::raft::state::registry::StoredConfig;
    use crate::raft::state::{Command, RegistryCommand};

    const VS: &str = "VirtualService/prod/reviews";

    fn kube(cluster: &str, created: Option<&str>) -> Copy {
        Copy {
            key: format!("kube/{cluster}/{CONFIG}{VS}"),
            source: Source::Kubernetes {
                created: created.map(str::to_string),
                cluster: cluster.into(),
            },
        }
    }

    fn labels(copies: &[Copy]) -> Vec<String> {
        copies.iter().map(|c| c.source.label()).collect()
    }

    #[test]
    fn the_oldest_cluster_copy_wins_ties_by_cluster_name_and_trellis_over_all() {
        let mut copies = vec![
            kube("a-undated", None),
            kube("west", Some("2026-12-07T11:00:00Z")),
            kube("east", Some("2026-12-07T11:00:00Z")),
            kube("north", Some("2026-12-07T10:59:59Z")),
        ];
        order(&mut copies);
        assert_eq!(
            labels(&copies),
            [
                "kubernetes/north",
                "kubernetes/east",
                "kubernetes/west",
                "kubernetes/a-undated"
            ]
        );
        copies.push(Copy {
            key: format!("{CONFIG_PREFIX}{VS}"),
            source: Source::Trellis,
        });
        order(&mut copies);
        assert_eq!(labels(&copies)[..2], ["trellis", "kubernetes/north"]);
    }

    fn stored(created: Option<&str>) -> StoredConfig {
        let annotations = match created {
            Some(c) => serde_json::json!({ annotations::CREATED: c }),
            None => serde_json::json!({}),
        };
        let json = serde_json::json!({"metadata": {"annotations": annotations}});
        StoredConfig {
            json: serde_json::to_vec(&json).unwrap(),
            vip_hosts: vec![],
        }
    }

    #[test]
    fn a_cluster_copy_is_shadowed_while_trellis_apply_has_one() {
        let mut s = Store::default();
        s.apply(
            &Command::Bootstrap(Box::new(Bootstrap::for_tests("net-east", 1, ""))),
            &mut Vec::new(),
        );
        let east = format!("kube/east/{CONFIG}{VS}");
        let sync = KubeSync {
            cluster: "east".into(),
            node: 1,
            now: 100,
            lease_secs: 15,
            upserts: vec![(
                format!("{CONFIG}{VS}"),
                stored(Some("2026-12-07T10:00:00Z")),
            )],
            deletes: vec![],
        };
        s.apply(&Command::SyncKubernetes(Box::new(sync)), &mut Vec::new());
        assert!(in_force(&s, &east));
        assert_eq!(shadowed_by(&s, &east), None);
        let own = format!("{CONFIG_PREFIX}{VS}");
        let apply =
            |upserts, deletes| Command::Registry(RegistryCommand::ApplyConfig { upserts, deletes });
        s.apply(
            &apply(vec![(own.clone(), stored(None))], vec![]),
            &mut Vec::new(),
        );
        assert_eq!(labels(&copies(&s, VS)), ["trellis", "kubernetes/east"]);
        assert!(!in_force(&s, &east));
        assert!(in_force(&s, &own));
        assert_eq!(shadowed_by(&s, &east).as_deref(), Some("trellis"));
        assert_eq!(siblings(&s, &east), [own.clone(), east.clone()]);
        // `trellis delete`: the cluster's copy takes over.
        s.apply(&apply(vec![], vec![own]), &mut Vec::new());
        assert!(in_force(&s, &east));
    }

    #[test]
    fn a_clusters_workload_group_takes_registrations() {
        let mut s = Store::default();
        s.apply(
            &Command::Bootstrap(Box::new(Bootstrap::for_tests("net-east", 1, ""))),
            &mut Vec::new(),
        );
        assert!(crate::config::workload_group(&s, "prod", "reviews").is_none());
        let group = trellis_api::config::parse_documents(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadGroup\n\
             metadata: {name: reviews, namespace: prod}\n\
             spec: {template: {serviceAccount: reviews}}\n",
        )
        .unwrap()
        .remove(0);
        let json = serde_json::to_vec(&group).unwrap();
        let sync = KubeSync {
            cluster: "east".into(),
            node: 1,
            now: 100,
            lease_secs: 15,
            upserts: vec![(
                format!("{CONFIG}WorkloadGroup/prod/reviews"),
                StoredConfig {
                    json,
                    vip_hosts: vec![],
                },
            )],
            deletes: vec![],
        };
        s.apply(&Command::SyncKubernetes(Box::new(sync)), &mut Vec::new());
        let group = crate::config::workload_group(&s, "prod", "reviews").unwrap();
        assert_eq!(crate::config::service_account(&group), "reviews");
    }

    #[test]
    fn discovery_records_and_refused_resources_are_no_copies() {
        let s = Store::default();
        assert_eq!(identity("kube/east/ServiceEntry/prod/reviews"), None);
        assert!(in_force(&s, "kube/east/ServiceEntry/prod/reviews"));
        assert!(!in_force(&s, &format!("kube/east/{INVALID}{VS}")));
        assert_eq!(identity(&format!("config/{VS}")), Some((VS, None)));
        assert_eq!(
            identity(&format!("kube/east/{CONFIG}{VS}")),
            Some((VS, Some("east")))
        );
    }
}
