//! The config part of the `Admin` service: apply, get, delete, analyze and
//! proxy status. Thin: parsing and checks are in [`crate::config`], the
//! writes are one replicated command each.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use trellis_api::config::{Resource, Spec};
use trellis_api::v1::{
    AnalysisMessage, AnalyzeRequest, AnalyzeResponse, ApplyConfigRequest, ApplyConfigResponse,
    ApplyResult, DeleteConfigRequest, Empty, GetConfigRequest, GetConfigResponse,
    ProxyStatusResponse, ResourceRef,
};

use trellis_api::annotations;
use trellis_kubernetes::config::{Invalid, CONFIG, INVALID};

use crate::config::analyze::{analyze, document_warnings, Level, Message, Workload};
use crate::config::owner::{self, Source};
use crate::config::{from_json, key_of, parse_sources, reference, stored};
use crate::node::Node;
use crate::raft::state::kubernetes::{parse_kube_key, KUBE_PREFIX};
use crate::raft::state::registry::{
    config_key, parse_config_key, ApplyAction, CONFIG_PREFIX, WORKLOAD_PREFIX,
};
use crate::raft::state::{Command, RegistryCommand, Response};
use crate::raft::Store;

pub async fn apply(node: &Arc<Node>, r: ApplyConfigRequest) -> Result<ApplyConfigResponse, Status> {
    let resources =
        parse_sources(&r.sources).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if resources.is_empty() {
        return Err(Status::invalid_argument(
            "sources: no resources to apply (every document was empty)",
        ));
    }
    let upserts: Vec<(String, _)> = resources.iter().map(|r| (key_of(r), stored(r))).collect();
    let refs: Vec<ResourceRef> = resources.iter().map(reference).collect();
    if r.dry_run {
        let actions = node.read_state(|s| {
            upserts
                .iter()
                .map(|(k, v)| match s.store.config(k) {
                    Some(old) if old == *v => ApplyAction::Unchanged,
                    Some(_) => ApplyAction::Configured,
                    None => ApplyAction::Created,
                })
                .collect::<Vec<_>>()
        });
        return Ok(results(refs, &actions, 0));
    }
    let cmd = Command::Registry(RegistryCommand::ApplyConfig {
        upserts,
        deletes: Vec::new(),
    });
    let (index, actions) = applied(node.write(cmd).await?)?;
    Ok(results(refs, &actions, index))
}

pub async fn delete(
    node: &Arc<Node>,
    r: DeleteConfigRequest,
) -> Result<ApplyConfigResponse, Status> {
    if r.resources.is_empty() {
        return Err(Status::invalid_argument("resources: nothing to delete"));
    }
    let mut deletes = Vec::new();
    for (i, x) in r.resources.iter().enumerate() {
        if Spec::group_of(&x.kind).is_none() {
            return Err(Status::invalid_argument(format!(
                "resources[{i}].kind: unknown kind `{}`; supported: {}",
                x.kind,
                Spec::KINDS.join(", ")
            )));
        }
        deletes.push(config_key(&x.kind, &x.namespace, &x.name));
    }
    // A resource only a cluster holds is deleted in that cluster.
    let elsewhere = node.read_state(|s| {
        r.resources.iter().enumerate().find_map(|(i, x)| {
            let rel = format!("{}/{}/{}", x.kind, x.namespace, x.name);
            let copies = owner::copies(&s.store, &rel);
            let first = copies.first()?;
            match &first.source {
                Source::Kubernetes { cluster, .. } => Some(format!(
                    "resources[{i}]: {} {}/{} comes from Kubernetes cluster {cluster}: delete \
                     it there with `kubectl delete {} {} -n {}`",
                    x.kind,
                    x.namespace,
                    x.name,
                    Spec::names(&x.kind).plural,
                    x.name,
                    x.namespace
                )),
                Source::Trellis => None,
            }
        })
    });
    if let Some(why) = elsewhere {
        return Err(Status::failed_precondition(why));
    }
    let cmd = Command::Registry(RegistryCommand::ApplyConfig {
        upserts: Vec::new(),
        deletes,
    });
    let (index, actions) = applied(node.write(cmd).await?)?;
    Ok(results(r.resources, &actions, index))
}

fn applied((index, resp): (u64, Response)) -> Result<(u64, Vec<ApplyAction>), Status> {
    match resp {
        Response::Applied(a) => Ok((index, a)),
        other => Err(Status::internal(format!("unexpected response {other:?}"))),
    }
}

