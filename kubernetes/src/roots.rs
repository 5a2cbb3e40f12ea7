//! The mesh root in every namespace: the ConfigMap [`CONFIG_MAP`] (key
//! [`KEY`], the mesh's trust bundle, PEM), which the injector mounts into
//! each agent sidecar for `--roots`, as Istio's `istio-ca-root-cert`.
//!
//! [`plan`] decides, per namespace, what to write (pure);
//! [`publish_forever`] watches the namespaces and these ConfigMaps and
//! writes what [`plan`] says whenever one of them changes (a ConfigMap
//! deleted is created again, one edited is set back) and every
//! [`RECHECK`] (the root changed, or this node became the writer). Only
//! the caller's one writer per cluster writes; every node keeps watching.
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use tokio::sync::Notify;

/// The ConfigMap's name in each namespace.
pub const CONFIG_MAP: &str = "trellis-ca-root-cert";
/// Its one key: the mesh's roots, PEM.
pub const KEY: &str = "root-cert.pem";
/// The label that says who keeps it (an operator's edits are undone).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "trellis-controlplane");
/// Namespaces that get none: Kubernetes' own, where no pod of the mesh
/// runs (Istio skips the same ones).
pub const SKIPPED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];
/// How often every namespace is compared with the root without a change
/// seen: a new root, or this node having become the writer.
pub const RECHECK: Duration = Duration::from_secs(5);

/// What to write in a namespace.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// There is none: this one.
    Create(ConfigMap),
    /// There is one that differs: this one in its place (its
    /// `resourceVersion` kept, so that a change in between is refused).
    Update(ConfigMap),
}

/// What `namespace` needs so that its [`CONFIG_MAP`] holds `root`, given
/// the one it has (`existing`); `None`: nothing (it has it, or it is
/// skipped or being deleted).
pub fn plan(namespace: &Namespace, existing: Option<&ConfigMap>, root: &str) -> Option<Write> {
    let name = namespace.name_any();
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Terminating");
    if SKIPPED.contains(&name.as_str()) || terminating {
        return None;
    }
    let data = BTreeMap::from([(KEY.to_string(), root.to_string())]);
    let Some(existing) = existing else {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(CONFIG_MAP.into());
        map.metadata.namespace = Some(name);
        map.metadata.labels = Some(BTreeMap::from([(
            MANAGED_BY.0.to_string(),
            MANAGED_BY.1.to_string(),
        )]));
        map.data = Some(data);
        return Some(Write::Create(map));
    };
    let labelled = existing.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
    if labelled && existing.data.as_ref() == Some(&data) && existing.binary_data.is_none() {
        return None;
    }
    let mut map = existing.clone();
    map.labels_mut()
        .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    map.data = Some(data);
    map.binary_data = None;
    Some(Write::Update(map))
}

/// Keeps [`CONFIG_MAP`] holding `root()` (the mesh's roots, PEM; `None`
/// until the node has them) in every namespace, while `writes()` (this
/// node is its cluster's one writer), for as long as the task runs.
pub async fn publish_forever(
    client: kube::Client,
    root: impl Fn() -> Option<String>,
    writes: impl Fn() -> bool,
) {
    let changed = Notify::new();
    let (namespaces, watch_namespaces) = mirror(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        &changed,
    );
    let (maps, watch_maps) = mirror(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}")),
        &changed,
    );
    let publish = async {
        if namespaces.wait_until_ready().await.is_err() || maps.wait_until_ready().await.is_err() {
            return;
        }
        let mut failing = HashSet::new();
        loop {
            if let (true, Some(root)) = (writes(), root()) {
                for ns in namespaces.state() {
                    let name = ns.name_any();
                    let existing = maps.get(&ObjectRef::new(CONFIG_MAP).within(&name));
                    match plan(&ns, existing.as_deref(), &root) {
                        Some(write) => apply(&client, &name, write, &mut failing).await,
                        None => {
                            failing.remove(&name);
                        }
                    }
                }
            }
            let _ = tokio::time::timeout(RECHECK, changed.notified()).await;
        }
    };
    tokio::join!(watch_namespaces, watch_maps, publish);
}

