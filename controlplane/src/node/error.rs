//! Errors of control-plane operations, and how they reach API callers.
//!
//! Each [`NodeError`] says whether to retry (no leader, leader unreachable,
//! throttled: [`NodeError::code`] is `Unavailable` or `ResourceExhausted`)
//! or give up (refused, invalid input, not found, internal), and carries
//! its cause as a typed source. An API caller gets the whole chain as the
//! status message ([`NodeError::message`]).
use std::string::FromUtf8Error;
use std::sync::Arc;

use openraft::error::{ChangeMembershipError, Fatal};
use tonic::{Code, Status};
use trellis_identity::IdentityError;
use trellis_kubernetes::tokenreview::ReviewError;

use super::op::LeaderReply;
use crate::ca::CaError;
use crate::raft::batch::WriteError;
use crate::raft::{NodeId, Response};
use crate::tokens::{TokenError, TokenParseError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    // Retry.
    /// No leader is known yet (election in progress): retry shortly.
    #[error("no Raft leader is known yet (election in progress?); retry in a moment")]
    NoLeader,
    /// This node is not the leader and could not reach the one it knows.
    #[error("cannot reach the leader {leader} at {addr} (retry, or ask another node)")]
    LeaderUnreachable {
        leader: NodeId,
        addr: String,
        #[source]
        cause: Arc<Unreachable>,
    },
    /// Too many failed token attempts from this peer: retry later.
    #[error(transparent)]
    Throttled(TokenError),

    // Give up.
    /// The store refused the command, with its reason; nothing changed.
    /// The reason is text: it is the state machine's answer, which may
    /// come from the leader over the forwarding stream.
    #[error("{0}")]
    Refused(String),
    /// The token is for another mesh.
    #[error(
        "token {id} pins another mesh's root certificate; create a token on this mesh with \
         `trellis token create`"
    )]
    ForeignToken { id: String },
    /// openraft refused a membership change (another one is in progress,
    /// say).
    #[error("the membership change was refused")]
    Membership(#[source] ChangeMembershipError<NodeId>),
    /// The token does not parse.
    #[error(transparent)]
    BadToken(TokenParseError),
    /// A pod's service-account token gives no identity, or this node's
    /// API server could not review it.
    #[error(transparent)]
    PodToken(ReviewError),
    /// A pod's token, presented to a node outside Kubernetes.
    #[error(
        "this control-plane node does not run in a Kubernetes cluster (it has no --kubernetes), \
         so it cannot review a pod's token: present it to a control-plane node of the pod's \
         own cluster"
    )]
    NotInKubernetes,
    /// The node to remove is not a member.
    #[error("node {0} is not a member; `trellis controlplane members` lists them")]
    NotMember(NodeId),
    /// This node failed: Raft, the store, or data it cannot read.
    #[error("internal error")]
    Internal(#[source] Box<Internal>),
    /// The leader answered an operation carried to it with this error; its
    /// code says whether to retry.
    #[error("{}", .0.message())]
    Leader(Status),
}

/// Why the forwarding stream to the leader failed.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("the forwarding stream closed")]
    Closed,
    #[error("the leader ended the forwarding stream")]
    Ended,
    #[error("the leader's reply does not decode (is it another Trellis version?)")]
    BadReply(#[source] bincode::Error),
    /// The stream could not be opened, or it failed.
    #[error("{}", .0.message())]
    Stream(Status),
}

