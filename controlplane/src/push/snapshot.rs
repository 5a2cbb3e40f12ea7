//! [`Snapshot`]: the pushable state of the mesh at one log index, shared by
//! every stream of a node, and the [`Builder`] that keeps it up to date
//! from the store's change notifications.
//!
//! Items are grouped by namespace so that a change copies one namespace's
//! map, not the mesh's, and a Sidecar-scoped view reads only the namespaces
//! it names. Each snapshot remembers the last [`HISTORY`] change sets, so
//! a stream that is a few versions behind is sent what changed, not
//! everything.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_api::config::Spec;

use super::horizon::Gateways;
use super::item::{
    bundle_item, config_item, mark_stale, workload_item, Bundle, Item, Marks, BUNDLE_KEY,
};
use super::local::{stale_clusters, Overlay};
use super::scope::{Scope, SidecarRule};
use crate::config::owner;
use crate::raft::state::kubernetes::{parse_kube_key, KUBE_PREFIX};
use crate::raft::state::registry::{WorkloadRecord, CONFIG_PREFIX, WORKLOAD_PREFIX};
use crate::raft::state_machine::Applied;

/// Change sets a snapshot remembers.
pub const HISTORY: usize = 64;

type NsItems = HashMap<Arc<str>, Arc<Item>>;

/// One key's change between two versions.
#[derive(Clone, Debug)]
pub struct Change {
    pub key: Arc<str>,
    pub old: Option<Arc<Item>>,
    pub new: Option<Arc<Item>>,
}

/// What changed from version `from` to version `to`.
#[derive(Debug)]
pub struct ChangeSet {
    pub from: u64,
    pub to: u64,
    pub changes: Vec<Change>,
    /// The Sidecars changed: scopes must be recomputed.
    pub sidecars_changed: bool,
}

/// The pushable state at one version.
pub struct Snapshot {
    /// The push version: the log index this state is at, or one past the
    /// last version when only this node's own view changed (its overlay,
    /// a cluster's freshness).
    pub version: u64,
    namespaces: HashMap<Arc<str>, Arc<NsItems>>,
    pub sidecars: Arc<Vec<SidecarRule>>,
    /// The east-west gateways: when they change, every agent on another
    /// network is sent everything again.
    pub gateways: Arc<Gateways>,
    bundle: Arc<Item>,
    history: VecDeque<Arc<ChangeSet>>,
    /// Full views computed so far, shared by the streams of one scope.
    views: Mutex<HashMap<Scope, Arc<Vec<Arc<Item>>>>>,
}

impl Snapshot {
    /// Every item `scope` sees, as it is sent (split horizon), in key order.
    pub fn full_view(&self, scope: &Scope) -> Arc<Vec<Arc<Item>>> {
        if let Some(v) = self
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
        {
            return v.clone();
        }
        let groups: Vec<&Arc<NsItems>> = match scope.namespaces() {
            None => self.namespaces.values().collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| self.namespaces.get(*n))
                .collect(),
        };
        let mut items: Vec<Arc<Item>> = std::iter::once(&self.bundle)
            .chain(groups.into_iter().flat_map(|m| m.values()))
            .filter(|i| scope.sees(i))
            .filter_map(|i| scope.horizon.view(i, &self.gateways))
            .collect();
        items.sort_by(|a, b| a.key.cmp(&b.key));
        let v = Arc::new(items);
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.clone(), v.clone());
        v
    }

    /// What changed since `version`, merged per key (the oldest `old`, the
    /// newest `new`), and whether the Sidecars changed; `None` when
    /// `version` is older than this snapshot remembers.
    pub fn changes_since(&self, version: u64) -> Option<(Vec<Change>, bool)> {
        if version == self.version {
            return Some((Vec::new(), false));
        }
        let start = self.history.iter().position(|c| c.from == version)?;
        let mut merged: HashMap<Arc<str>, Change> = HashMap::new();
        let mut order = Vec::new();
        let mut sidecars = false;
        for set in self.history.iter().skip(start) {
            sidecars |= set.sidecars_changed;
            for c in &set.changes {
                match merged.get_mut(&c.key) {
                    Some(m) => m.new = c.new.clone(),
                    None => {
                        order.push(c.key.clone());
                        merged.insert(c.key.clone(), c.clone());
                    }
                }
            }
        }
        let changes = order
            .into_iter()
            .filter_map(|k| merged.remove(&k))
            .collect();
        Some((changes, sidecars))
    }

    /// Items in the snapshot, the bundle included (for logs and the
    /// scale benchmark).
    pub fn items(&self) -> usize {
        self.namespaces.values().map(|m| m.len()).sum::<usize>() + 1
    }
}

