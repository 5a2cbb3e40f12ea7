//! `trellis-controlplane`: the Raft-replicated control plane of Trellis.
//!
//! A node holds a replica of the mesh's store ([`raft`]: openraft over sled,
//! peers over tonic with mTLS), runs the mesh certificate authority ([`ca`]:
//! root → per-node intermediate → leaf, keys sealed at rest) and checks join
//! tokens ([`tokens`]). It stores the mesh's Istio configuration
//! ([`config`]) and the workloads that register themselves ([`discovery`]),
//! and streams to every agent what concerns it ([`push`]).
//! [`node::Node`] is a running node and the operations
//! its gRPC services ([`api`]) call; [`bootstrap`] starts one (`init`,
//! `join`, `run`).
#![forbid(unsafe_code)]

pub mod api;
pub mod bootstrap;
pub mod ca;
pub mod config;
pub mod discovery;
pub mod node;
pub mod push;
pub mod raft;
pub mod tokens;
