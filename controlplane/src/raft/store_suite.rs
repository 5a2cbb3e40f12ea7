//! The storage test suite: openraft's own suite run against the log store
//! (write-ahead log, vote in sled) and the state machine, plus reopening
//! after an unclean stop (a child process killed with SIGKILL while it
//! appends).
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
use tempfile::TempDir;

use super::log_store::{open_db, LogStore};
use super::state::Command;
use super::state_machine::StateMachine;
use super::types::{StorageError, TypeConfig};
use super::wal::DEFAULT_SEGMENT_BYTES;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("tempdir");
        let db = open_db(&dir.path().join("db")).expect("open sled");
        let log = LogStore::open(&db, &dir.path().join("wal"), DEFAULT_SEGMENT_BYTES)?;
        let sm = StateMachine::open(dir.path().join("snapshot.bin"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

fn put_entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put {
            key: format!("k{index}"),
            value: vec![7; 256],
        }),
    }
}

const CHILD_ENV: &str = "TRELLIS_STORE_SUITE_CHILD_DIR";

/// Child half of `acknowledged_appends_survive_sigkill`: appends entries
/// forever, printing each index once openraft would have been told it is
/// durable. Does nothing unless started by the parent test.
#[test]
fn sigkill_child_appender() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let db = open_db(&std::path::Path::new(&dir).join("db")).expect("open sled");
        let mut log = LogStore::open(
            &db,
            &std::path::Path::new(&dir).join("wal"),
            DEFAULT_SEGMENT_BYTES,
        )
        .expect("log store");
        for index in 1.. {
            // Returns once the flush callback has fired.
            log.blocking_append([put_entry(index)])
                .await
                .expect("append");
            println!("acked {index}");
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = TempDir::new().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Process::new(exe)
        .args([
            "--exact",
            "raft::store_suite::sigkill_child_appender",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut last_acked = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child");
        if let Some(n) = line.strip_prefix("acked ") {
            last_acked = n.parse().expect("index");
            if last_acked >= 200 {
                break;
            }
        }
    }
    // SIGKILL: no destructor, no sled shutdown flush.
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    assert!(
        last_acked >= 200,
        "child acknowledged only {last_acked} appends"
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let db = open_db(&dir.path().join("db")).expect("reopen sled after SIGKILL");
        let mut log =
            LogStore::open(&db, &dir.path().join("wal"), DEFAULT_SEGMENT_BYTES).expect("log store");
        let state = log.get_log_state().await.expect("log state");
        let last = state.last_log_id.expect("log is empty after reopen").index;
        assert!(
            last >= last_acked,
            "acknowledged {last_acked} but only {last} survived"
        );
        let entries = log
            .try_get_log_entries(1..=last_acked)
            .await
            .expect("read log");
        assert_eq!(entries.len() as u64, last_acked);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.log_id.index, i as u64 + 1);
        }
        // The state machine reopens empty (no snapshot was taken): openraft
        // re-applies the committed log into it.
        let mut sm = StateMachine::open(dir.path().join("snapshot.bin")).expect("sm");
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, None);
    });
}
