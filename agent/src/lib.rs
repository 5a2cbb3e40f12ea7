//! `trellis-agent`: the proxy that runs beside every workload.
//!
//! One process per workload or host. Its layers, each using only those
//! below it:
//!
//! - `trellis-transport` (listeners, connect, sniffing, splice) and
//!   `trellis-dataplane` (the mesh model, telemetry, the certificate and
//!   discovery clients, the admin server), shared with the gateways;
//! - [`route`]: pure HTTP route selection and the retry policy;
//! - [`proxy`]: the mTLS proxy pipelines (inbound on 15006, outbound on
//!   15001 and per-upstream ports) over connection pools;
//! - [`dns`]: the DNS proxy (15053), and [`capture`]: iptables or
//!   nftables rules;
//! - the wiring: [`Options`] and [`run`], which starts them in named
//!   steps ([`start`]) and drains them on SIGTERM, or hands its sockets
//!   to a new agent process and drains on SIGHUP ([`restart`]).
pub mod capture;
pub mod dns;
pub mod options;
pub mod proxy;
pub mod restart;
pub mod route;
mod start;

pub use options::Options;
pub use start::{install_capture_only, load_config, run, StartError};
