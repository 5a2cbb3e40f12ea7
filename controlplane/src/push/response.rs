//! What a response to an agent carries, computed from a snapshot (pure):
//! everything its scope sees, every type replaced ([`full`]), or the
//! changes since the version it was sent last that its scope sees
//! ([`delta`]).
use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_api::v1::{ConfigItem, TypeDelta};

use super::horizon::Gateways;
use super::item::{Item, Type};
use super::scope::Scope;
use super::snapshot::Change;

fn config_item(i: &Item) -> ConfigItem {
    ConfigItem {
        key: i.key.to_string(),
        body: i.body.clone(),
    }
}

/// Everything `view` holds, every type replaced.
pub fn full(view: &[Arc<Item>]) -> Vec<TypeDelta> {
    let mut by_type: BTreeMap<Type, TypeDelta> = Type::ALL
        .iter()
        .map(|t| {
            (
                *t,
                TypeDelta {
                    r#type: t.as_str().to_string(),
                    full: true,
                    ..Default::default()
                },
            )
        })
        .collect();
    for i in view {
        if let Some(d) = by_type.get_mut(&i.ty) {
            d.items.push(config_item(i));
        }
    }
    by_type.into_values().collect()
}

/// The changes `scope` sees, as it is sent them (split horizon through
/// `gateways`, the same before and after the changes): an item it now
/// sees is sent, one it saw and no longer sees (gone, or moved out of its
/// scope) is removed.
pub fn delta(scope: &Scope, changes: &[Change], gateways: &Gateways) -> Vec<TypeDelta> {
    fn of(by_type: &mut BTreeMap<Type, TypeDelta>, ty: Type) -> &mut TypeDelta {
        by_type.entry(ty).or_insert_with(|| TypeDelta {
            r#type: ty.as_str().to_string(),
            ..Default::default()
        })
    }
    let mut by_type = BTreeMap::new();
    let sent = |i: &Option<Arc<Item>>| {
        i.as_ref()
            .filter(|i| scope.sees(i))
            .and_then(|i| scope.horizon.view(i, gateways))
    };
    for c in changes {
        match (sent(&c.new), sent(&c.old)) {
            (Some(new), _) => of(&mut by_type, new.ty).items.push(config_item(&new)),
            (None, Some(old)) => of(&mut by_type, old.ty).removed.push(c.key.to_string()),
            (None, None) => {}
        }
    }
    by_type.into_values().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, LogId};
    use trellis_api::v1::ConfigSource;

    use super::*;
    use crate::push::snapshot::Builder;
    use crate::raft::state::registry::{config_key, RegistryCommand};
    use crate::raft::state_machine::Applied;
    use crate::raft::Command;

    const MESH: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1}
