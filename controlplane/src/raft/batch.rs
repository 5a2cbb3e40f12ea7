//! Writes on the leader, gathered into one log entry while the log is busy.
//!
//! openraft 0.9's core waits for each append to be flushed before it does
//! anything else (`RaftCore::append_to_log` awaits the log store's flush
//! callback), so each log entry holds the whole core for one `fdatasync`.
//! Handed to openraft one by one, concurrent writes each paid for a sync of
//! their own, and queued behind each other's syncs for milliseconds.
//!
//! The [`Batcher`] hands a write to openraft at once when nothing is
//! pending, then waits until openraft has appended it (and so is syncing
//! it) before handing over the next: the writes that arrive meanwhile go
//! together, as one [`Command::Batch`] entry, applied in order with a
//! response each. Under light load every write still goes alone and
//! without delay.
use openraft::error::{ClientWriteError, RaftError};
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot, watch};

use crate::raft::{Command, NodeId, Raft, Response};

/// At most this many bytes of commands share one entry (a single larger
/// command still goes, alone). Snapshots are taken every so many entries,
/// so this also bounds how much more log a batched entry can leave between
/// two snapshots.
const MAX_BATCH_BYTES: u64 = 64 << 10;

/// Why a write failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    /// openraft did not take the write (this node is not the leader, say).
    #[error("Raft did not take the write")]
    Raft(#[source] RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>),
    /// The batcher's task is gone: the node is shutting down.
    #[error("the write batcher has stopped")]
    Stopped,
    /// The batch's entry did not answer with one response per command.
    #[error("a batch of {writes} writes was answered with {answer:?}")]
    Unanswered { writes: usize, answer: Response },
}

/// The log index a write was committed at and its response.
pub type WriteResult = Result<(u64, Response), WriteError>;

type Pending = (Command, oneshot::Sender<WriteResult>);

/// The leader's write path into openraft.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the batcher of `raft`; `appends` counts the log store's
    /// appends ([`crate::raft::log_store::LogStore::appends`]).
    pub fn start(raft: Raft, appends: watch::Receiver<u64>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, appends, rx));
        Self { tx }
    }

    /// Proposes `cmd` and waits until it is committed and applied.
    pub async fn write(&self, cmd: Command) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        self.tx.send((cmd, tx)).map_err(|_| WriteError::Stopped)?;
        rx.await.unwrap_or(Err(WriteError::Stopped))
    }
}

async fn run(
    raft: Raft,
    mut appends: watch::Receiver<u64>,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    let mut next: Option<Pending> = None;
    loop {
        let first = match next.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut bytes = size(&first.0);
        let mut batch = vec![first];
        while let Ok(p) = rx.try_recv() {
            let b = size(&p.0);
            if bytes + b > MAX_BATCH_BYTES {
                next = Some(p);
                break;
            }
            bytes += b;
            batch.push(p);
        }
        let before = *appends.borrow_and_update();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let r = raft.clone();
        tokio::spawn(async move {
            submit(&r, batch).await;
            drop(done_tx);
        });
        // Until openraft has appended this batch (or the write failed
        // without an append), later writes gather in the queue.
        tokio::select! {
            _ = appends.wait_for(|n| *n != before) => {}
            _ = done_rx => {}
        }
    }
}

fn size(cmd: &Command) -> u64 {
    bincode::serialized_size(cmd).unwrap_or(MAX_BATCH_BYTES)
}

async fn submit(raft: &Raft, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let (cmd, tx) = batch.pop().expect("one write");
        let r = raft.client_write(cmd).await;
        let _ = tx.send(
            r.map(|r| (r.log_id.index, r.data))
                .map_err(WriteError::Raft),
        );
        return;
    }
    let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let n = cmds.len();
    match raft.client_write(Command::Batch(cmds)).await {
        Ok(r) => match r.data {
            Response::Batch(responses) if responses.len() == n => {
                for (tx, resp) in txs.into_iter().zip(responses) {
                    let _ = tx.send(Ok((r.log_id.index, resp)));
                }
            }
            other => {
                let e = WriteError::Unanswered {
                    writes: n,
                    answer: other,
                };
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        },
        Err(e) => {
            for tx in txs {
                let _ = tx.send(Err(WriteError::Raft(e.clone())));
            }
        }
    }
}
