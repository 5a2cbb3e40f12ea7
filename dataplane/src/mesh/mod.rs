//! [`Mesh`]: the agent's view of the mesh, compiled from Istio resources
//! (today from `--config-file`; later pushed by the control plane) into the
//! lookups the proxy makes on every connection and request: services by
//! host and by virtual IP, HTTP routes by host, clusters by host, port and
//! subset, this workload's inbound settings, and the names the DNS proxy
//! answers.
//!
//! Building is pure ([`build`]); a new view replaces the old one whole and
//! takes over its clusters' counters, so outlier ejections and load survive
//! config updates.
pub mod build;
pub mod cluster;
pub mod locality;
pub mod names;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use trellis_api::config::{HttpRoute, TcpRoute};

pub use self::build::{build, Settings};
use self::cluster::Cluster;
use self::names::NameTable;
use crate::FastMap;

/// How a port's traffic is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum AppProtocol {
    /// HTTP/1.1 to the application.
    Http1,
    /// HTTP/2 (gRPC, `http2`) to the application.
    Http2,
    /// Opaque bytes.
    Tcp,
    /// Not declared: sniffed from the first bytes.
    Unknown,
}

impl From<trellis_api::config::Protocol> for AppProtocol {
    fn from(p: trellis_api::config::Protocol) -> Self {
        use trellis_api::config::Protocol as P;
        match p {
            P::Http | P::GrpcWeb => AppProtocol::Http1,
            P::Http2 | P::Grpc => AppProtocol::Http2,
            P::Unknown => AppProtocol::Unknown,
            _ => AppProtocol::Tcp,
        }
    }
}

/// Whether the inbound side requires mTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum MtlsMode {
    Strict,
    Permissive,
}

/// What happens to traffic for a destination the mesh does not know
/// (Istio's `outboundTrafficPolicy.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum OutboundPolicy {
    /// Passed through (Istio's mesh-wide default).
    #[default]
    AllowAny,
    /// Refused: only the services of the registry are reachable.
    RegistryOnly,
}

/// A service port.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: AppProtocol,
}

/// A service: a hostname and its ports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Service {
    pub host: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub addresses: Vec<IpAddr>,
}

impl Service {
    /// How `port` is carried (unknown ports are sniffed).
    pub fn protocol(&self, port: u16) -> AppProtocol {
        self.ports
            .iter()
            .find(|p| p.number == port)
            .map_or(AppProtocol::Unknown, |p| p.protocol)
    }

    /// The port, when the service has exactly one.
    pub fn only_port(&self) -> Option<u16> {
        match self.ports.as_slice() {
            [p] => Some(p.number),
            _ => None,
        }
    }
}

/// The compiled view.
#[derive(Default)]
pub struct Mesh {
    services: FastMap<String, Arc<Service>>,
    by_addr: FastMap<SocketAddr, (Arc<Service>, u16)>,
    http: FastMap<String, Vec<HttpRoute>>,
    tcp: FastMap<String, Vec<TcpRoute>>,
    /// By host; a host has a few (ports × subsets), found by a short scan.
    clusters: FastMap<String, Vec<Arc<Cluster>>>,
    inbound: FastMap<u16, (AppProtocol, Arc<str>)>,
    mtls: MtlsSettings,
    outbound: OutboundPolicy,
    namespace: String,
    domain: String,
    /// This workload: its labels (its WorkloadGroup's and its own), as its
    /// metrics name it, and as the peer-metadata header tells it.
    labels: std::collections::BTreeMap<String, String>,
    me: Arc<crate::telemetry::labels::Workload>,
    peer_metadata: Option<http::HeaderValue>,
    dns: Arc<NameTable>,
    /// The resources this view was built from (for `/config_dump`).
    pub resources: Vec<trellis_api::config::Resource>,
}

/// This workload's PeerAuthentication, resolved.
#[derive(Clone, Debug, Default)]
struct MtlsSettings {
    default: Option<MtlsMode>,
    ports: FastMap<u16, MtlsMode>,
}

impl Mesh {
    /// The service named `host` exactly.
    pub fn service(&self, host: &str) -> Option<&Arc<Service>> {
        self.services.get(host)
    }

