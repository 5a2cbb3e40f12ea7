//! Kubernetes discovery on a node started with `--kubernetes`: it mirrors
//! its cluster's API server ([`Mirror`]), and on each batch of changes
//! (after [`DEBOUNCE`]) computes the cluster's records, compares them with
//! what the store holds for the cluster, and writes the difference in one
//! Raft write ([`Command::SyncKubernetes`]); nothing when nothing
//! differs. There is no clearing: a node that starts, or a watch that is
//! lost and lists again, writes only what changed meanwhile.
//!
//! One node of a cluster writes at a time: the holder of the cluster's
//! lease, renewed every [`LEASE`]/3 with the writes (or alone). The other
//! nodes of the cluster keep their mirror and compare too, but write only
//! once the lease expired, then taking it over. The lease's holder also
//! publishes the mesh root in every namespace ([`publish_roots`]).
//!
//! The Istio resources applied to the cluster ([`config`]) are written
//! the same way, as more of the cluster's records.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use trellis_kubernetes::config::{self, Invalid, INVALID};
use trellis_kubernetes::discovery::watch::Mirror;
use trellis_kubernetes::discovery::{diff, records, to_json, Diff, Place, Records};

use crate::node::{now, Node, NodeError};
use crate::raft::state::kubernetes::{KubeLease, KubeSync};
use crate::raft::state::registry::StoredConfig;
use crate::raft::state::Command;

/// How long a batch of changes gathers before it is written.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long the writer's lease lasts: another node of the cluster takes
/// over at most this long after the writer stopped.
pub const LEASE: Duration = Duration::from_secs(15);

