//! Errors of control-plane operations, and how they reach API callers:
//! each says whether to retry elsewhere (no leader, leader unreachable) or
//! give up (invalid input, refused, not allowed).
use tonic::{Code, Status};

#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    /// No leader is known yet (election in progress): retry shortly.
    #[error("no Raft leader is known yet (election in progress?); retry in a moment")]
    NoLeader,
    /// This node is not the leader and could not reach the one it knows.
    #[error("cannot reach the leader {leader} at {addr}: {reason}; retry, or ask another node")]
    LeaderUnreachable {
        leader: u64,
        addr: String,
        reason: String,
    },
    /// The store refused the command (a bad token, say); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller did not authenticate.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's identity may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// Too many failed attempts from this peer.
    #[error("{0}")]
    Throttled(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Raft or storage failed; details in the message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        let code = match &e {
            NodeError::NoLeader | NodeError::LeaderUnreachable { .. } => Code::Unavailable,
            NodeError::Refused(_) => Code::FailedPrecondition,
            NodeError::InvalidArgument(_) => Code::InvalidArgument,
            NodeError::Unauthenticated(_) => Code::Unauthenticated,
            NodeError::PermissionDenied(_) => Code::PermissionDenied,
            NodeError::Throttled(_) => Code::ResourceExhausted,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl From<Status> for NodeError {
    /// A status from a peer that carried our request, mapped back.
    fn from(s: Status) -> NodeError {
        let m = s.message().to_string();
        match s.code() {
            Code::FailedPrecondition => NodeError::Refused(m),
            Code::InvalidArgument => NodeError::InvalidArgument(m),
            Code::Unauthenticated => NodeError::Unauthenticated(m),
            Code::PermissionDenied => NodeError::PermissionDenied(m),
            Code::ResourceExhausted => NodeError::Throttled(m),
            Code::NotFound => NodeError::NotFound(m),
            Code::Unavailable => NodeError::NoLeader,
            _ => NodeError::Internal(m),
        }
    }
}
