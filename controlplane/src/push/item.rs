//! [`Item`]: one resource as agents receive it, built from the store (pure):
//! its push [`Type`], the body sent (JSON, with what the control plane adds:
//! allocated virtual IPs, a registered workload's health), and what
//! scoping needs to know of it ([`Visibility`]).
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use trellis_api::annotations;
use trellis_api::config::canonical_host;

use crate::raft::state::registry::{Health, StoredConfig, WorkloadRecord};
use crate::raft::Store;

/// The key of the one `bundle` item.
pub const BUNDLE_KEY: &str = "bundle";

/// What kind of thing an item is, for agents: each type is applied and
/// versioned as one set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Type {
    /// ServiceEntry.
    Services,
    /// VirtualService.
    Routes,
    /// DestinationRule.
    Clusters,
    /// WorkloadEntry, written or registered.
    Endpoints,
    /// PeerAuthentication, AuthorizationPolicy, RequestAuthentication.
    Policies,
    /// WorkloadGroup (an agent's own, for its probe).
    Workload,
    /// Trust roots and control-plane addresses.
    Bundle,
}

impl Type {
    pub const ALL: [Type; 7] = [
        Type::Services,
        Type::Routes,
        Type::Clusters,
        Type::Endpoints,
        Type::Policies,
        Type::Workload,
        Type::Bundle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Type::Services => "services",
            Type::Routes => "routes",
            Type::Clusters => "clusters",
            Type::Endpoints => "endpoints",
            Type::Policies => "policies",
            Type::Workload => "workload",
            Type::Bundle => "bundle",
        }
    }

    /// The type resources of `kind` are pushed as; `None`: not pushed to
    /// agents (Gateway is for gateways). A Sidecar scopes what its agents
    /// are pushed, and is pushed to them as a policy too: its
    /// `outboundTrafficPolicy` is theirs to apply.
    pub fn of_kind(kind: &str) -> Option<Type> {
        Some(match kind {
            "ServiceEntry" => Type::Services,
            "VirtualService" => Type::Routes,
            "DestinationRule" => Type::Clusters,
            "WorkloadEntry" => Type::Endpoints,
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" | "Sidecar" => {
                Type::Policies
            }
            "WorkloadGroup" => Type::Workload,
            _ => return None,
        })
    }
}

/// Which agents may see an item, besides the Sidecar that scopes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// A service, route or rule: seen where `exportTo` allows and the
    /// agent's Sidecar egress hosts (canonical names) cover one of `hosts`.
    Hosts {
        hosts: Vec<String>,
        export_to: Vec<String>,
    },
    /// An endpoint: seen by agents whose egress covers its namespace.
    Namespace,
    /// A policy: seen by agents of its namespace, or all from the root
    /// namespace.
    OwnOrRoot,
    /// Seen by agents of its namespace only.
    Own,
    /// Seen by everyone.
    All,
}

/// One pushable resource.
#[derive(Debug)]
pub struct Item {
    pub key: Arc<str>,
    pub ty: Type,
    pub namespace: Arc<str>,
    /// JSON of the resource (for `bundle`, a [`Bundle`]).
    pub body: Bytes,
    pub visibility: Visibility,
    /// An endpoint's network (`spec.network`, else its
    /// `topology.istio.io/network` label); empty: not said, or not an
    /// endpoint. Split horizon reads it ([`super::horizon`]).
    pub network: Arc<str>,
}

/// What the `bundle` item carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub trust_domain: String,
    pub roots: Vec<String>,
    /// Every control-plane node's address, for agents to fail over.
    pub control_plane: Vec<String>,
    /// The DNS domain of service names (`NAME.NS.svc.DOMAIN`).
    pub domain: String,
    /// The cluster and network of the node serving the bundle: an agent's
    /// own, unless it was given them.
    pub cluster: String,
    pub network: String,
    /// Control-plane addresses by cluster, so that an agent fails over to
    /// a node of its own cluster first.
    pub clusters: BTreeMap<String, Vec<String>>,
}

/// What an item needs of a stored resource besides its JSON, read without
/// typing the whole resource (it was checked when it was applied).
#[derive(Deserialize)]
struct Head {
    kind: String,
    metadata: HeadMetadata,
    #[serde(default)]
    spec: HeadSpec,
}

