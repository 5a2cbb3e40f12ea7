//! Operations a follower carries to the leader, over one long-lived
//! bidirectional stream per leader (`Peer.ForwardStream`).
//!
//! Each operation goes out as soon as it arrives, tagged with an id, and its
//! result comes back tagged the same, in whatever order the leader finishes
//! them. Nothing waits for a batch or for another operation's answer, and a
//! message costs one HTTP/2 data frame each way instead of a whole call
//! (headers, data, trailers). The leader runs the operations it receives
//! concurrently, so openraft appends those that arrive together as one
//! batch.
//!
//! When the stream breaks (the leader died, stepped down or restarted),
//! every operation still waiting on it fails with
//! [`NodeError::LeaderUnreachable`], which the node retries
//! (`Node::leader_op`), and the next operation opens a new stream.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use trellis_api::v1::peer_client::PeerClient;
use trellis_api::v1::RaftPayload;

use super::error::{Internal, NodeError, Unreachable};
use super::op::{LeaderOp, LeaderReply};
use crate::raft::NodeId;

/// Result of an operation carried to the leader; the error is a
/// [`NodeError`]'s status code and message, which the follower passes on
/// ([`NodeError::Leader`]).
pub type ForwardResult = Result<LeaderReply, (i32, String)>;

/// One operation on the stream, follower to leader.
#[derive(Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: LeaderOp,
}

/// Its result, leader to follower.
#[derive(Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub result: ForwardResult,
}

type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<LeaderReply, NodeError>>>>>>;

/// An open stream to one leader.
struct Stream {
    leader: NodeId,
    addr: String,
    tx: mpsc::UnboundedSender<RaftPayload>,
    /// Operations sent and not yet answered; `None` once the stream ended.
    waiters: Waiters,
    next_id: u64,
}

impl Stream {
    fn is_open(&self) -> bool {
        !self.tx.is_closed() && lock(&self.waiters).is_some()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The follower's side: the stream to the current leader, opened on first
/// use and again after it broke or the leader changed.
#[derive(Default)]
pub struct Forwarder {
    stream: tokio::sync::Mutex<Option<Stream>>,
}

impl Forwarder {
    /// Runs `op` on `leader` (at `addr`) and returns its result. `client`
    /// is the peer client to open a stream with, if one is needed.
    pub async fn call(
        &self,
        leader: NodeId,
        addr: &str,
        client: impl FnOnce() -> Result<PeerClient<Channel>, NodeError>,
        op: LeaderOp,
    ) -> Result<LeaderReply, NodeError> {
        let closed = || NodeError::LeaderUnreachable {
            leader,
            addr: addr.to_string(),
            cause: Arc::new(Unreachable::Closed),
        };
        let rx = {
            let mut slot = self.stream.lock().await;
            let reuse = slot
                .as_ref()
                .is_some_and(|s| s.leader == leader && s.addr == addr && s.is_open());
            if !reuse {
                *slot = Some(open(leader, addr, client()?).await?);
            }
            let s = slot.as_mut().expect("a stream");
            let id = s.next_id;
            s.next_id += 1;
            let data = bincode::serialize(&Request { id, op }).map_err(Internal::Encode)?;
            let (tx, rx) = oneshot::channel();
            match lock(&s.waiters).as_mut() {
                Some(w) => w.insert(id, tx),
                None => return Err(closed()),
            };
            if s.tx.send(RaftPayload { data }).is_err() {
                lock(&s.waiters).as_mut().map(|w| w.remove(&id));
                return Err(closed());
            }
            rx
        };
        rx.await.unwrap_or_else(|_| Err(closed()))
    }
}

/// Opens a stream to the leader and starts the task that hands its replies
/// to the waiting operations.
async fn open(
    leader: NodeId,
    addr: &str,
    mut client: PeerClient<Channel>,
) -> Result<Stream, NodeError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let replies = client
        .forward_stream(UnboundedReceiverStream::new(rx))
        .await
        .map_err(|s| stream_error(leader, addr, s))?
        .into_inner();
    let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
    let w = waiters.clone();
    let peer = addr.to_string();
    tokio::spawn(async move {
        let mut replies = replies;
        let cause = loop {
            match replies.next().await {
                Some(Ok(msg)) => match bincode::deserialize::<Reply>(&msg.data) {
                    Ok(r) => {
                        let waiter = lock(&w).as_mut().and_then(|m| m.remove(&r.id));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(r.result.map_err(|(code, msg)| {
                                NodeError::Leader(tonic::Status::new(tonic::Code::from(code), msg))
                            }));
                        }
                    }
                    Err(e) => break Unreachable::BadReply(e),
                },
                Some(Err(s)) => break Unreachable::Stream(s),
                None => break Unreachable::Ended,
            }
        };
        // Everything still waiting fails; the caller retries on a new stream.
        let cause = Arc::new(cause);
        for (_, waiter) in lock(&w).take().into_iter().flatten() {
            let _ = waiter.send(Err(NodeError::LeaderUnreachable {
                leader,
                addr: peer.clone(),
                cause: cause.clone(),
            }));
        }
    });
    Ok(Stream {
        leader,
        addr: addr.to_string(),
        tx,
        waiters,
        next_id: 0,
    })
}

fn stream_error(leader: NodeId, addr: &str, s: tonic::Status) -> NodeError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            NodeError::LeaderUnreachable {
                leader,
                addr: addr.to_string(),
                cause: Arc::new(Unreachable::Stream(s)),
            }
        }
        _ => NodeError::Leader(s),
    }
}
