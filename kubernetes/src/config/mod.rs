//! Istio resources applied to a cluster with `kubectl` as mesh
//! configuration.
//!
//! [`watch::Mirror`] lists and watches the custom resources of every kind
//! whose CRD ([`crate::crd`]) the API server serves; [`records`] turns
//! them into the records the cluster's discovery writer stores beside its
//! Services and pods (pure): each object is read by the same
//! [`Resource::check`] as `trellis apply` and the validating webhook, so a
//! custom resource means exactly what the same document applied with
//! `trellis apply` means. One that the check refuses (the webhook was
//! bypassed, or is not installed) is kept as an [`Invalid`] record with
//! its field-path errors instead, which `trellis analyze` reports.
//!
//! Keys (under the cluster's `kube/CLUSTER/`): `config/KIND/NS/NAME` for a
//! resource, `invalid/KIND/NS/NAME` for a refused one.
pub mod watch;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trellis_api::annotations;
use trellis_api::config::Resource;

use crate::discovery::Records;

/// The key prefix of a cluster's resources, within its records.
pub const CONFIG: &str = "config/";
/// The key prefix of a cluster's refused custom resources.
pub const INVALID: &str = "invalid/";

/// kubectl's copy of the applied document: bulky, and not configuration.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The custom resources listed, by (kind, namespace, name): each as the
/// API server sent it.
pub type Objects = BTreeMap<(&'static str, String, String), Value>;

/// A custom resource the mesh refused: every error as `field.path: reason`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalid {
    pub errors: Vec<String>,
}

/// The records of `cluster`'s custom resources, by key
/// `config/KIND/NS/NAME` (the resource's JSON) or `invalid/KIND/NS/NAME`
/// (an [`Invalid`]'s).
pub fn records(objects: &Objects, cluster: &str) -> Records {
    objects
        .iter()
        .map(|((kind, ns, name), object)| {
            let rel = format!("{kind}/{ns}/{name}");
            let (key, json) = match resource(kind, object.clone(), cluster) {
                Ok(r) => (format!("{CONFIG}{rel}"), serde_json::to_vec(&r)),
                Err(errors) => (
                    format!("{INVALID}{rel}"),
                    serde_json::to_vec(&Invalid { errors }),
                ),
            };
            (key, json.expect("a record always serializes to JSON"))
        })
        .collect()
}

/// The resource an object of `kind` is, checked as `trellis apply` checks
/// a document, annotated with its source and creation time; else every
/// error.
pub fn resource(kind: &str, mut object: Value, cluster: &str) -> Result<Resource, Vec<String>> {
    if let Some(o) = object.as_object_mut() {
        // List items may come without their type.
        o.entry("kind").or_insert_with(|| kind.into());
        o.remove("status");
    }
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.remove(LAST_APPLIED);
            a.insert(
                annotations::SOURCE.into(),
                format!("kubernetes/{cluster}").into(),
            );
            if let Some(created) = created {
                a.insert(annotations::CREATED.into(), created.into());
            }
        }
    }
    let checked = Resource::check(object);
    match checked.resource {
        Some(r) if checked.errors.is_empty() => Ok(r),
        _ => Err(checked.errors.iter().map(ToString::to_string).collect()),
    }
}

#[cfg(test)]
mod tests;