/// Carries out `write` in `namespace`; `failing`: the namespaces whose
/// last write failed (warned about once).
async fn apply(
    client: &kube::Client,
    namespace: &str,
    write: Write,
    failing: &mut HashSet<String>,
) {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let pp = PostParams::default();
    let (done, result) = match &write {
        Write::Create(map) => ("created", api.create(&pp, map).await),
        Write::Update(map) => ("updated", api.replace(CONFIG_MAP, &pp, map).await),
    };
    match result {
        Ok(_) => {
            failing.remove(namespace);
            tracing::info!(
                namespace,
                "{done} ConfigMap {CONFIG_MAP} with the mesh root"
            );
        }
        // Written by someone else meanwhile: the watch brings it, and the
        // next pass compares with it.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => {
            if failing.insert(namespace.to_string()) {
                tracing::warn!(namespace, error = %e, "cannot write ConfigMap {CONFIG_MAP}; trying again at each change and every {RECHECK:?}");
            }
        }
    }
}

/// A store of `api`'s objects, and the future that keeps it (a watcher
/// that lists again when the watch is lost), notifying `changed` at each
/// event.
fn mirror<'a, K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &'a Notify,
) -> (
    reflector::Store<K>,
    impl std::future::Future<Output = ()> + 'a,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config).default_backoff());
    let keep = async move {
        futures::pin_mut!(events);
        let mut failing = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => {
                    failing = false;
                    changed.notify_one();
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watching the API server for the mesh root's ConfigMaps failed; retrying");
                    }
                    failing = true;
                }
            }
        }
    };
    (store, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn namespace(name: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    }

    fn created(ns: &str) -> ConfigMap {
        match plan(&namespace(ns), None, ROOT) {
            Some(Write::Create(map)) => map,
            other => panic!("{ns}: {other:?}"),
        }
    }

    #[test]
    fn a_namespace_without_it_gets_it_labelled_with_the_root() {
        let map = created("shop");
        assert_eq!(map.name_any(), CONFIG_MAP);
        assert_eq!(map.namespace().as_deref(), Some("shop"));
        assert_eq!(map.data.as_ref().unwrap()[KEY], ROOT);
        assert_eq!(map.labels()[MANAGED_BY.0], MANAGED_BY.1);
    }

    #[test]
    fn one_that_holds_the_root_is_left_alone() {
        let mut map = created("shop");
        map.metadata.resource_version = Some("7".into());
        map.metadata.annotations = Some(BTreeMap::from([("note".into(), "kept".into())]));
        assert_eq!(plan(&namespace("shop"), Some(&map), ROOT), None);
    }

    #[test]
    fn an_edited_one_or_an_old_root_is_set_back_keeping_its_version() {
        let mut edited = created("shop");
        edited.metadata.resource_version = Some("7".into());
        edited.data = Some(BTreeMap::from([
            (KEY.into(), "garbage".into()),
            ("extra".into(), "x".into()),
        ]));
        let mut unlabelled = created("shop");
        unlabelled.metadata.labels = None;
        let mut binary = created("shop");
        binary.binary_data = Some(BTreeMap::new());
        let new_root = ROOT.replace("MIIB", "MIIC");
        for (what, map, root) in [
            ("edited", edited, ROOT),
            ("unlabelled", unlabelled, ROOT),
            ("binary data", binary, ROOT),
            ("old root", created("shop"), new_root.as_str()),
        ] {
            let Some(Write::Update(fixed)) = plan(&namespace("shop"), Some(&map), root) else {
                panic!("{what}: not updated");
            };
            assert_eq!(
                fixed.data,
                Some(BTreeMap::from([(KEY.into(), root.into())])),
                "{what}"
            );
            assert_eq!(fixed.binary_data, None, "{what}");
            assert_eq!(fixed.labels()[MANAGED_BY.0], MANAGED_BY.1, "{what}");
            assert_eq!(
                fixed.metadata.resource_version, map.metadata.resource_version,
                "{what}"
            );
            assert_eq!(plan(&namespace("shop"), Some(&fixed), root), None, "{what}");
        }
    }

    #[test]
    fn kubernetes_own_namespaces_and_terminating_ones_get_none() {
        for ns in SKIPPED {
            assert_eq!(plan(&namespace(ns), None, ROOT), None, "{ns}");
        }
        assert!(plan(&namespace("default"), None, ROOT).is_some());
        let terminating: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "old"}, "status": {"phase": "Terminating"}}),
        )
        .unwrap();
        assert_eq!(plan(&terminating, None, ROOT), None);
    }
}