spec: {address: 10.0.0.1, labels: {app: reviews}}
";

    /// Applies `yaml` to `st` at log index `index`, as one ApplyConfig
    /// does; the keys it changed.
    fn apply(st: &mut Applied, yaml: &str, index: u64) -> Vec<String> {
        let resources = crate::config::parse_sources(&[ConfigSource {
            name: "t".into(),
            yaml: yaml.into(),
        }])
        .expect("the test's config parses");
        let upserts = resources
            .iter()
            .map(|r| {
                (
                    config_key(r.kind(), &r.metadata.namespace, &r.metadata.name),
                    crate::config::stored(r),
                )
            })
            .collect();
        let mut changed = Vec::new();
        st.store.apply(
            &Command::Registry(RegistryCommand::ApplyConfig {
                upserts,
                deletes: Vec::new(),
            }),
            &mut changed,
        );
        st.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), index));
        changed
    }

    fn by_type(deltas: &[TypeDelta]) -> BTreeMap<&str, &TypeDelta> {
        deltas.iter().map(|d| (d.r#type.as_str(), d)).collect()
    }

    #[test]
    fn an_endpoint_change_sends_endpoints_only() {
        let mut st = Applied::default();
        apply(&mut st, MESH, 1);
        let mut b = Builder::new(&st, 1, Default::default());
        let first = b.publish(None).expect("a first snapshot");
        let scope = Scope::of("default", &BTreeMap::new(), &[]);

        // The first response replaces every type; the ServiceEntry carries
        // the virtual IP allocated to its host.
        let f = full(&first.full_view(&scope));
        let f = by_type(&f);
        assert!(f.values().all(|d| d.full && d.removed.is_empty()));
        let count = |t: &str| f[t].items.len();
        assert_eq!(
            (count("services"), count("routes"), count("endpoints")),
            (1, 1, 1)
        );
        let se: serde_json::Value = serde_json::from_slice(&f["services"].items[0].body).unwrap();
        let vip = se["metadata"]["annotations"][trellis_api::annotations::ADDRESSES]
            .as_str()
            .unwrap_or_default();
        assert!(
            vip.starts_with("reviews.default.svc.cluster.local=240.240."),
            "{se}"
        );

        // One endpoint moves: the next version is a delta of that endpoint.
        let moved = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1}
spec: {address: 10.0.0.2, labels: {app: reviews}}
";
        let keys = apply(&mut st, moved, 2);
        b.apply(&st, &keys);
        let second = b.publish(Some(&first)).expect("a change");
        let (changes, sidecars) = second.changes_since(first.version).unwrap();
        assert!(!sidecars);
        let d = delta(&scope, &changes, &Gateways::default());
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].r#type.as_str(), d[0].full), ("endpoints", false));
        assert_eq!(d[0].items.len(), 1);
        assert!(String::from_utf8_lossy(&d[0].items[0].body).contains("10.0.0.2"));

        // Nothing changed: no new snapshot.
        b.apply(&st, &[]);
        assert!(b.publish(Some(&second)).is_none());
    }

    #[test]
    fn a_removed_item_is_sent_as_removed_and_only_to_who_saw_it() {
        let private = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private}
spec:
  hosts: [ratings]
  exportTo: [.]
  http: [{route: [{destination: {host: ratings}}]}]
