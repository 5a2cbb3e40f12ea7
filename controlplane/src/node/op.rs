//! [`LeaderOp`]: what a node runs on the leader (here when it leads, else
//! carried there over the forwarding stream), and the [`LeaderReply`].
use serde::{Deserialize, Serialize};

use crate::raft::{Command, NodeId, Response};

/// An operation that must run on the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderOp {
    Write(Command),
    Read {
        key: String,
    },
    AddNode {
        id: NodeId,
        addr: String,
        learner: bool,
    },
    RemoveNode {
        id: NodeId,
    },
    /// Writes `join` (a [`Command::JoinCluster`] under [`Command::Once`])
    /// and, if the store accepts it, signs the node's intermediate CSR
    /// with the root: on the leader, a voter, which holds the CA key.
    JoinCluster {
        join: Command,
        csr_pem: String,
    },
}

/// The leader's answer to a [`LeaderOp`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderReply {
    Written {
        index: u64,
        response: Response,
    },
    Read(Option<Vec<u8>>),
    Done,
    /// The store's answer to a cluster join and, if it was accepted, the
    /// node's intermediate certificate.
    ClusterJoined {
        response: Response,
        intermediate_cert_pem: String,
    },
}