fn results(refs: Vec<ResourceRef>, actions: &[ApplyAction], index: u64) -> ApplyConfigResponse {
    ApplyConfigResponse {
        results: refs
            .into_iter()
            .zip(actions)
            .map(|(resource, a)| ApplyResult {
                resource: Some(resource),
                action: a.as_str().to_string(),
            })
            .collect(),
        index,
    }
}

/// Stored resources matching `r`, from this node's replica. Workloads that
/// registered themselves are WorkloadEntries too, annotated with their
/// group and health; the Services and pods of the clusters' Kubernetes
/// discovery are ServiceEntries and WorkloadEntries, annotated with their
/// source (`trellis.io/source: kubernetes/CLUSTER`).
pub fn get(node: &Node, r: GetConfigRequest) -> Result<GetConfigResponse, Status> {
    if !r.kind.is_empty() && Spec::group_of(&r.kind).is_none() {
        return Err(Status::invalid_argument(format!(
            "kind: unknown kind `{}`; supported: {}",
            r.kind,
            Spec::KINDS.join(", ")
        )));
    }
    let wanted = |kind: &str, ns: &str, name: &str| {
        (r.kind.is_empty() || r.kind == kind)
            && (r.namespace.is_empty() || r.namespace == ns)
            && (r.name.is_empty() || r.name == name)
    };
    let resources =
        node.read_state(|s| {
            let mut out = Vec::new();
            for (key, _) in s.store.prefixed(CONFIG_PREFIX) {
                let Some((kind, ns, name)) = parse_config_key(key) else {
                    continue;
                };
                if wanted(kind, ns, name) {
                    if let Some(c) = s.store.config(key) {
                        out.push(String::from_utf8_lossy(&c.json).into_owned());
                    }
                }
            }
            // What the clusters' Kubernetes discovery wrote, and their
            // Istio resources (a shadowed copy says what shadows it).
            for (key, _) in s.store.prefixed(KUBE_PREFIX) {
                let Some((_, rel)) = parse_kube_key(key) else {
                    continue;
                };
                if rel.starts_with(INVALID) {
                    continue;
                }
                let rel = rel.strip_prefix(CONFIG).unwrap_or(rel);
                let Some((kind, ns, name)) = owner::split(rel) else {
                    continue;
                };
                if wanted(kind, ns, name) {
                    if let Some(c) = s.store.config(key) {
                        out.push(shown(&c.json, owner::shadowed_by(&s.store, key)));
                    }
                }
            }
            if r.kind.is_empty() || r.kind == "WorkloadEntry" {
                for (key, _) in s.store.prefixed(WORKLOAD_PREFIX) {
                    let Some(item) = s.store.workload(key).and_then(|w| {
                        crate::push::item::workload_item(key, &w, Default::default())
                    }) else {
                        continue;
                    };
                    let mut it = key[WORKLOAD_PREFIX.len()..].splitn(2, '/');
                    let (ns, name) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                    if wanted("WorkloadEntry", ns, name) {
                        out.push(String::from_utf8_lossy(&item.body).into_owned());
                    }
                }
            }
            out
        });
    if resources.is_empty() && !r.name.is_empty() {
        return Err(Status::not_found(format!(
            "{} {}/{} not found",
            if r.kind.is_empty() {
                "resource"
            } else {
                &r.kind
            },
            if r.namespace.is_empty() {
                "*"
            } else {
                &r.namespace
            },
            r.name
        )));
    }
    Ok(GetConfigResponse { resources })
}

/// A stored resource as `trellis get` shows it: a shadowed copy annotated
/// with the source of the copy in force.
fn shown(json: &[u8], shadowed_by: Option<String>) -> String {
    let by = shadowed_by.and_then(|by| {
        let mut v: serde_json::Value = serde_json::from_slice(json).ok()?;
        let meta = v.get_mut("metadata")?.as_object_mut()?;
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        annotations
            .as_object_mut()?
            .insert(annotations::SHADOWED_BY.into(), by.into());
        Some(v.to_string())
    });
    by.unwrap_or_else(|| String::from_utf8_lossy(json).into_owned())
}