/// Watches the API server of `client` and writes its cluster's records,
/// forever.
pub async fn discover_forever(node: Arc<Node>, client: kube::Client) {
    let place = place_of(&node).await;
    let mirror = loop {
        match Mirror::start(client.clone()).await {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot start Kubernetes discovery; trying again in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tracing::info!(cluster = %place.cluster, slices = %mirror.slice_version,
        "Kubernetes discovery watching the API server");
    let mut resources = config::watch::Mirror::start(client).await;
    let mut changes = mirror.changes();
    let mut resource_changes = resources.changes();
    let mut renew = tokio::time::interval(LEASE / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut writer = Writer::default();
    loop {
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                changes.borrow_and_update();
            }
            _ = resource_changes.changed() => {
                tokio::time::sleep(DEBOUNCE).await;
                resource_changes.borrow_and_update();
            }
            // CRDs installed since are watched from here.
            _ = renew.tick() => resources.refresh().await,
        }
        let Some(mut desired) = mirror.read(|o| to_json(records(o, &place))) else {
            tracing::debug!(unlisted = ?mirror.unlisted(), "Kubernetes discovery waiting for the first lists");
            continue;
        };
        // The cluster's Istio resources are its records too.
        let Some(custom) = resources.read(|o| config::records(o, &place.cluster)) else {
            tracing::debug!("Kubernetes discovery waiting for the first lists of Istio resources");
            continue;
        };
        desired.extend(custom);
        // A large difference goes in parts, one after the other.
        while writer.sync(&node, &place.cluster, &desired).await {}
    }
}

/// Keeps the mesh root in the ConfigMap `trellis-ca-root-cert` of every
/// namespace ([`trellis_kubernetes::roots`]) while this node holds its
/// cluster's discovery lease, so that one node of a cluster writes it.
pub async fn publish_roots(node: Arc<Node>, client: kube::Client) {
    let cluster = place_of(&node).await.cluster;
    let roots = node.clone();
    trellis_kubernetes::roots::publish_forever(
        client,
        move || roots.mesh().map(|m| m.root_cert_pem),
        move || node.read_state(|s| holds(s.store.kube_lease(&cluster).as_ref(), node.id, now())),
    )
    .await;
}

/// Whether node `me` holds `lease` at `now`.
fn holds(lease: Option<&KubeLease>, me: u64, now: u64) -> bool {
    lease.is_some_and(|l| l.holder == me && l.expires > now)
}

/// Where this node's cluster is, once the node has its record (a node
/// that is joining waits for it).
async fn place_of(node: &Arc<Node>) -> Place {
    loop {
        let place = node.read_state(|s| {
            let (cluster, network) = s.store.node_topology(node.id)?;
            Some(Place {
                cluster,
                network,
                domain: s.store.domain(),
            })
        });
        if let Some(p) = place {
            return p;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the writer remembers between two batches, for its logs.
#[derive(Default)]
struct Writer {
    compared: bool,
    /// The log index of its last write.
    written: u64,
    standing_by: Option<u64>,
    failing: bool,
}

impl Writer {
    /// Writes what differs between `desired` and the store, if this node
    /// holds the lease or may take it; renews the lease when due. At most
    /// [`MAX_WRITE`] records at a time: whether more are left to write.
    async fn sync(&mut self, node: &Arc<Node>, cluster: &str, desired: &Records) -> bool {
        // Compare with a replica that has our last write: one forwarded
        // to the leader may reach this node's replica a little later,
        // and would be written again.
        let caught_up =
            caught_up_within(CATCH_UP, || node.read_state(|s| s.index()) >= self.written);
        if !caught_up.await {
            tracing::debug!(
                written = self.written,
                "this node's replica lags its last write; comparing at the next batch"
            );
            return false;
        }
        let now = now();
        let (stored, lease) = node.read_state(|s| {
            let stored: Records = s
                .store
                .kube_records(cluster)
                .into_iter()
                .map(|(k, v)| (k, v.json))
                .collect();
            (stored, s.store.kube_lease(cluster))
        });
        let (d, more) = first_part(diff(desired, &stored), MAX_WRITE);
        if !self.compared {
            // The first comparison after a start: what a restart or a
            // takeover has to write (nothing, when nothing changed).
            tracing::info!(
                records = desired.len(),
                upserts = d.upserts.len(),
                deletes = d.deletes.len(),
                "Kubernetes discovery compared the cluster with the store"
            );
            self.compared = true;
        }
        if let Some(l) = lease
            .as_ref()
            .filter(|l| l.holder != node.id && l.expires > now)
        {
            if self.standing_by != Some(l.holder) {
                tracing::info!(
                    holder = l.holder,
                    "another node writes this cluster's Kubernetes discovery; standing by"
                );
                self.standing_by = Some(l.holder);
            }
            return false;
        }
        if d.is_empty() && !renewal_due(lease.as_ref(), node.id, now) {
            return false;
        }
        let (upserts, deletes) = (d.upserts.len(), d.deletes.len());
        let refused: Vec<(String, Vec<u8>)> = d
            .upserts
            .iter()
            .filter(|(k, _)| k.starts_with(INVALID))
            .cloned()
            .collect();
        let sync = KubeSync {
            cluster: cluster.to_string(),
            node: node.id,
            now,
            lease_secs: LEASE.as_secs(),
            upserts: d
                .upserts
                .into_iter()
                .map(|(k, json)| {
                    // Virtual IPs for a cluster's ServiceEntry as for an
                    // applied one (discovery's have the Service's IP).
                    let vip_hosts = k
                        .starts_with(config::CONFIG)
                        .then(|| crate::config::from_json(&json).ok())
                        .flatten()
                        .map(|r| crate::config::stored(&r).vip_hosts)
                        .unwrap_or_default();
                    let value = StoredConfig { json, vip_hosts };
                    (k, value)
                })
                .collect(),
            deletes: d.deletes,
        };
        match node.write(Command::SyncKubernetes(Box::new(sync))).await {
            Ok((index, _)) => {
                self.written = index;
                let stats = &node.stats;
                stats.kube_writes.fetch_add(1, Ordering::Relaxed);
                let records = (upserts + deletes) as u64;
                stats
                    .kube_records_written
                    .fetch_add(records, Ordering::Relaxed);
                if self.standing_by.take().is_some() || lease.is_none_or(|l| l.holder != node.id) {
                    tracing::info!(%cluster, "this node writes the cluster's Kubernetes discovery");
                }
                if self.failing {
                    tracing::info!("Kubernetes discovery writes again");
                    self.failing = false;
                }
                for (key, json) in refused {
                    let errors = serde_json::from_slice::<Invalid>(&json)
                        .map(|i| i.errors.join("; "))
                        .unwrap_or_default();
                    tracing::warn!(%cluster, resource = &key[INVALID.len()..], %errors,
                        "an Istio resource of the cluster is invalid; not in force until fixed there (`trellis analyze` shows it)");
                }
                if upserts + deletes > 0 {
                    tracing::info!(
                        upserts,
                        deletes,
                        index,
                        more,
                        "Kubernetes discovery wrote its changes"
                    );
                }
                more
            }
            Err(NodeError::Refused(why)) => {
                tracing::info!(%why, "Kubernetes discovery's write refused");
                false
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e.message(), "Kubernetes discovery cannot write; the stored records stay until it can");
                }
                self.failing = true;
                false
            }
        }
    }
}

/// Most records one discovery write carries. A larger difference (a big
/// cluster's first write, a mass change) goes in several log entries,
/// each small enough to reach every replica within the Raft RPC timeout:
/// one entry of thousands of records was resent whole, timing out, until
/// the cluster's writes stalled.
const MAX_WRITE: usize = 100;

/// The first `max` changes of `d` (deletes first), and whether more are
/// left.
fn first_part(mut d: Diff, max: usize) -> (Diff, bool) {
    let more = d.upserts.len() + d.deletes.len() > max;
    d.deletes.truncate(max);
    d.upserts.truncate(max - d.deletes.len());
    (d, more)
}

/// How long a batch waits for this node's replica to apply its last write.
const CATCH_UP: Duration = Duration::from_secs(2);

/// Whether `done` holds within `limit`, asked every 10 ms.
async fn caught_up_within(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Whether the lease must be renewed at `now` by node `me` (with no
/// changes to write): it is not `me`'s, or a third of it has passed.
fn renewal_due(lease: Option<&KubeLease>, me: u64, now: u64) -> bool {
    lease.is_none_or(|l| l.holder != me || l.expires <= now + LEASE.as_secs() * 2 / 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_holder_of_an_unexpired_lease_holds_it() {
        let lease = KubeLease {
            holder: 1,
            expires: 115,
            changes: 0,
        };
        assert!(holds(Some(&lease), 1, 100));
        assert!(!holds(Some(&lease), 2, 100));
        assert!(!holds(Some(&lease), 1, 115));
        assert!(!holds(None, 1, 100));
    }

    #[test]
    fn a_large_difference_is_written_in_parts_deletes_first() {
        let d = |upserts: usize, deletes: usize| Diff {
            upserts: (0..upserts).map(|i| (format!("u{i}"), vec![])).collect(),
            deletes: (0..deletes).map(|i| format!("d{i}")).collect(),
        };
        let (part, more) = first_part(d(3, 2), 4);
        assert!(more);
        assert_eq!(part.deletes.len(), 2);
        assert_eq!(part.upserts.len(), 2);
        let (part, more) = first_part(d(0, 9), 4);
        assert!(more && part.deletes.len() == 4 && part.upserts.is_empty());
        let (part, more) = first_part(d(2, 2), 4);
        assert!(!more && part.upserts.len() == 2 && part.deletes.len() == 2);
    }

    #[test]
    fn the_lease_is_renewed_after_a_third_of_it() {
        let lease = |holder, expires| KubeLease {
            holder,
            expires,
            changes: 0,
        };
        assert!(renewal_due(None, 1, 100));
        assert!(!renewal_due(Some(&lease(1, 115)), 1, 100));
        assert!(!renewal_due(Some(&lease(1, 115)), 1, 104));
        assert!(renewal_due(Some(&lease(1, 115)), 1, 105));
        // Expired, another's: due (the write takes it over).
        assert!(renewal_due(Some(&lease(2, 90)), 1, 100));
    }
}
