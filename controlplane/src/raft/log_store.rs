//! The Raft log on sled.
//!
//! A write is acknowledged to openraft (the [`LogFlushed`] callback) only
//! after an explicit `fsync` of the sled database that covers it: never on
//! the strength of sled's periodic background flush. Appends that arrive
//! while a flush is running are flushed together by the next one (group
//! commit), so throughput grows with load while every acknowledged entry is
//! on disk.
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};

use crate::raft::types::{io_error, Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last-purged";

/// The log store: sled trees `log` (index → entry) and `raft` (vote,
/// committed, last purged), and the group-commit flusher.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

impl LogStore {
    /// Opens the log in `db` and starts its flusher thread. The thread ends
    /// when the last clone of the store is dropped.
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flush_db = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let res = flush_db.flush().map(|_| ()).map_err(std::io::Error::other);
                    for cb in batch {
                        let r = match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        };
                        cb.log_io_completed(r);
                    }
                }
            })
            .map_err(sled::Error::Io)?;
        Ok(Self {
            db: db.clone(),
            log: db.open_tree("log")?,
            meta: db.open_tree("raft")?,
            flusher: tx,
        })
    }

    fn get_meta<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &str,
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError> {
        let Some(b) = self
            .meta
            .get(key)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        bincode::deserialize(&b)
            .map(Some)
            .map_err(|e| io_error(subject, ErrorVerb::Read, e))
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

    async fn flush(&self, subject: ErrorSubject<u64>) -> Result<(), StorageError> {
        self.db
            .flush_async()
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        match self.log.last() {
            Ok(Some((_, v))) => bincode::deserialize(&v)
                .map(Some)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Ok(None) => Ok(None),
            Err(e) => Err(io_error(ErrorSubject::Logs, ErrorVerb::Read, e)),
        }
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range((Bound::Included(key(start)), end)) {
            let (_, v) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(
                bincode::deserialize(&v)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?,
            );
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self
            .get_meta::<Option<LogId>>(LAST_PURGED, ErrorSubject::Logs)?
            .flatten();
        let last = self.last_entry()?.map(|e| e.log_id).or(last_purged);
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
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: a lost committed index is learned again from the
        // leader; it only lets a restarted node apply sooner.
        self.put_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
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
        let mut batch = sled::Batch::default();
        for e in entries {
            let b = bincode::serialize(&e)
                .map_err(|err| io_error(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))?;
            batch.insert(&key(e.log_id.index), b);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        if self.flusher.send(callback).is_err() {
            return Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other("the log flusher has stopped"),
            ));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(key(log_id.index)..) {
            let (k, _) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra
        // entries below it, which are harmless, never a gap.
        self.put_meta(LAST_PURGED, &Some(log_id), ErrorSubject::Logs)?;
        self.flush(ErrorSubject::Logs).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=key(log_id.index)) {
            let (k, _) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        Ok(())
    }
}

/// Opens the sled database of a node with the settings Trellis uses.
pub fn open_db(path: &std::path::Path) -> Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(path)
        // sled's default 1 GiB page cache would dominate a node's memory; the
        // working set is the log tail and the state machine, which is kept
        // in memory anyway.
        .cache_capacity(16 * 1024 * 1024)
        .open()
}