/// The stored config with the given sources in place of their stored
/// versions, analyzed.
pub fn analyze_config(node: &Node, r: AnalyzeRequest) -> Result<AnalyzeResponse, Status> {
    let given = parse_sources(&r.sources).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let ((mut resources, registered), domain, refused) = node.read_state(|s| {
        (
            stored_resources(&s.store),
            s.store.domain(),
            refused_custom_resources(&s.store),
        )
    });
    let given_keys: std::collections::BTreeSet<String> = given.iter().map(key_of).collect();
    resources.retain(|r| !given_keys.contains(&key_of(r)));
    resources.extend(given);
    let mut labels: Vec<Labelled> = registered;
    for r in &resources {
        let ns = &r.metadata.namespace;
        match &r.spec {
            Spec::WorkloadEntry(we) => labels.push((ns.clone(), we.labels.clone())),
            Spec::ServiceEntry(se) => {
                labels.extend(se.endpoints.iter().map(|e| (ns.clone(), e.labels.clone())))
            }
            _ => {}
        }
    }
    let workloads: Vec<Workload> = labels
        .iter()
        .map(|(ns, l)| Workload {
            namespace: ns,
            labels: l,
        })
        .collect();
    let file_warnings = r.sources.iter().flat_map(|s| document_warnings(&s.yaml));
    let messages = analyze(&resources, &workloads, &domain)
        .into_iter()
        .chain(file_warnings)
        .chain(refused)
        .map(|m| AnalysisMessage {
            level: m.level.as_str().to_string(),
            code: m.code.to_string(),
            resource: Some(ResourceRef {
                kind: m.kind.to_string(),
                namespace: m.namespace,
                name: m.name,
            }),
            field: m.field,
            message: m.text,
        })
        .collect();
    Ok(AnalyzeResponse { messages })
}

/// A workload's namespace and labels.
type Labelled = (String, BTreeMap<String, String>);

/// Every stored resource in force (Kubernetes discovery's and clusters'
/// too), and the namespace and labels of every registered workload.
fn stored_resources(store: &Store) -> (Vec<Resource>, Vec<Labelled>) {
    let resources = store
        .prefixed(CONFIG_PREFIX)
        .chain(store.prefixed(KUBE_PREFIX))
        .filter(|(key, _)| owner::in_force(store, key))
        .filter_map(|(key, _)| from_json(&store.config(key)?.json).ok())
        .collect();
    let registered = store
        .prefixed(WORKLOAD_PREFIX)
        .filter_map(|(key, _)| {
            let r = from_json(&store.workload(key)?.entry_json).ok()?;
            match r.spec {
                Spec::WorkloadEntry(we) => Some((r.metadata.namespace, we.labels)),
                _ => None,
            }
        })
        .collect();
    (resources, registered)
}

/// An error per field of each Istio resource a cluster holds that the
/// mesh refused (applied there without the validating webhook): it is not
/// in force.
fn refused_custom_resources(store: &Store) -> Vec<Message> {
    let mut out = Vec::new();
    for (key, _) in store.prefixed(KUBE_PREFIX) {
        let Some((cluster, rel)) = parse_kube_key(key) else {
            continue;
        };
        let Some(rel) = rel.strip_prefix(INVALID) else {
            continue;
        };
        let Some((kind, ns, name)) = owner::split(rel) else {
            continue;
        };
        let Some(invalid) = store
            .config(key)
            .and_then(|c| serde_json::from_slice::<Invalid>(&c.json).ok())
        else {
            continue;
        };
        for e in invalid.errors {
            let (field, reason) = e.split_once(": ").unwrap_or(("", &e));
            out.push(Message {
                level: Level::Error,
                code: "SchemaValidationError",
                kind: Spec::KINDS
                    .iter()
                    .find(|k| **k == kind)
                    .copied()
                    .unwrap_or(""),
                namespace: ns.to_string(),
                name: name.to_string(),
                field: field.to_string(),
                text: format!(
                    "{reason} (in Kubernetes cluster {cluster}, applied without the validating \
                     webhook: not in force until fixed there)"
                ),
            });
        }
    }
    out
}

/// Every agent streaming from any node: this node's own, and each other
/// member's (asked for a second).
pub async fn proxy_status(node: &Arc<Node>) -> ProxyStatusResponse {
    let m = node.raft.metrics().borrow().membership_config.clone();
    let others: Vec<(u64, String)> = m
        .membership()
        .nodes()
        .filter(|(id, _)| **id != node.id)
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    let asks = others.into_iter().map(|(id, addr)| async move {
        let res = match node.peer_client(&addr) {
            Ok(mut c) => tokio::time::timeout(Duration::from_secs(1), c.proxy_status(Empty {}))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().proxies),
            Err(_) => None,
        };
        (id, res)
    });
    let mut out = ProxyStatusResponse {
        proxies: node.push.streams.list(node.id),
        unreachable_nodes: Vec::new(),
    };
    for (id, res) in futures::future::join_all(asks).await {
        match res {
            Some(p) => out.proxies.extend(p),
            None => out.unreachable_nodes.push(id),
        }
    }
    out.proxies
        .sort_by(|a, b| (&a.proxy, a.node_id).cmp(&(&b.proxy, b.node_id)));
    out
}
