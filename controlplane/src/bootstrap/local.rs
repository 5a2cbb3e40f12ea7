//! What a node keeps for itself in its data directory (`node.json`): its
//! id, address, trust domain, cluster, network and locality, root
//! certificate and its intermediate CA, the intermediate's key sealed with
//! the CA key. Everything the mesh shares is in the replicated store
//! instead (the node's cluster too, so that every node can list who
//! belongs where).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::raft::MeshInfo;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalState {
    pub node_id: u64,
    pub trust_domain: String,
    /// The address peers and clients reach this node at.
    pub address: String,
    pub root_cert_pem: String,
    pub intermediate_cert_pem: String,
    /// Base64 of the intermediate CA key sealed with the CA key.
    pub sealed_intermediate_key: String,
    /// Set on the first node until the mesh record is in the store (so a
    /// crash during `init` is finished at the next start).
    #[serde(default)]
    pub pending_mesh: Option<MeshInfo>,
    /// The DNS domain `init` was given, with `pending_mesh`.
    #[serde(default)]
    pub pending_domain: Option<String>,
    /// The cluster this node belongs to, and that cluster's network.
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub network: String,
    /// `region/zone/subzone`, possibly empty.
    #[serde(default)]
    pub locality: String,
    /// Whether the cluster has added this node (false between `join` and
    /// the leader accepting it; the node asks again at start).
    #[serde(default)]
    pub joined: bool,
    /// Control-plane addresses known at join time, to ask to be added.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Join as a non-voting learner.
    #[serde(default)]
    pub learner: bool,
    /// The CA key (DATA_DIR/ca.key) seals only this node's intermediate
    /// key: the node joined a cluster as a learner and never held the key
    /// that unseals the mesh's root key.
    #[serde(default)]
    pub own_key_only: bool,
}

impl LocalState {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("node.json")
    }

    pub fn exists(data_dir: &Path) -> bool {
        Self::path(data_dir).exists()
    }

    pub fn load(data_dir: &Path) -> Result<Self, LocalStateError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(source) => return Err(LocalStateError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| LocalStateError::Parse { path, source })
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), LocalStateError> {
        let text = serde_json::to_vec_pretty(self).expect("the local state serializes to JSON");
        let path = Self::path(data_dir);
        trellis_identity::files::write_private(&path, &text)
            .map_err(|source| LocalStateError::Write { path, source })
    }
}

/// Why `node.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LocalStateError {
    #[error("cannot read {} (is this a Trellis data directory?)", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a node's state (written by another Trellis version?)", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
