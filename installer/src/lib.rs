//! The `trellis` command-line interface: talks to the control plane's admin
//! API over mTLS with the admin identity from its config file
//! ([`trellis_identity::admin_config::AdminConfig`]). [`demo`] runs a
//! whole mesh of local processes (`trellis demo`); [`vm`] joins this host
//! to the mesh (`trellis vm join|leave`).
#![forbid(unsafe_code)]

pub mod client;
pub mod commands;
pub mod config;
pub mod demo;
pub mod duration;
pub mod validate;
pub mod vm;