/// Keeps the pushable state from the store.
pub struct Builder {
    /// The node this runs on, whose cluster the bundle names.
    me: u64,
    version: u64,
    namespaces: HashMap<Arc<str>, Arc<NsItems>>,
    /// Namespace of each key, to find an item again when it is removed.
    key_ns: HashMap<Arc<str>, Arc<str>>,
    sidecars: Arc<Vec<SidecarRule>>,
    gateways: Arc<Gateways>,
    bundle: Arc<Item>,
    history: VecDeque<Arc<ChangeSet>>,
    pending: Vec<Change>,
    sidecars_changed: bool,
    gateways_changed: bool,
    local: Local,
    /// The clusters taken as stale in the items built.
    stale: BTreeSet<String>,
}

/// What a node adds to its replica's state in what it pushes.
#[derive(Clone)]
pub struct Local {
    pub overlay: Overlay,
    /// A cluster not heard from for longer is stale.
    pub stale_after: Duration,
}

impl Default for Local {
    /// No local registrations; clusters are stale after 30 seconds.
    fn default() -> Local {
        Local {
            overlay: Overlay::new().0,
            stale_after: Duration::from_secs(30),
        }
    }
}

/// What building an item reads besides the replica.
struct Ctx<'a> {
    overlay: &'a BTreeMap<String, WorkloadRecord>,
    stale: &'a BTreeSet<String>,
    stale_after: u64,
}

impl Builder {
    /// Everything in `st`, at its index, as node `me` pushes it with
    /// `local`.
    pub fn new(st: &Applied, me: u64, local: Local) -> Builder {
        let mut b = Builder {
            me,
            version: st.index(),
            namespaces: HashMap::new(),
            key_ns: HashMap::new(),
            sidecars: Arc::new(Vec::new()),
            gateways: Arc::default(),
            bundle: Arc::new(bundle_item(&bundle(st, me))),
            history: VecDeque::new(),
            pending: Vec::new(),
            sidecars_changed: false,
            gateways_changed: false,
            stale: stale_clusters(&st.store, me, crate::raft::now(), local.stale_after),
            local,
        };
        b.reload(st);
        b.pending.clear();
        b.sidecars_changed = false;
        b.gateways_changed = false;
        b
    }

    /// Reads `keys` again from `st`, and the bundle (the mesh record, the
    /// topology and the membership).
    pub fn apply(&mut self, st: &Applied, keys: &[String]) {
        let mut sidecars = false;
        let overlay = self.local.overlay.all();
        let stale = self.stale.clone();
        let ctx = self.ctx(&overlay, &stale);
        let mut built = Vec::new();
        // A copy of a resource that changed may change which of its
        // copies is in force: all are built again.
        let mut keys: Vec<String> = keys
            .iter()
            .flat_map(|k| std::iter::once(k.clone()).chain(owner::siblings(&st.store, k)))
            .collect();
        keys.sort();
        keys.dedup();
        // Virtual IPs change with their ServiceEntry; the mesh record and
        // the topology are the bundle's, read below.
        for key in &keys {
            if is_sidecar(key) {
                sidecars = true;
                continue;
            }
            if [CONFIG_PREFIX, WORKLOAD_PREFIX, KUBE_PREFIX]
                .iter()
                .any(|p| key.starts_with(p))
            {
                built.push((key, build(key, st, &ctx).map(Arc::new)));
            }
        }
        for (key, item) in built {
            self.set(key, item);
        }
        if sidecars {
            self.sidecars = Arc::new(sidecar_rules(st));
            self.sidecars_changed = true;
        }
        self.refresh_bundle(st);
        self.version = self.version.max(st.index());
    }

