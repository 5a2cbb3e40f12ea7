//! The state machine: the replicated [`Store`] in memory, made durable by
//! the Raft log and the latest snapshot (one file, `snapshot.bin`).
//!
//! Applying an entry touches memory only. On disk the state is the snapshot
//! plus the log after it: a restarted node loads the snapshot and openraft
//! re-applies the committed entries that follow it. The log is purged only
//! below a snapshot that is on disk (fsynced, renamed into place), so the
//! two always cover the whole history. Writing each applied batch to a
//! database as well would only repeat what the log already holds durably,
//! and cost a third of a write's time on the leader (see
//! docs/architecture.md).
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::raft::state::{Response, Store};
use crate::raft::types::{
    io_error, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// The applied state, shared with readers.
#[derive(Debug, Default)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub store: Store,
    /// Told which keys each applied batch changed ([`Applied::watch`]).
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<Changed>>,
}

/// What changed in the store, sent to watchers after each applied batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// These keys were written or removed, and the membership changed or
    /// not; the state is now at `index`.
    Keys {
        index: u64,
        keys: Vec<String>,
        membership: bool,
    },
    /// The whole state was replaced (a snapshot was installed).
    All { index: u64 },
}

impl Applied {
    /// The log index the state is at (0 before anything was applied).
    pub fn index(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }

    /// Registers a watcher of changes from now on. Call it under the same
    /// lock as the read of the starting state, so nothing falls between.
    pub fn watch(&mut self) -> tokio::sync::mpsc::UnboundedReceiver<Changed> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.watchers.push(tx);
        rx
    }

    fn notify(&mut self, change: Changed) {
        self.watchers.retain(|w| w.send(change.clone()).is_ok());
    }
}

/// The state as readers see it.
pub type SharedState = Arc<RwLock<Applied>>;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    store: Store,
}

/// The state machine of one node.
#[derive(Clone)]
pub struct StateMachine {
    state: SharedState,
    snapshot_path: PathBuf,
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Snapshot(None), verb, e)
}

/// Writes `bytes` as the snapshot file at `path`, durably: a temporary file,
/// fsynced, renamed into place, the directory fsynced.
fn write_snapshot_file(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| snap_err(ErrorVerb::Write, e))
}

impl StateMachine {
    /// Loads the state from the snapshot file, if there is one; openraft
    /// re-applies the committed log after it.
    pub fn open(snapshot_path: PathBuf) -> Result<Self, StorageError> {
        let sm = Self {
            state: SharedState::default(),
            snapshot_path,
        };
        if let Some((snap, _)) = sm.read_snapshot_file()? {
            sm.restore(&snap.meta, snap.store);
        }
        Ok(sm)
    }

    /// The shared applied state, for reads.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The snapshot file, decoded, with its bytes.
    fn read_snapshot_file(&self) -> Result<Option<(SnapshotFile, Vec<u8>)>, StorageError> {
        match std::fs::read(&self.snapshot_path) {
            Ok(b) => bincode::deserialize(&b)
                .map(|f| Some((f, b)))
                .map_err(|e| snap_err(ErrorVerb::Read, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_err(ErrorVerb::Read, e)),
        }
    }

    /// Replaces the whole state (a snapshot loaded or installed).
    fn restore(&self, meta: &SnapshotMeta, store: Store) {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.store = store;
        let index = st.index();
        st.notify(Changed::All { index });
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Applying waits while the lock is held: copy the state and let go,
        // then encode and write it off the async runtime.
        let file = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: st.last_applied,
                    last_membership: st.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}",
                        st.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
                        st.last_applied.map(|l| l.index).unwrap_or(0)
                    ),
                },
                store: st.store.clone(),
            }
        };
        let path = self.snapshot_path.clone();
        let (meta, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = bincode::serialize(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            // The log below this snapshot may be purged once openraft has
            // it: it is on disk first.
            write_snapshot_file(&path, &bytes)?;
            Ok::<_, StorageError>((file.meta, bytes))
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        let mut membership_changed = false;
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::Ok),
                EntryPayload::Normal(cmd) => responses.push(st.store.apply(&cmd, &mut changed)),
                EntryPayload::Membership(m) => {
                    st.membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    responses.push(Response::Ok);
                }
            }
        }
        if !st.watchers.is_empty() {
            let index = st.index();
            st.notify(Changed::Keys {
                index,
                keys: changed,
                membership: membership_changed,
            });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile =
            bincode::deserialize(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        write_snapshot_file(&self.snapshot_path, &bytes)?;
        self.restore(meta, file.store);
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = bytes.len(), "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.read_snapshot_file()?.map(|(f, bytes)| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;
    use crate::raft::state::Command;

    fn put(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Put {
                key: format!("k{index}"),
                value: vec![1],
            }),
        }
    }

    #[tokio::test]
    async fn reopens_at_its_last_snapshot_and_nothing_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.bin");
        let mut sm = StateMachine::open(path.clone()).unwrap();
        sm.apply((1..=3).map(put)).await.unwrap();
        let snap = sm.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(3));
        // Applied after the snapshot: only the log has it.
        sm.apply([put(4)]).await.unwrap();
        drop(sm);

        let mut sm = StateMachine::open(path).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));
        let st = sm.state();
        let st = st.read().unwrap();
        for i in 1..=3 {
            assert_eq!(st.store.kv(&format!("k{i}")), Some(&vec![1]));
        }
        assert_eq!(st.store.kv("k4"), None);
    }
}
