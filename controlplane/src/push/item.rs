//! [`Item`]: one resource as agents receive it, built from the store (pure):
//! its push [`Type`], the body sent (JSON, with what the control plane adds:
//! allocated virtual IPs, a registered workload's health), and what
//! scoping needs to know of it ([`Visibility`]).
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use trellis_api::annotations;
use trellis_api::config::{canonical_host, Resource, Spec};

use crate::raft::state::registry::{Health, WorkloadRecord};
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
    /// agents (Sidecar scopes pushes, Gateway is for gateways).
    pub fn of_kind(kind: &str) -> Option<Type> {
        Some(match kind {
            "ServiceEntry" => Type::Services,
            "VirtualService" => Type::Routes,
            "DestinationRule" => Type::Clusters,
            "WorkloadEntry" => Type::Endpoints,
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
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
}

/// What the `bundle` item carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub trust_domain: String,
    pub roots: Vec<String>,
    /// Every control-plane node's address, for agents to fail over.
    pub control_plane: Vec<String>,
}

/// Kubernetes cluster domain short names are expanded with on the control
/// plane (agents expand with their own `--domain`, which should agree).
pub const DOMAIN: &str = "cluster.local";

/// The item for a `config/` resource; `None` if the kind is not pushed.
pub fn config_item(key: &str, r: &Resource, store: &Store) -> Option<Item> {
    let ty = Type::of_kind(r.kind())?;
    let ns = r.metadata.namespace.as_str();
    let canonical = |h: &String| canonical_host(h, ns, DOMAIN, |_| false);
    let visibility = match &r.spec {
        Spec::ServiceEntry(se) => Visibility::Hosts {
            // ServiceEntry hosts are taken as written, as in Istio.
            hosts: se.hosts.clone(),
            export_to: se.export_to.clone(),
        },
        Spec::VirtualService(vs) => Visibility::Hosts {
            hosts: vs.hosts.iter().map(canonical).collect(),
            export_to: vs.export_to.clone(),
        },
        Spec::DestinationRule(dr) => Visibility::Hosts {
            hosts: vec![canonical(&dr.host)],
            export_to: dr.export_to.clone(),
        },
        Spec::WorkloadEntry(_) => Visibility::Namespace,
        _ if ty == Type::Policies => Visibility::OwnOrRoot,
        _ => Visibility::Own,
    };
    let body = match &r.spec {
        Spec::ServiceEntry(se) if se.addresses.is_empty() => {
            let vips: Vec<String> = se
                .hosts
                .iter()
                .filter_map(|h| Some(format!("{h}={}", store.vip(h)?)))
                .collect();
            if vips.is_empty() {
                json(r)
            } else {
                let mut r = r.clone();
                r.metadata
                    .annotations
                    .insert(annotations::ADDRESSES.into(), vips.join(","));
                json(&r)
            }
        }
        _ => json(r),
    };
    Some(Item {
        key: key.into(),
        ty,
        namespace: ns.into(),
        body,
        visibility,
    })
}

/// The item for a registered workload: its WorkloadEntry, annotated with
/// its health and group.
pub fn workload_item(key: &str, w: &WorkloadRecord) -> Option<Item> {
    let mut r = crate::config::from_json(&w.entry_json).ok()?;
    // A workload whose agent went away keeps its traffic for the grace
    // period: the agent may be failing over to another node.
    let health = match &w.health {
        Health::NoProbe | Health::Healthy => annotations::READY.to_string(),
        Health::Pending => "not probed yet".to_string(),
        Health::Unhealthy(why) => format!("unhealthy: {why}"),
    };
    r.metadata
        .annotations
        .insert(annotations::HEALTH.into(), health);
    r.metadata
        .annotations
        .insert(annotations::WORKLOAD_GROUP.into(), w.group.clone());
    Some(Item {
        key: key.into(),
        ty: Type::Endpoints,
        namespace: r.metadata.namespace.as_str().into(),
        body: json(&r),
        visibility: Visibility::Namespace,
    })
}

/// The `bundle` item.
pub fn bundle_item(bundle: &Bundle) -> Item {
    Item {
        key: BUNDLE_KEY.into(),
        ty: Type::Bundle,
        namespace: "".into(),
        body: Bytes::from(serde_json::to_vec(bundle).expect("a bundle serializes")),
        visibility: Visibility::All,
    }
}

fn json(r: &Resource) -> Bytes {
    Bytes::from(serde_json::to_vec(r).expect("a resource always serializes to JSON"))
}