    fn ctx<'a>(
        &self,
        overlay: &'a BTreeMap<String, WorkloadRecord>,
        stale: &'a BTreeSet<String>,
    ) -> Ctx<'a> {
        Ctx {
            overlay,
            stale,
            stale_after: self.local.stale_after.as_secs(),
        }
    }

    /// Takes again which clusters are stale at `now`; `true` if that
    /// changed (then [`Builder::reload`] marks their endpoints).
    pub fn restale(&mut self, st: &Applied, now: u64) -> bool {
        let stale = stale_clusters(&st.store, self.me, now, self.local.stale_after);
        if stale == self.stale {
            return false;
        }
        tracing::info!(stale = ?stale, "clusters' freshness changed");
        self.stale = stale;
        true
    }

    /// Reads the whole store again (after a snapshot was installed),
    /// recording what differs.
    pub fn reload(&mut self, st: &Applied) {
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        let overlay = self.local.overlay.all();
        let stale = self.stale.clone();
        let ctx = self.ctx(&overlay, &stale);
        let mut keys: Vec<&str> = [CONFIG_PREFIX, WORKLOAD_PREFIX, KUBE_PREFIX]
            .into_iter()
            .flat_map(|prefix| st.store.prefixed(prefix).map(|(key, _)| key))
            .filter(|key| !is_sidecar(key))
            .collect();
        keys.extend(
            overlay
                .keys()
                .filter(|k| st.store.workload(k).is_none())
                .map(String::as_str),
        );
        let items = build_all(&keys, st, &ctx);
        for (key, item) in keys.iter().zip(items) {
            let k: Arc<str> = (*key).into();
            seen.insert(k.clone());
            let same = match (self.get(&k), &item) {
                (Some(old), Some(new)) => old.body == new.body,
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.set(key, item);
            }
        }
        let gone: Vec<Arc<str>> = self
            .key_ns
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.set(&k, None);
        }
        let rules = sidecar_rules(st);
        if *self.sidecars != rules {
            self.sidecars = Arc::new(rules);
            self.sidecars_changed = true;
        }
        self.refresh_bundle(st);
        self.version = self.version.max(st.index());
    }

    fn refresh_bundle(&mut self, st: &Applied) {
        let gateways = Gateways::new(st.store.gateways().iter().map(|(_, r)| r));
        if gateways != *self.gateways {
            self.gateways = Arc::new(gateways);
            self.gateways_changed = true;
        }
        let new = Arc::new(bundle_item(&bundle(st, self.me)));
        if new.body != self.bundle.body {
            self.pending.push(Change {
                key: BUNDLE_KEY.into(),
                old: Some(self.bundle.clone()),
                new: Some(new.clone()),
            });
            self.bundle = new;
        }
    }

    fn get(&self, key: &Arc<str>) -> Option<&Arc<Item>> {
        let ns = self.key_ns.get(key)?;
        self.namespaces.get(ns)?.get(key)
    }

    fn set(&mut self, key: &str, item: Option<Arc<Item>>) {
        let key: Arc<str> = key.into();
        let old = self.key_ns.get(&key).cloned().and_then(|ns| {
            let map = Arc::make_mut(self.namespaces.get_mut(&ns)?);
            let old = map.remove(&key);
            if map.is_empty() {
                self.namespaces.remove(&ns);
            }
            old
        });
        self.key_ns.remove(&key);
        if let Some(item) = &item {
            let map = self.namespaces.entry(item.namespace.clone()).or_default();
            Arc::make_mut(map).insert(key.clone(), item.clone());
            self.key_ns.insert(key.clone(), item.namespace.clone());
        }
        if old.is_some() || item.is_some() {
            self.pending.push(Change {
                key,
                old,
                new: item,
            });
        }
    }

    /// The snapshot of the state now; `None` if nothing changed since the
    /// last one (then `last` stays current).
    pub fn publish(&mut self, last: Option<&Snapshot>) -> Option<Arc<Snapshot>> {
        if let Some(last) = last {
            if self.pending.is_empty() && !self.sidecars_changed && !self.gateways_changed {
                return None;
            }
            self.gateways_changed = false;
            // A change of this node's own view, not of the log.
            self.version = self.version.max(last.version + 1);
            let set = ChangeSet {
                from: last.version,
                to: self.version,
                changes: std::mem::take(&mut self.pending),
                sidecars_changed: std::mem::take(&mut self.sidecars_changed),
            };
            self.history.push_back(Arc::new(set));
            while self.history.len() > HISTORY {
                self.history.pop_front();
            }
        }
        Some(Arc::new(Snapshot {
            version: self.version,
            namespaces: self.namespaces.clone(),
            sidecars: self.sidecars.clone(),
            gateways: self.gateways.clone(),
            bundle: self.bundle.clone(),
            history: self.history.clone(),
            views: Mutex::new(HashMap::new()),
        }))
    }
}