";
        let mut st = Applied::default();
        apply(&mut st, &format!("{MESH}---\n{private}"), 1);
        let mut b = Builder::new(&st, 1, Default::default());
        let first = b.publish(None).unwrap();
        let mut changed = Vec::new();
        st.store.apply(
            &Command::Registry(RegistryCommand::ApplyConfig {
                upserts: Vec::new(),
                deletes: vec![config_key("VirtualService", "default", "private")],
            }),
            &mut changed,
        );
        st.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 2));
        b.apply(&st, &changed);
        let second = b.publish(Some(&first)).unwrap();
        let (changes, _) = second.changes_since(first.version).unwrap();
        let here = delta(
            &Scope::of("default", &BTreeMap::new(), &[]),
            &changes,
            &Gateways::default(),
        );
        assert_eq!(here.len(), 1);
        assert_eq!(here[0].r#type, "routes");
        assert!(here[0].items.is_empty());
        assert_eq!(
            here[0].removed,
            vec!["config/VirtualService/default/private"]
        );
        // Exported to its own namespace only: agents elsewhere never had it
        // and are sent nothing.
        let there = delta(
            &Scope::of("prod", &BTreeMap::new(), &[]),
            &changes,
            &Gateways::default(),
        );
        assert!(there.is_empty(), "{there:?}");
    }

    /// The bundle tells agents the cluster and network of the node that
    /// serves them and the mesh's domain, with which hosts are also made
    /// canonical for scoping.
    #[test]
    fn the_bundle_says_where_the_node_is_and_hosts_use_the_meshs_domain() {
        use crate::push::item::{config_item, Visibility};
        use crate::raft::state::Bootstrap;

        let mut st = Applied::default();
        let mut ch = Vec::new();
        let init = Bootstrap {
            domain: "corp.example".into(),
            ..Bootstrap::for_tests("net-east", 1, "")
        };
        st.store.apply(&Command::Bootstrap(Box::new(init)), &mut ch);
        apply(&mut st, MESH, 2);
        let bundle_of = |me| {
            let first = Builder::new(&st, me, Default::default())
                .publish(None)
                .unwrap();
            let f = full(&first.full_view(&Scope::of("default", &BTreeMap::new(), &[])));
            let b = by_type(&f)["bundle"].items[0].body.clone();
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        let b = bundle_of(1);
        assert_eq!(
            (
                &b["cluster"],
                &b["network"],
                &b["domain"],
                &b["trustDomain"]
            ),
            (
                &"east".into(),
                &"net-east".into(),
                &"corp.example".into(),
                &"example.org".into()
            ),
            "{b}"
        );
        // A node without a record says nothing of a cluster.
        assert_eq!(bundle_of(7)["cluster"], "");
        let key = config_key("VirtualService", "default", "reviews");
        let item = config_item(&key, st.store.config(&key).unwrap(), &st.store).unwrap();
        assert_eq!(
            item.visibility,
            Visibility::Hosts {
                hosts: vec!["reviews.default.svc.corp.example".into()],
                export_to: Vec::new(),
            }
        );
    }

    /// A gateway connecting makes a new snapshot, and agents on other
    /// networks are sent the endpoint behind it; agents on its network,
    /// the endpoint itself.
    #[test]
    fn other_networks_endpoints_come_behind_their_gateway_once_it_is_there() {
        use crate::push::horizon::Horizon;
        use crate::raft::state::registry::{gateway_key, Conn, GatewayRecord};

        let remote = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-remote}
spec: {address: 10.2.0.7, network: net-b, labels: {app: reviews}}
";
        let mut st = Applied::default();
        apply(&mut st, &format!("{MESH}---\n{remote}"), 1);
        let mut b = Builder::new(&st, 1, Default::default());
        let first = b.publish(None).unwrap();
        let at = |net: &str| {
            Scope::of("default", &BTreeMap::new(), &[]).at(Horizon {
                network: net.into(),
                gateway: false,
            })
        };
        // The bodies of the endpoints sent to an agent on `net`, but the
        // one with no network (sent to all as it is).
        let endpoints = |snap: &crate::push::Snapshot, net: &str| -> Vec<String> {
            let f = full(&snap.full_view(&at(net)));
            by_type(&f)["endpoints"]
                .items
                .iter()
                .map(|i| String::from_utf8_lossy(&i.body).into_owned())
                .filter(|b| !b.contains("10.0.0.1"))
                .collect()
        };
        // No gateway on net-b yet: nothing of it on net-a.
        assert_eq!(endpoints(&first, "net-a").len(), 0);
        assert_eq!(endpoints(&first, "net-b").len(), 1);

        let mut changed = Vec::new();
        st.store.apply(
            &Command::Registry(RegistryCommand::RegisterGateway {
                key: gateway_key("net-b", "gw-1"),
                record: GatewayRecord {
                    network: "net-b".into(),
                    cluster: "c2".into(),
                    addresses: vec!["192.0.2.1:15443".into()],
                    conn: Conn { node: 1, stream: 1 },
                    registered_at: 0,
                },
            }),
            &mut changed,
        );
        st.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 2));
        assert!(crate::push::relevant(&changed[0]));
        b.apply(&st, &changed);
        let second = b
            .publish(Some(&first))
            .expect("new gateways make a snapshot");
        assert_ne!(second.gateways, first.gateways);
        let seen = endpoints(&second, "net-a");
        assert_eq!(seen.len(), 1);
        assert!(
            seen[0].contains("\"address\":\"192.0.2.1\"") && seen[0].contains("192.0.2.1:15443"),
            "{}",
            seen[0]
        );
        let own = endpoints(&second, "net-b");
        assert!(own[0].contains("10.2.0.7"), "{}", own[0]);
    }
}
