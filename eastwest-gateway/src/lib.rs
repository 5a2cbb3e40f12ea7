//! `trellis-eastwest`: the east-west gateway of one network. Agents on
//! other networks reach this network's endpoints through it: it reads the
//! SNI of each incoming TLS ClientHello without terminating TLS (Istio's
//! `outbound_.PORT_.SUBSET_.HOST`), picks an endpoint of that service,
//! subset and port on its own network ([`route`]), and splices the bytes
//! both ways ([`proxy`]), so mTLS stays end to end between the two
//! workloads: the gateway holds no workload key, and a client that expects
//! identity X refuses an endpoint that presents Y.
//!
//! It gets its own certificate with a gateway token (its identity names
//! its network) and its network's endpoints from the control plane as an
//! agent does, with the shared data-plane crates (`trellis-transport`,
//! `trellis-dataplane`), never the agent's ([`start`]); its flags are in
//! [`options`].
pub mod options;
pub mod proxy;
pub mod route;
pub mod start;

pub use options::Options;
pub use start::run;