/// How a node failed; nothing the caller can fix.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    #[error("this node has no mesh record yet; it is still catching up with the leader")]
    NoMeshRecord,
    #[error("the CA key does not open the mesh's root key")]
    RootKey(#[source] CaError),
    #[error("the mesh's root key is not text")]
    RootKeyText(#[source] FromUtf8Error),
    #[error(
        "this node holds no CA key (it joined a cluster as a learner), so it cannot sign \
         intermediates; only voters do"
    )]
    NoCaKey,
    #[error("cannot sign the joining node's intermediate CA")]
    SignIntermediate(#[source] CaError),
    #[error("the mesh's root CA cannot be loaded")]
    RootCa(#[source] CaError),
    #[error("the mesh's root certificate cannot be read")]
    RootCert(#[source] IdentityError),
    #[error("cannot make a client for the peer at {addr}")]
    PeerClient {
        addr: String,
        #[source]
        source: IdentityError,
    },
    #[error("Raft stopped on this node; see its log")]
    Raft(#[source] Fatal<NodeId>),
    #[error("the write did not complete")]
    Write(#[source] WriteError),
    #[error("cannot encode the operation for the leader")]
    Encode(#[source] bincode::Error),
    #[error("unexpected reply from the leader: {0:?}")]
    UnexpectedReply(Box<LeaderReply>),
    #[error("unexpected response from the store: {0:?}")]
    UnexpectedResponse(Box<Response>),
}

impl NodeError {
    /// The status code an API caller gets: `Unavailable` and
    /// `ResourceExhausted` say retry (elsewhere, or later), the others give
    /// up.
    pub fn code(&self) -> Code {
        match self {
            NodeError::NoLeader
            | NodeError::LeaderUnreachable { .. }
            | NodeError::PodToken(ReviewError::Api(_)) => Code::Unavailable,
            NodeError::Throttled(_) => Code::ResourceExhausted,
            NodeError::Refused(_)
            | NodeError::ForeignToken { .. }
            | NodeError::Membership(_)
            | NodeError::PodToken(ReviewError::Refused(_))
            | NodeError::NotInKubernetes => Code::FailedPrecondition,
            NodeError::BadToken(_) => Code::InvalidArgument,
            NodeError::NotMember(_) => Code::NotFound,
            NodeError::Internal(_) => Code::Internal,
            NodeError::Leader(s) => s.code(),
        }
    }

    /// Whether the leader may be reached on another try (an election, a
    /// leader that restarted): what [`Node::leader_op`](super::Node::leader_op)
    /// retries.
    pub fn is_retryable(&self) -> bool {
        self.code() == Code::Unavailable
    }

    /// Whether the caller's input was refused, as a wrong token is: what
    /// counts against a peer's throttle.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self.code(),
            Code::FailedPrecondition | Code::InvalidArgument
        )
    }

    /// The error and its causes, for an API caller or a log.
    pub fn message(&self) -> String {
        trellis_identity::grpc::error_chain(self)
    }
}

impl From<Internal> for NodeError {
    fn from(e: Internal) -> NodeError {
        NodeError::Internal(Box::new(e))
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        Status::new(e.code(), e.message())
    }
}

#[cfg(test)]
mod tests {
    use trellis_kubernetes::tokenreview::Refusal;

    use super::*;

    #[test]
    fn the_code_says_retry_or_give_up_and_the_message_carries_the_cause() {
        let unreachable = NodeError::LeaderUnreachable {
            leader: 2,
            addr: "10.0.0.2:15012".into(),
            cause: Arc::new(Unreachable::Closed),
        };
        // (error, code, retried by leader_op, counted by the throttle, message)
        let cases = [
            (
                NodeError::NoLeader,
                Code::Unavailable,
                true,
                false,
                "no Raft leader is known yet (election in progress?); retry in a moment",
            ),
            (
                unreachable,
                Code::Unavailable,
                true,
                false,
                "cannot reach the leader 2 at 10.0.0.2:15012 (retry, or ask another node): \
                 the forwarding stream closed",
            ),
            (
                NodeError::Leader(Status::unavailable("no leader on the leader")),
                Code::Unavailable,
                true,
                false,
                "no leader on the leader",
            ),
            (
                NodeError::Throttled(TokenError::Throttled {
                    retry_after_secs: 30,
                }),
                Code::ResourceExhausted,
                false,
                false,
                "too many failed join attempts from this address; retry in 30s, \
                 after checking the token (a wrong token will keep failing)",
            ),
            (
                NodeError::Refused("token id t1 already exists".into()),
                Code::FailedPrecondition,
                false,
                true,
                "token id t1 already exists",
            ),
            (
                NodeError::BadToken(TokenParseError::NotATrellisToken),
                Code::InvalidArgument,
                false,
                true,
                "this is not a Trellis join token; tokens start with `trellis1.` \
                 and are printed by `trellis token create`",
            ),
            (
                NodeError::Leader(Status::invalid_argument("bad token")),
                Code::InvalidArgument,
                false,
                true,
                "bad token",
            ),
            (
                NodeError::PodToken(ReviewError::Refused(Refusal::NotAServiceAccount(
                    "alice".into(),
                ))),
                Code::FailedPrecondition,
                false,
                true,
                "the token authenticates `alice`, which is not a service account \
                 (system:serviceaccount:NS:SA)",
            ),
            (
                NodeError::NotInKubernetes,
                Code::FailedPrecondition,
                false,
                true,
                "this control-plane node does not run in a Kubernetes cluster (it has no \
                 --kubernetes), so it cannot review a pod's token: present it to a \
                 control-plane node of the pod's own cluster",
            ),
            (
                NodeError::NotMember(4),
                Code::NotFound,
                false,
                false,
                "node 4 is not a member; `trellis controlplane members` lists them",
            ),
            (
                Internal::NoMeshRecord.into(),
                Code::Internal,
                false,
                false,
                "internal error: this node has no mesh record yet; it is still catching up \
                 with the leader",
            ),
        ];
        for (e, code, retry, refusal, message) in cases {
            assert_eq!(
                (e.code(), e.is_retryable(), e.is_refusal()),
                (code, retry, refusal),
                "{e:?}"
            );
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