    /// Every service (for `/config_dump`).
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// Every cluster (for `/clusters`).
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values().flatten()
    }

    /// The clusters of `host`: one per port and subset.
    pub fn clusters_of(&self, host: &str) -> &[Arc<Cluster>] {
        self.clusters
            .get(host)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// This workload's labels: its WorkloadGroup's, and its own over them
    /// (route `sourceLabels`, PeerAuthentication selectors).
    pub fn labels(&self) -> &std::collections::BTreeMap<String, String> {
        &self.labels
    }

    /// This workload as its metrics name it.
    pub fn me(&self) -> &Arc<crate::telemetry::labels::Workload> {
        &self.me
    }

    /// [`Mesh::me`] as JSON, for the header in which an agent tells a peer
    /// who calls (`None` if it cannot be a header value).
    pub fn peer_metadata(&self) -> Option<&http::HeaderValue> {
        self.peer_metadata.as_ref()
    }

    /// The names the DNS proxy answers, with their addresses.
    pub fn dns(&self) -> &Arc<NameTable> {
        &self.dns
    }

    /// The service port a virtual IP and port stand for.
    pub fn service_by_addr(&self, addr: SocketAddr) -> Option<(&Arc<Service>, u16)> {
        self.by_addr.get(&addr).map(|(s, p)| (s, *p))
    }

    /// A name as Kubernetes DNS would expand it from this workload's
    /// namespace: `reviews` and `reviews.default` become
    /// `reviews.default.svc.cluster.local`; known names stay as they are.
    pub fn canonical_host(&self, name: &str) -> String {
        trellis_api::config::canonical_host(name, &self.namespace, &self.domain, |h| {
            self.services.contains_key(h)
        })
    }

    /// The service and port an HTTP proxy request's authority names.
    pub fn resolve(&self, authority: &str) -> Option<(Arc<str>, u16)> {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
            _ => (authority, 80),
        };
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            let (svc, port) = self.service_by_addr(SocketAddr::new(ip, port))?;
            return Some((Arc::from(svc.host.as_str()), port));
        }
        let host = self.canonical_host(host);
        self.services
            .contains_key(&host)
            .then(|| (Arc::from(host.as_str()), port))
    }

    /// The HTTP routes of the VirtualService for `host`, if there is one.
    pub fn http_routes(&self, host: &str) -> Option<&[HttpRoute]> {
        self.http.get(host).map(Vec::as_slice)
    }

    /// The subset a TCP connection to `host:port` goes to, by the
    /// VirtualService's TCP routes (empty: the whole service); `roll` is
    /// uniform in 0..100.
    pub fn tcp_subset(&self, host: &str, port: u16, roll: u32) -> String {
        let Some(routes) = self.tcp.get(host) else {
            return String::new();
        };
        let Some(r) = routes.iter().find(|r| {
            r.matches.is_empty()
                || r.matches
                    .iter()
                    .any(|m| m.port.is_none_or(|p| p == u32::from(port)))
        }) else {
            return String::new();
        };
        let total: u32 = r
            .route
            .iter()
            .map(|d| d.weight.unwrap_or(0).max(0) as u32)
            .sum();
        let mut at = if total == 0 { 0 } else { roll % total };
        for d in &r.route {
            let w = d.weight.unwrap_or(0).max(0) as u32;
            if at < w || total == 0 {
                return d.destination.subset.clone().unwrap_or_default();
            }
            at -= w;
        }
        String::new()
    }

    /// The cluster of `host:port` (or one of its subsets).
    pub fn cluster(&self, host: &str, port: u16, subset: &str) -> Option<Arc<Cluster>> {
        self.clusters
            .get(host)?
            .iter()
            .find(|c| c.port == port && c.subset == subset)
            .cloned()
    }

    /// Whether traffic for destinations the mesh does not know passes
    /// through: the `outboundTrafficPolicy` of the Sidecar that applies to
    /// this workload, else Istio's default (`ALLOW_ANY`).
    pub fn outbound_policy(&self) -> OutboundPolicy {
        self.outbound
    }

    /// Whether inbound `port` requires mTLS (Istio's default: PERMISSIVE).
    pub fn inbound_mode(&self, port: u16) -> MtlsMode {
        self.mtls
            .ports
            .get(&port)
            .copied()
            .or(self.mtls.default)
            .unwrap_or(MtlsMode::Permissive)
    }

    /// How the application's `port` speaks.
    pub fn app_protocol(&self, port: u16) -> AppProtocol {
        self.inbound
            .get(&port)
            .map_or(AppProtocol::Unknown, |(p, _)| *p)
    }

    /// The service this workload serves on `port`, for metric labels.
    pub fn inbound_service(&self, port: u16) -> Arc<str> {
        self.inbound
            .get(&port)
            .map_or_else(|| Arc::from("unknown"), |(_, s)| s.clone())
    }
}
