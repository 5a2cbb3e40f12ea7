//! The Raft log: entries in a write-ahead log ([`Wal`]) and in memory, the
//! vote and commit index in sled.
//!
//! A write is acknowledged to openraft (the [`LogFlushed`] callback) only
//! after an `fdatasync` that covers it. Appends that arrive while a sync
//! runs are covered by the next one (group commit), so throughput grows
//! with load while every acknowledged entry is on disk.
//!
//! Entries not yet purged are also kept in memory: replication and apply
//! read them from there, never from disk. Snapshots bound their number
//! (`--snapshot-every` plus the entries kept for lagging followers).
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};

use crate::raft::types::{io_error, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::raft::wal::Wal;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last-purged";

struct Inner {
    wal: Wal,
    entries: BTreeMap<u64, Entry>,
}

/// The log store of a node.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    meta: sled::Tree,
    inner: Arc<Mutex<Inner>>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// Counts appends handed to the log (see [`LogStore::appends`]).
    appends: Arc<tokio::sync::watch::Sender<u64>>,
}

fn logs_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Logs, verb, e)
}

/// Syncs the newest WAL segment for every batch of waiting appends, then
/// acknowledges them. Ends when the last sender is dropped.
fn run_flusher(rx: mpsc::Receiver<LogFlushed<TypeConfig>>, target: Arc<RwLock<Option<Arc<File>>>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let file = target.read().unwrap_or_else(|p| p.into_inner()).clone();
        let res = match file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        };
        for cb in batch {
            cb.log_io_completed(match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

impl LogStore {
    /// Opens the log: the WAL in `wal_dir` (segments of `segment_bytes`),
    /// the vote and commit index in `db`. Starts the sync thread.
    pub fn open(db: &sled::Db, wal_dir: &Path, segment_bytes: u64) -> Result<Self, StorageError> {
        let meta = db
            .open_tree("raft")
            .map_err(|e| logs_err(ErrorVerb::Read, e))?;
        let (wal, records) =
            Wal::open(wal_dir, segment_bytes).map_err(|e| logs_err(ErrorVerb::Read, e))?;
        let last_purged = read_meta::<Option<LogId>>(&meta, LAST_PURGED)?.flatten();
        let floor = last_purged.map(|l| l.index + 1).unwrap_or(0);
        let mut entries = BTreeMap::new();
        for (index, payload) in records {
            if index < floor {
                continue;
            }
            let e: Entry =
                bincode::deserialize(&payload).map_err(|e| logs_err(ErrorVerb::Read, e))?;
            entries.insert(index, e);
        }
        let (tx, rx) = mpsc::channel();
        let target = wal.sync_target();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || run_flusher(rx, target))
            .map_err(|e| logs_err(ErrorVerb::Write, e))?;
        Ok(Self {
            db: db.clone(),
            meta,
            inner: Arc::new(Mutex::new(Inner { wal, entries })),
            flusher: tx,
            appends: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// The number of appends so far, changing as each is written (before it
    /// is synced): openraft's core is then waiting for that sync.
    pub fn appends(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appends.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        v: &T,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StorageError> {
        let b =
            bincode::serialize(v).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(key, b)
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn flush_meta(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.db
            .flush_async()
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))?;
        Ok(())
    }
}

fn read_meta<T: for<'de> serde::Deserialize<'de>>(
    meta: &sled::Tree,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let Some(b) = meta.get(key).map_err(|e| logs_err(ErrorVerb::Read, e))? else {
        return Ok(None);
    };
    bincode::deserialize(&b)
        .map(Some)
        .map_err(|e| logs_err(ErrorVerb::Read, e))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = read_meta::<Option<LogId>>(&self.meta, LAST_PURGED)?.flatten();
        let last = self
            .lock()
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote, ErrorSubject::Vote)?;
        // A vote must be on disk before it is acted upon.
        self.flush_meta(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_meta(&self.meta, VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: a lost commit index is learned again from the
        // leader; it only lets a restarted node apply sooner.
        self.put_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(read_meta::<Option<LogId>>(&self.meta, COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let mut records = Vec::with_capacity(entries.len());
        for e in &entries {
            let b = bincode::serialize(e)
                .map_err(|err| io_error(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))?;
            records.push((e.log_id.index, b));
        }
        {
            let mut inner = self.lock();
            inner
                .wal
                .append(&records)
                .map_err(|e| logs_err(ErrorVerb::Write, e))?;
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        self.flusher.send(callback).map_err(|_| {
            logs_err(
                ErrorVerb::Write,
                std::io::Error::other("the log sync thread has stopped"),
            )
        })?;
        self.appends.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut inner = self.lock();
        inner
            .wal
            .truncate(log_id.index)
            .map_err(|e| logs_err(ErrorVerb::Delete, e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra
        // entries below it, which recovery skips, never a gap.
        self.put_meta(LAST_PURGED, &Some(log_id), ErrorSubject::Logs)?;
        self.flush_meta(ErrorSubject::Logs).await?;
        let mut inner = self.lock();
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner
            .wal
            .purge(log_id.index)
            .map_err(|e| logs_err(ErrorVerb::Delete, e))
    }
}

/// Opens the sled database of a node with the settings Trellis uses.
pub fn open_db(path: &std::path::Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(path)
        // sled's default 1 GiB page cache would dominate a node's memory; it
        // holds only the vote, the commit index and the purge point.
        .cache_capacity(16 * 1024 * 1024)
        .open()
}