#[derive(Deserialize)]
struct HeadMetadata {
    namespace: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadSpec {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    host: String,
    #[serde(default)]
    export_to: Vec<String>,
}

/// The item for a `config/` resource; `None` if the kind is not pushed.
/// Its body is the stored JSON, with the virtual IPs allocated to its
/// hosts added for a ServiceEntry without addresses.
pub fn config_item(key: &str, stored: StoredConfig, store: &Store) -> Option<Item> {
    let head: Head = match serde_json::from_slice(&stored.json) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(key, error = %e, "cannot read a stored resource; not pushed");
            return None;
        }
    };
    let ty = Type::of_kind(&head.kind)?;
    let ns = head.metadata.namespace.as_str();
    let domain = store.domain();
    let canonical = |h: &String| canonical_host(h, ns, &domain, |_| false);
    let HeadSpec {
        hosts,
        host,
        export_to,
    } = head.spec;
    let visibility = match ty {
        // ServiceEntry hosts are taken as written, as in Istio.
        Type::Services => Visibility::Hosts { hosts, export_to },
        Type::Routes => Visibility::Hosts {
            hosts: hosts.iter().map(canonical).collect(),
            export_to,
        },
        Type::Clusters => Visibility::Hosts {
            hosts: vec![canonical(&host)],
            export_to,
        },
        Type::Endpoints => Visibility::Namespace,
        Type::Policies => Visibility::OwnOrRoot,
        Type::Workload | Type::Bundle => Visibility::Own,
    };
    let vips: Vec<String> = stored
        .vip_hosts
        .iter()
        .filter_map(|h| Some(format!("{h}={}", store.vip(h)?)))
        .collect();
    let body = if vips.is_empty() {
        Bytes::from(stored.json)
    } else {
        let mut r: serde_json::Value = serde_json::from_slice(&stored.json).ok()?;
        annotate(&mut r, &[(annotations::ADDRESSES, vips.join(","))])?;
        Bytes::from(serde_json::to_vec(&r).ok()?)
    };
    let network = if ty == Type::Endpoints {
        endpoint_network(&body)
    } else {
        Arc::default()
    };
    Some(Item {
        key: key.into(),
        ty,
        namespace: ns.into(),
        body,
        visibility,
        network,
    })
}

/// What the node pushing a registered workload knows of it besides its
/// record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Marks<'a> {
    /// The cluster it registered through is stale, with the threshold in
    /// seconds: not ready, whatever its probe says.
    pub stale: Option<(&'a str, u64)>,
    /// Held only by this node: not committed yet.
    pub local_only: bool,
}

/// The item for a registered workload: its WorkloadEntry, annotated with
/// its health and group, and with `marks`.
pub fn workload_item(key: &str, w: &WorkloadRecord, marks: Marks) -> Option<Item> {
    let mut entry: serde_json::Value = serde_json::from_slice(&w.entry_json).ok()?;
    let namespace: Arc<str> = entry["metadata"]["namespace"].as_str()?.into();
    // A workload whose agent went away keeps its traffic for the grace
    // period: the agent may be failing over to another node.
    let health = match (&w.health, marks.stale) {
        (_, Some((cluster, secs))) => stale_health(cluster, secs),
        (Health::NoProbe | Health::Healthy, None) => annotations::READY.to_string(),
        (Health::Pending, None) => "not probed yet".to_string(),
        (Health::Unhealthy(why), None) => format!("unhealthy: {why}"),
    };
    let mut add = vec![
        (annotations::HEALTH, health),
        (annotations::WORKLOAD_GROUP, w.group.clone()),
    ];
    if marks.local_only {
        add.push((
            annotations::LOCAL_ONLY,
            "registered while the Raft leader was unreachable; not committed yet".to_string(),
        ));
    }
    annotate(&mut entry, &add)?;
    let body = Bytes::from(serde_json::to_vec(&entry).ok()?);
    Some(Item {
        key: key.into(),
        ty: Type::Endpoints,
        namespace,
        network: endpoint_network(&body),
        body,
        visibility: Visibility::Namespace,
    })
}

/// `item`, an endpoint of `cluster`, marked not ready because the
/// cluster is stale (not heard from for more than `secs`); other items
/// as they are.
pub fn mark_stale(item: Item, cluster: &str, secs: u64) -> Option<Item> {
    if item.ty != Type::Endpoints {
        return Some(item);
    }
    let mut entry: serde_json::Value = serde_json::from_slice(&item.body).ok()?;
    annotate(
        &mut entry,
        &[(annotations::HEALTH, stale_health(cluster, secs))],
    )?;
    Some(Item {
        body: Bytes::from(serde_json::to_vec(&entry).ok()?),
        ..item
    })
}

/// [`annotations::HEALTH`] of an endpoint of a stale cluster.
fn stale_health(cluster: &str, secs: u64) -> String {
    format!("stale: cluster {cluster} not heard from for more than {secs}s")
}

/// The network of a WorkloadEntry (JSON), as agents read it.
pub(crate) fn endpoint_network(json: &[u8]) -> Arc<str> {
    #[derive(Deserialize)]
    struct Entry {
        #[serde(default)]
        spec: EntrySpec,
    }
    #[derive(Default, Deserialize)]
    struct EntrySpec {
        #[serde(default)]
        network: Option<String>,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    }
    let spec = serde_json::from_slice::<Entry>(json)
        .map(|e| e.spec)
        .unwrap_or_default();
    trellis_api::topology::network_of(spec.network.as_deref(), &spec.labels).into()
}

/// Adds `add` to the `metadata.annotations` of `resource` (JSON).
pub(super) fn annotate(resource: &mut serde_json::Value, add: &[(&str, String)]) -> Option<()> {
    let annotations = resource
        .get_mut("metadata")?
        .as_object_mut()?
        .entry("annotations")
        .or_insert_with(|| serde_json::Value::Object(Default::default()))
        .as_object_mut()?;
    for (k, val) in add {
        annotations.insert(k.to_string(), val.clone().into());
    }
    Some(())
}

/// The `bundle` item.
pub fn bundle_item(bundle: &Bundle) -> Item {
    Item {
        key: BUNDLE_KEY.into(),
        ty: Type::Bundle,
        namespace: "".into(),
        body: Bytes::from(serde_json::to_vec(bundle).expect("a bundle serializes")),
        visibility: Visibility::All,
        network: Arc::default(),
    }
}
