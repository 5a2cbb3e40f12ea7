//! Discovery of a cluster's services and endpoints for the mesh.
//!
//! [`watch`] mirrors what the API server holds (Services, EndpointSlices
//! of the version it serves, Pods, Nodes, Namespaces) with kube-rs
//! watchers, which list again after a lost watch; [`view::records`] turns
//! that into the records the mesh stores (pure); [`diff`] says what to
//! write, given what the store holds for the cluster. The control-plane
//! node that runs in the cluster does the writing (one Raft write per
//! batch, none when nothing differs).
pub mod slice;
pub mod view;
pub mod watch;

use std::collections::BTreeMap;

pub use view::{records, Objects, Place};

/// Records as the store keeps them: key `KIND/NAMESPACE/NAME` → the
/// resource as JSON.
pub type Records = BTreeMap<String, Vec<u8>>;

/// The JSON of each record.
pub fn to_json(records: BTreeMap<String, trellis_api::config::Resource>) -> Records {
    records
        .into_iter()
        .map(|(k, r)| {
            let json = serde_json::to_vec(&r).expect("a resource always serializes to JSON");
            (k, json)
        })
        .collect()
}

/// What turns the stored records into the desired ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Records new or changed.
    pub upserts: Vec<(String, Vec<u8>)>,
    /// Records stored that are no longer desired.
    pub deletes: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// The difference from `stored` to `desired`, in key order.
pub fn diff(desired: &Records, stored: &Records) -> Diff {
    Diff {
        upserts: desired
            .iter()
            .filter(|(k, v)| stored.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        deletes: stored
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests;
