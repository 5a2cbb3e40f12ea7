//! [`BootstrapError`]: why a node could not be created, joined or started,
//! each saying what to check.
use std::path::PathBuf;
use std::string::FromUtf8Error;

use openraft::error::{Fatal, InitializeError, RaftError};
use openraft::BasicNode;
use trellis_api::topology::TopologyError;
use trellis_identity::csr::CsrGenError;
use trellis_identity::IdentityError;

use super::local::LocalStateError;
use crate::ca::CaError;
use crate::raft::{NodeId, StartError};
use crate::tokens::TokenParseError;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    // The CA key.
    #[error(
        "no CA key: pass --ca-key-file FILE or set TRELLIS_CA_KEY (the key printed by \
         `trellis-controlplane init`, also in its DATA_DIR/ca.key)"
    )]
    NoCaKey,
    /// The CA key given cannot be read or is not a key.
    #[error(transparent)]
    CaKey(CaError),
    #[error("cannot write the new CA key to {}", .path.display())]
    WriteCaKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the CA key given to this node is not this mesh's CA key; pass the key of the \
         first node (its DATA_DIR/ca.key) with --ca-key-file or TRELLIS_CA_KEY"
    )]
    WrongCaKey,
    /// `--kubernetes` names no API server this node can use.
    #[error("Kubernetes API server: {0:#}")]
    Kubernetes(anyhow::Error),
    #[error("the CA key does not open this mesh's root key")]
    RootKey(#[source] CaError),

    // Creating a node.
    #[error("--trust-domain: {reason}")]
    TrustDomain { reason: String },
    /// A cluster or network name, the domain or a locality.
    #[error("{flag}: {reason}")]
    Topology {
        flag: &'static str,
        reason: TopologyError,
    },
    #[error("cannot create the data directory {}", .path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The root, an intermediate or a certificate could not be made or
    /// loaded.
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot make this node's intermediate CA key and request")]
    Csr(#[source] CsrGenError),
    #[error(transparent)]
    Local(#[from] LocalStateError),

    // Joining.
    #[error(transparent)]
    Token(#[from] TokenParseError),
    #[error("{addr} refused the join: {}", .status.message())]
    JoinRefused { addr: String, status: tonic::Status },
    #[error("the root certificate sent by {addr} does not match the token's pin; not joining")]
    RootPin { addr: String },
    #[error(
        "{flag} is for cluster tokens (`trellis token create --kind cluster`); this is a \
         control-plane token, whose node joins the cluster of the node it joins through"
    )]
    ClusterFlag { flag: &'static str },
    #[error(
        "a cluster's learner holds no CA key: drop --ca-key-file / TRELLIS_CA_KEY, or join \
         with --voter (a voter needs the mesh's CA key to sign intermediates)"
    )]
    LearnerCaKey,

    // Starting.
    #[error("node.json: sealed_intermediate_key is not base64")]
    SealedKeyEncoding(#[source] base64::DecodeError),
    #[error("the CA key does not open this node's intermediate key (in node.json)")]
    IntermediateKey(#[source] CaError),
    #[error("node.json: the intermediate key does not unseal to text")]
    IntermediateKeyText(#[source] FromUtf8Error),
    /// Certificates, keys or TLS settings (the serving certificate, the
    /// root, the peers' verifier), or the control plane out of reach.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Raft(Box<StartError>),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make this node the first member of the mesh")]
    Initialize(#[source] Box<RaftError<NodeId, InitializeError<NodeId, BasicNode>>>),
    #[error("Raft stopped")]
    RaftStopped(#[source] Box<Fatal<NodeId>>),
    #[error("Raft did not shut down cleanly")]
    Shutdown(#[source] tokio::task::JoinError),
}

impl From<StartError> for BootstrapError {
    fn from(e: StartError) -> Self {
        BootstrapError::Raft(Box::new(e))
    }
}
