//! The replicated store: openraft with its log in a write-ahead log
//! ([`wal`], [`log_store`]; the vote and commit index in sled) and its state
//! machine in memory with snapshots on disk ([`state_machine`]), peers
//! talking over tonic with mTLS ([`network`]).
//! The replicated data and its commands are in [`state`].
// openraft's `StorageError` is large and its trait methods return it by
// value; boxing it in our helpers would only add conversions.
#![allow(clippy::result_large_err)]
pub mod batch;
pub mod log_store;
pub mod network;
pub mod state;
pub mod state_machine;
pub mod types;
pub mod wal;

#[cfg(test)]
mod store_suite;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use state::{Command, MeshInfo, Response, Store};

/// Seconds since the Unix epoch: the proposer's clock, which commands
/// carry so that every replica decides alike.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
pub use state_machine::SharedState;
pub use types::{NodeId, Raft, StorageError, TypeConfig};

/// Raft timing and compaction settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Followers start an election after a random timeout in this range
    /// without hearing from a leader.
    pub election_timeout: (Duration, Duration),
    /// Take a snapshot (and then compact the log) every this many entries.
    pub snapshot_every: u64,
    /// Entries kept in the log below the snapshot, so that slightly lagging
    /// followers catch up from the log rather than a snapshot.
    pub keep_logs: u64,
    /// Size at which a write-ahead log segment is closed; compaction
    /// deletes whole segments.
    pub wal_segment_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
            snapshot_every: 5000,
            keep_logs: 1000,
            wal_segment_bytes: wal::DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Why a node's store could not be opened or its Raft instance started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot open the vote store {} (is another node running on this data directory?)",
        .path.display()
    )]
    Db {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot open the Raft log in {}", .path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("cannot load the snapshot {}", .path.display())]
    Snapshot {
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error("invalid Raft settings; check --heartbeat-ms and --election-timeout-ms")]
    Settings(#[source] openraft::ConfigError),
    #[error("Raft did not start")]
    Raft(#[source] openraft::error::Fatal<NodeId>),
}

/// Opens the node's store in `data_dir` and starts its Raft instance; also
/// returns the writer that proposes commands to it ([`batch::Batcher`]).
pub async fn start(
    node_id: NodeId,
    data_dir: &Path,
    settings: &RaftSettings,
    peer_tls: Arc<rustls::ClientConfig>,
) -> Result<Replica, StartError> {
    let path = data_dir.join("db");
    let db = log_store::open_db(&path).map_err(|source| StartError::Db { path, source })?;
    let path = data_dir.join("wal");
    let log = log_store::LogStore::open(&db, &path, settings.wal_segment_bytes)
        .map_err(|source| StartError::Log { path, source })?;
    let path = data_dir.join("snapshot.bin");
    let sm = state_machine::StateMachine::open(path.clone())
        .map_err(|source| StartError::Snapshot { path, source })?;
    let state = sm.state();
    let appends = log.appends();
    let config = openraft::Config {
        cluster_name: "trellis".into(),
        heartbeat_interval: settings.heartbeat.as_millis() as u64,
        election_timeout_min: settings.election_timeout.0.as_millis() as u64,
        election_timeout_max: settings.election_timeout.1.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.keep_logs,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    };
    let config = Arc::new(config.validate().map_err(StartError::Settings)?);
    let raft = openraft::Raft::new(node_id, config, network::Network::new(peer_tls), log, sm)
        .await
        .map_err(StartError::Raft)?;
    let writer = batch::Batcher::start(raft.clone(), appends);
    Ok(Replica {
        raft,
        state,
        writer,
    })
}

/// This node's replica of the store, running: the Raft node, the state
/// it has applied, and the writer that proposes to it.
pub struct Replica {
    pub raft: Raft,
    pub state: SharedState,
    /// Proposes writes to `raft`, gathering concurrent ones.
    pub writer: batch::Batcher,
}
