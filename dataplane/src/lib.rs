//! `trellis-dataplane`: the core every Trellis data-plane binary (the
//! agent, the gateways) shares above the transport. Its layers, each
//! depending only on those before it:
//!
//! 1. [`Shared`] (a value replaced whole on update) and [`FastMap`];
//! 2. [`telemetry`]: Istio's metric labels, the metrics, the access log and
//!    Envoy's response flags;
//! 3. [`mesh`]: the view of the mesh compiled from Istio resources
//!    (services, clusters with balancing, outlier detection and locality
//!    failover, the names the DNS proxy answers), pure;
//! 4. [`tls`]: the workload's mTLS configurations, and [`identity`]: its
//!    certificate from the control plane, renewed;
//! 5. [`discovery`]: the config stream from the control plane and its
//!    cache, which swaps new mesh views in;
//! 6. [`admin`]: the admin and metrics endpoints.
//!
//! It depends on `trellis-transport`, `trellis-identity` and `trellis-api`,
//! never on the agent or a gateway: HTTP routing, the proxy pipelines and
//! capture live in the binaries that use them.
pub mod admin;
pub mod discovery;
pub mod identity;
pub mod mesh;
mod shared;
pub mod telemetry;
pub mod tls;

pub use shared::Shared;

/// The hash map for what every request looks up (services, routes,
/// clusters, pooled connections, metric series): foldhash hashes several
/// times faster than the default SipHash, and is seeded per process as
/// SipHash is.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
