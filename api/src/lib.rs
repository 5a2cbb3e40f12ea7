//! Protobuf definitions and generated tonic clients and servers shared by
//! every Trellis component. The `.proto` sources live in `api/proto/`.
//!
//! The main types are the services of `trellis.v1`: [`v1::raft_server`] (Raft
//! peers), [`v1::peer_server`] (node-to-node forwarding), [`v1::join_server`]
//! (first contact with a join token), [`v1::ca_server`] (certificates) and
//! [`v1::admin_server`] (the CLI), each with its client.
//!
//! [`config`] holds the Istio-compatible configuration kinds
//! (`networking.istio.io`: VirtualService, DestinationRule, ServiceEntry,
//! WorkloadEntry, Gateway, Sidecar, WorkloadGroup; `security.istio.io`:
//! PeerAuthentication, AuthorizationPolicy, RequestAuthentication),
//! checked against Istio's published schemas and validation rules, with
//! errors and warnings that name the field. [`yaml`] reads YAML as Istio's
//! Go tools read it, and writes it back; every crate uses it. [`topology`]
//! names where things are: clusters, networks and localities, with
//! Istio's labels.

pub mod annotations;
pub mod config;
pub mod topology;
pub mod yaml;

/// `trellis.v1`: the control-plane API.
pub mod v1 {
    #![allow(clippy::all, missing_docs)] // generated code
    tonic::include_proto!("trellis.v1");
}
