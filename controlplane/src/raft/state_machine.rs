//! The state machine: the replicated [`Store`] in memory, persisted in the
//! sled tree `sm` together with the last applied log id and membership, and
//! snapshots kept as one file beside it.
//!
//! Each batch of applied entries is written to sled as one atomic batch, so
//! after a crash the tree holds a consistent prefix and openraft re-applies
//! the rest from the log. Before a snapshot is taken (after which the log
//! below it may be purged) the tree is flushed, so the state on disk never
//! falls behind the purged log.
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::raft::state::{Response, Store};
use crate::raft::types::{
    io_error, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const DATA_PREFIX: &str = "d/";
const LAST_APPLIED: &[u8] = b"m/last-applied";
const MEMBERSHIP: &[u8] = b"m/membership";

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
    /// These keys were written or removed; the state is now at `index`.
    Keys { index: u64, keys: Vec<String> },
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
    tree: sled::Tree,
    snapshot_path: PathBuf,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Snapshot(None), verb, e)
}

impl StateMachine {
    /// Loads the state from the `sm` tree, or from the snapshot file when
    /// that is newer (a crash right after installing a snapshot).
    pub fn open(db: &sled::Db, snapshot_path: PathBuf) -> Result<Self, StorageError> {
        let tree = db.open_tree("sm").map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let mut pairs = Vec::new();
        for item in tree.scan_prefix(DATA_PREFIX) {
            let (k, v) = item.map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let key = String::from_utf8_lossy(&k[DATA_PREFIX.len()..]).into_owned();
            pairs.push((key, v.to_vec()));
        }
        let read_meta = |k: &[u8]| -> Result<Option<sled::IVec>, StorageError> {
            tree.get(k).map_err(|e| sm_err(ErrorVerb::Read, e))
        };
        let last_applied: Option<LogId> = match read_meta(LAST_APPLIED)? {
            Some(b) => bincode::deserialize(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => None,
        };
        let membership: StoredMembership = match read_meta(MEMBERSHIP)? {
            Some(b) => bincode::deserialize(&b).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        let sm = Self {
            state: Arc::new(RwLock::new(Applied {
                last_applied,
                membership,
                store: Store::from_pairs(pairs),
                watchers: Vec::new(),
            })),
            tree,
            snapshot_path,
        };
        if let Some((snap, _)) = sm.read_snapshot_file()? {
            if snap.meta.last_log_id > last_applied {
                sm.restore(&snap.meta, snap.store)?;
            }
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

    fn write_snapshot_file(&self, bytes: &[u8]) -> Result<(), StorageError> {
        let tmp = self.snapshot_path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.snapshot_path)?;
            if let Some(dir) = self.snapshot_path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| snap_err(ErrorVerb::Write, e))
    }

    /// Replaces the whole state (snapshot install), in memory and on disk.
    fn restore(&self, meta: &SnapshotMeta, store: Store) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.tree.iter() {
            let (k, _) = item.map_err(|e| sm_err(ErrorVerb::Write, e))?;
            batch.remove(k);
        }
        for (k, v) in store.pairs() {
            batch.insert(format!("{DATA_PREFIX}{k}").as_bytes(), v.as_slice());
        }
        let la = bincode::serialize(&meta.last_log_id).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mem =
            bincode::serialize(&meta.last_membership).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        batch.insert(LAST_APPLIED, la);
        batch.insert(MEMBERSHIP, mem);
        self.tree
            .apply_batch(batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        st.last_applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.store = store;
        let index = st.index();
        st.notify(Changed::All { index });
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, bytes) = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    st.last_applied.map(|l| l.leader_id.term).unwrap_or(0),
                    st.last_applied.map(|l| l.index).unwrap_or(0)
                ),
            };
            let file = SnapshotFile {
                meta: meta.clone(),
                store: st.store.clone(),
            };
            let bytes = bincode::serialize(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            (meta, bytes)
        };
        // The log below this snapshot may be purged next: make sure the
        // state it summarizes is on disk first.
        self.tree
            .flush_async()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        self.write_snapshot_file(&bytes)?;
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
        let mut batch = sled::Batch::default();
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
        for key in &changed {
            let k = format!("{DATA_PREFIX}{key}");
            match st.store.raw(key) {
                Some(v) => batch.insert(k.as_bytes(), v.as_slice()),
                None => batch.remove(k.as_bytes()),
            }
        }
        if !st.watchers.is_empty() {
            let index = st.index();
            let mut keys = changed;
            if membership_changed {
                keys.push(crate::push::snapshot::MEMBERSHIP_KEY.to_string());
            }
            st.notify(Changed::Keys { index, keys });
        }
        let la = bincode::serialize(&st.last_applied).map_err(|e| sm_err(ErrorVerb::Write, e))?;
        batch.insert(LAST_APPLIED, la);
        if membership_changed {
            let m = bincode::serialize(&st.membership).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            batch.insert(MEMBERSHIP, m);
        }
        drop(st);
        self.tree
            .apply_batch(batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
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
        self.write_snapshot_file(&bytes)?;
        self.restore(meta, file.store)?;
        self.tree
            .flush_async()
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
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