/// [`build`] of each key, on every core: the whole store is read again
/// when a node starts (or installs a snapshot), before it serves agents.
fn build_all(keys: &[&str], st: &Applied, ctx: &Ctx) -> Vec<Option<Arc<Item>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = keys.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|k| build(k, st, ctx).map(Arc::new))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("building an item does not panic"))
            .collect()
    })
}

/// The item of a store key, if it is pushed. A registered workload is
/// this node's local record of it if it holds one (newer than any
/// committed), and marked stale if the cluster it registered through is;
/// a pod's entry is marked stale if its cluster is.
fn build(key: &str, st: &Applied, ctx: &Ctx) -> Option<Item> {
    if key.starts_with(WORKLOAD_PREFIX) {
        let held = ctx.overlay.get(key);
        let record = match held {
            Some(r) => r.clone(),
            None => st.store.workload(key)?,
        };
        let cluster = st.store.node_record(record.conn.node).map(|n| n.cluster);
        let marks = Marks {
            stale: cluster
                .as_deref()
                .filter(|c| ctx.stale.contains(*c))
                .map(|c| (c, ctx.stale_after)),
            local_only: held.is_some(),
        };
        return workload_item(key, &record, marks);
    }
    if !owner::in_force(&st.store, key) {
        return None;
    }
    let item = config_item(key, st.store.config(key)?, &st.store)?;
    // A Kubernetes endpoint is as fresh as its cluster's discovery.
    match parse_kube_key(key) {
        Some((cluster, _)) if ctx.stale.contains(cluster) => {
            mark_stale(item, cluster, ctx.stale_after)
        }
        _ => Some(item),
    }
}

/// Whether `key` holds a copy of a Sidecar: Sidecars scope what is
/// pushed, and are no items themselves.
fn is_sidecar(key: &str) -> bool {
    owner::identity(key).is_some_and(|(rel, _)| rel.starts_with("Sidecar/"))
}

/// Every Sidecar in force in the store, as scoping needs them, in key
/// order.
fn sidecar_rules(st: &Applied) -> Vec<SidecarRule> {
    let own = format!("{CONFIG_PREFIX}Sidecar/");
    st.store
        .prefixed(&own)
        .chain(st.store.prefixed(KUBE_PREFIX))
        .filter(|(key, _)| is_sidecar(key) && owner::in_force(&st.store, key))
        .filter_map(|(key, _)| {
            let (rel, _) = owner::identity(key)?;
            let (_, ns, _) = owner::split(rel)?;
            let r = crate::config::from_json(&st.store.config(key)?.json).ok()?;
            sidecar_rule(key, ns, &r.spec)
        })
        .collect()
}

fn sidecar_rule(key: &str, ns: &str, spec: &Spec) -> Option<SidecarRule> {
    let Spec::Sidecar(sc) = spec else {
        return None;
    };
    Some(SidecarRule {
        key: key.to_string(),
        namespace: ns.to_string(),
        selector: sc.workload_selector.as_ref().map(|s| s.labels.clone()),
        egress: sc
            .egress
            .iter()
            .flat_map(|e| &e.hosts)
            .filter_map(|h| {
                let (n, h) = h.split_once('/')?;
                Some((n.to_string(), h.to_string()))
            })
            .collect(),
    })
}

