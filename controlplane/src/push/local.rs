//! What a node pushes besides its replica: the registrations it holds
//! only locally ([`Overlay`]: taken while it could not reach the Raft
//! leader, until they are committed), and its view of how fresh each
//! cluster's data is ([`stale_clusters`]), which marks the registered
//! endpoints of a cluster not heard from for a while as not ready.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::raft::state::registry::WorkloadRecord;
use crate::raft::Store;

/// Registrations this node took but could not commit yet, by workload
/// key. Local to the node and marked so in what it pushes; never
/// replicated: the registration is written through Raft when the leader
/// is reachable again, and then leaves the overlay.
#[derive(Clone)]
pub struct Overlay {
    held: Arc<Mutex<BTreeMap<String, WorkloadRecord>>>,
    /// Keys whose local record changed, for the push to read again.
    changed: mpsc::UnboundedSender<String>,
}

impl Overlay {
    /// An overlay, and the receiver told of each key that changed in it.
    pub fn new() -> (Overlay, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Overlay {
                held: Arc::default(),
                changed: tx,
            },
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, WorkloadRecord>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `record` for `key` until [`Overlay::release`].
    pub fn hold(&self, key: &str, record: WorkloadRecord) {
        self.lock().insert(key.to_string(), record);
        let _ = self.changed.send(key.to_string());
    }

    /// Changes the held record of `key` (a health report); `false` if the
    /// key is not held.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut WorkloadRecord)) -> bool {
        let found = self.lock().get_mut(key).map(f).is_some();
        if found {
            let _ = self.changed.send(key.to_string());
        }
        found
    }

    /// Stops holding `key` if it is still held as `record` was (the same
    /// stream); returns whether it was.
    pub fn release(&self, key: &str, conn: crate::raft::state::registry::Conn) -> bool {
        let mut held = self.lock();
        if held.get(key).is_none_or(|r| r.conn != conn) {
            return false;
        }
        held.remove(key);
        drop(held);
        let _ = self.changed.send(key.to_string());
        true
    }

    /// The held record of `key`.
    pub fn get(&self, key: &str) -> Option<WorkloadRecord> {
        self.lock().get(key).cloned()
    }

    /// Every held record, by key.
    pub fn all(&self) -> BTreeMap<String, WorkloadRecord> {
        self.lock().clone()
    }
}

/// The clusters whose data node `me`'s cluster takes as stale at `now`:
/// not heard from (their latest stamp, else when they joined) for longer
/// than `stale_after`. A node never takes its own cluster as stale: what
/// it has of it is what it serves.
pub fn stale_clusters(store: &Store, me: u64, now: u64, stale_after: Duration) -> BTreeSet<String> {
    let mine = store.node_record(me).map(|r| r.cluster);
    store
        .clusters()
        .into_iter()
        .filter(|(name, _)| Some(name) != mine.as_ref())
        .filter(|(name, _)| {
            store
                .heard_from(name)
                .is_some_and(|at| now.saturating_sub(at) > stale_after.as_secs())
        })
        .map(|(name, _)| name)
        .collect()
}

/// How often a node stamps its cluster: often enough that a live cluster
/// is never taken as stale (three stamps per `stale_after`), at most
/// every five seconds, at least every second.
pub fn stamp_every(stale_after: Duration) -> Duration {
    (stale_after / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::{Bootstrap, ClusterJoin, Command};
    use crate::tokens::{secret_sha256, JoinToken, TokenKind, TokenRecord};

    /// East (node 1, stamped at 1000) and west (node 2, joined at 900
    /// with a cluster token, no stamp).
    fn store() -> Store {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let bootstrap = Bootstrap::for_tests("n1", 100, "");
        s.apply(&Command::Bootstrap(Box::new(bootstrap)), &mut ch);
        let t = JoinToken::generate(vec!["127.0.0.1:15012".into()], [7; 32]);
        let kind = TokenKind::Cluster {
            cluster: "west".into(),
            network: "n2".into(),
        };
        let record = TokenRecord::new(&t, kind, 800, 3600, Some(1));
        s.apply(&Command::CreateToken { record }, &mut ch);
        let join = Command::JoinCluster(Box::new(ClusterJoin {
            token_id: t.id.clone(),
            secret_sha256: secret_sha256(&t.secret),
            now: 900,
            cluster: String::new(),
            locality: String::new(),
        }));
        assert!(matches!(
            s.apply(&join, &mut ch),
            crate::raft::Response::ClusterJoined { node_id: 2, .. }
        ));
        s.apply(
            &Command::StampCluster {
                cluster: "east".into(),
                at: 1000,
            },
            &mut ch,
        );
        s
    }

    #[test]
    fn a_cluster_is_stale_past_the_threshold_and_never_to_its_own_node() {
        let s = store();
        let after = Duration::from_secs(30);
        let names =
            |me, now| -> Vec<String> { stale_clusters(&s, me, now, after).into_iter().collect() };
        // West has no stamp: its joining time counts.
        assert_eq!(names(1, 930), Vec::<String>::new());
        assert_eq!(names(1, 931), ["west"]);
        // East's stamp is 1000; its own node never takes it as stale.
        assert_eq!(names(1, 1031), ["west"]);
        assert_eq!(names(2, 1030), Vec::<String>::new());
        assert_eq!(names(2, 1031), ["east"]);
        // A node without a record (still joining) has no cluster of its own.
        assert_eq!(names(9, 1031), ["east", "west"]);
    }

    #[test]
    fn a_live_cluster_stamps_three_times_per_threshold_within_bounds() {
        let s = |secs| stamp_every(Duration::from_secs(secs));
        assert_eq!(s(30), Duration::from_secs(5));
        assert_eq!(s(6), Duration::from_secs(2));
        assert_eq!(s(1), Duration::from_secs(1));
    }
}