/// The trust bundle, the control-plane addresses (by cluster too), the
/// domain, and the cluster and network of node `me`, which serves it.
fn bundle(st: &Applied, me: u64) -> Bundle {
    let mesh = st.store.mesh();
    let mut clusters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut control_plane = Vec::new();
    for (id, n) in st.membership.membership().nodes() {
        if let Some(r) = st.store.node_record(*id) {
            clusters.entry(r.cluster).or_default().push(n.addr.clone());
        }
        control_plane.push(n.addr.clone());
    }
    let (cluster, network) = st.store.node_topology(me).unwrap_or_default();
    Bundle {
        trust_domain: mesh
            .as_ref()
            .map(|m| m.trust_domain.clone())
            .unwrap_or_default(),
        roots: mesh.map(|m| vec![m.root_cert_pem]).unwrap_or_default(),
        control_plane,
        domain: st.store.domain(),
        cluster,
        network,
        clusters,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Type;
    use crate::raft::state::registry::{Conn, Health, RegistryCommand};
    use crate::raft::state::{Bootstrap, Command};
    use openraft::{CommittedLeaderId, LogId};
    use trellis_api::annotations;

    const NOW: u64 = 1_800_000_000;
    const KEY: &str = "workload/default/w";

    fn record(address: &str) -> WorkloadRecord {
        let entry = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "w", "namespace": "default"},
            "spec": {"address": address},
        });
        WorkloadRecord {
            entry_json: serde_json::to_vec(&entry).unwrap(),
            group: "g".into(),
            conn: Conn { node: 1, stream: 1 },
            registered_at: NOW,
            disconnected_at: None,
            health: Health::NoProbe,
        }
    }

    /// Cluster east (node 1, joined long ago, never stamped) with one
    /// workload registered through node 1.
    fn state() -> Applied {
        let mut st = Applied::default();
        let mut ch = Vec::new();
        let init = Bootstrap::for_tests("net-east", 1, "");
        st.store.apply(&Command::Bootstrap(Box::new(init)), &mut ch);
        let reg = Command::Registry(RegistryCommand::RegisterWorkload {
            key: KEY.into(),
            record: record("10.0.0.1"),
        });
        st.store.apply(&reg, &mut ch);
        st.last_applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 2));
        st
    }

    /// The annotations of the endpoint `key` in `snap`.
    fn annotations_of(snap: &Snapshot, key: &str) -> Option<serde_json::Value> {
        let scope = Scope::of("default", &BTreeMap::new(), &[]);
        let view = snap.full_view(&scope);
        let item = view
            .iter()
            .find(|i| i.ty == Type::Endpoints && &*i.key == key)?;
        let v: serde_json::Value = serde_json::from_slice(&item.body).unwrap();
        Some(v["metadata"]["annotations"].clone())
    }

    #[test]
    fn another_clusters_stale_endpoints_are_not_ready_until_it_stamps_again() {
        let mut st = state();
        let local = || Local {
            overlay: Overlay::new().0,
            stale_after: Duration::from_secs(30),
        };
        // Node 1 is east's own: never stale. Node 9 is of no cluster.
        let own = Builder::new(&st, 1, local()).publish(None).unwrap();
        assert_eq!(
            annotations_of(&own, KEY).unwrap()[annotations::HEALTH],
            annotations::READY
        );
        let mut b = Builder::new(&st, 9, local());
        let first = b.publish(None).unwrap();
        let health = annotations_of(&first, KEY).unwrap()[annotations::HEALTH].clone();
        assert_eq!(
            health,
            "stale: cluster east not heard from for more than 30s"
        );
        // East stamps itself: ready again on the next check, as a new
        // version though the log moved by a stamp only.
        let stamp = Command::StampCluster {
            cluster: "east".into(),
            at: NOW,
        };
        st.store.apply(&stamp, &mut Vec::new());
        assert!(!b.restale(&st, NOW + 31), "still past the threshold");
        assert!(b.restale(&st, NOW + 30), "fresh again");
        b.reload(&st);
        let next = b.publish(Some(&first)).expect("the endpoint changed");
        assert!(next.version > first.version);
        assert_eq!(
            annotations_of(&next, KEY).unwrap()[annotations::HEALTH],
            annotations::READY
        );
        let (changes, _) = next.changes_since(first.version).unwrap();
        assert_eq!(changes.len(), 1, "only the endpoint changed");
    }

    #[test]
    fn kubernetes_records_are_pushed_and_marked_stale_with_their_cluster() {
        use crate::raft::state::kubernetes::KubeSync;
        use crate::raft::state::registry::StoredConfig;
        let mut st = state();
        let se = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews.default.svc.cluster.local"]},
        });
        let we = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": "r1.east", "namespace": "default"},
            "spec": {"address": "10.0.0.9"},
        });
        let stored = |v: &serde_json::Value| StoredConfig {
            json: serde_json::to_vec(v).unwrap(),
            vip_hosts: vec![],
        };
        let sync = Command::SyncKubernetes(Box::new(KubeSync {
            cluster: "east".into(),
            node: 1,
            now: NOW,
            lease_secs: 15,
            upserts: vec![
                ("ServiceEntry/default/reviews".into(), stored(&se)),
                ("WorkloadEntry/default/r1.east".into(), stored(&we)),
            ],
            deletes: vec![],
        }));
        assert_eq!(
            st.store.apply(&sync, &mut Vec::new()),
            crate::raft::Response::Ok
        );
        let key = "kube/east/WorkloadEntry/default/r1.east";
        let view = |me| {
            let snap = Builder::new(&st, me, Local::default())
                .publish(None)
                .unwrap();
            let scope = Scope::of("default", &BTreeMap::new(), &[]);
            let types: Vec<(Type, String)> = snap
                .full_view(&scope)
                .iter()
                .filter(|i| i.key.starts_with("kube/"))
                .map(|i| (i.ty, i.key.to_string()))
                .collect();
            (types, annotations_of(&snap, key))
        };
        let (types, own) = view(1);
        assert_eq!(
            types,
            [
                (
                    Type::Services,
                    "kube/east/ServiceEntry/default/reviews".to_string()
                ),
                (Type::Endpoints, key.to_string()),
            ]
        );
        assert!(own.unwrap()[annotations::HEALTH].is_null(), "ready");
        // East was never stamped: stale to a node of no cluster.
        let (_, other) = view(9);
        assert_eq!(
            other.unwrap()[annotations::HEALTH],
            "stale: cluster east not heard from for more than 30s"
        );
    }

    #[test]
    fn a_held_registration_is_pushed_marked_local_until_released() {
        let st = state();
        let (overlay, _held) = Overlay::new();
        let local = Local {
            overlay: overlay.clone(),
            stale_after: Duration::from_secs(30),
        };
        let mut b = Builder::new(&st, 1, local);
        let first = b.publish(None).unwrap();
        let key = "workload/default/w2";
        overlay.hold(key, record("10.0.0.2"));
        b.apply(&st, &[key.to_string()]);
        let held = b.publish(Some(&first)).expect("a new endpoint");
        assert_eq!(held.version, first.version + 1, "the log did not move");
        let a = annotations_of(&held, key).expect("the held endpoint is pushed");
        assert!(a[annotations::LOCAL_ONLY].is_string(), "{a}");
        assert_eq!(a[annotations::HEALTH], annotations::READY);
        // The committed one is not marked.
        assert!(annotations_of(&held, KEY).unwrap()[annotations::LOCAL_ONLY].is_null());
        // Another stream's release does nothing; its own removes it.
        assert!(!overlay.release(key, Conn { node: 1, stream: 2 }));
        assert!(overlay.release(key, Conn { node: 1, stream: 1 }));
        b.apply(&st, &[key.to_string()]);
        let gone = b.publish(Some(&held)).expect("the endpoint went");
        assert!(annotations_of(&gone, key).is_none());
    }
}
