//! Compiling Istio resources into a [`Mesh`]: pure, deterministic, and
//! total (resources were validated when parsed; what still cannot be used,
//! such as a WorkloadEntry with a DNS name, is skipped with a log line).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use trellis_api::annotations;
use trellis_api::config::{
    self, binds_mesh, canonical_host as canonical, DestinationRule, H2UpgradePolicy, HttpSettings,
    Location, OutlierDetection, Resource, ServiceEntry, SimpleLb, Spec, TrafficPolicy,
    WorkloadEntry,
};
use trellis_api::topology::{self, Locality};
use trellis_identity::SpiffeId;

use trellis_transport::connect::Keepalive;

use super::cluster::{Cluster, Endpoint, HashOn, LbPolicy, Limits, OutlierConfig, PlainHttp};
use super::locality::{Place, Plan};
use super::names::NameTable;
use super::{AppProtocol, Mesh, MtlsMode, MtlsSettings, OutboundPolicy, Service, ServicePort};
use crate::telemetry::labels::Workload;
use crate::FastMap;

/// What the view depends on besides the resources.
#[derive(Clone, Debug)]
pub struct Settings {
    pub trust_domain: String,
    /// Kubernetes cluster domain for short names (`cluster.local`).
    pub domain: String,
    /// This workload's namespace and labels (PeerAuthentication selectors,
    /// short names, `sourceLabels`).
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// This workload's addresses: endpoints at one of them are this
    /// workload, which tells the inbound side its services' ports.
    pub addresses: Vec<IpAddr>,
    /// The port every agent's inbound listener is on.
    pub peer_inbound_port: u16,
    /// Where this workload is: its cluster and network (empty when
    /// neither its flags nor the control plane said) and its locality.
    pub cluster: String,
    pub network: String,
    pub locality: Locality,
    /// This workload's SPIFFE ID, and its name in metrics when given
    /// (`--workload`; else its `app` label, else its service account).
    pub principal: String,
    pub workload_name: Option<String>,
    /// The WorkloadGroup (in `namespace`) this workload registered in:
    /// its labels are this workload's too, under those of `labels`.
    pub workload_group: Option<String>,
}

/// Istio's root namespace: a PeerAuthentication there applies mesh-wide.
const ROOT_NAMESPACE: &str = "istio-system";
/// Label that says a workload has no agent and speaks plaintext.
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Compiles `resources`; counters of clusters in `prev` carry over.
pub fn build(resources: Vec<Resource>, s: &Settings, prev: Option<&Mesh>) -> Mesh {
    let mut resources = resources;
    resources.sort_by(|a, b| {
        (a.kind(), &a.metadata.namespace, &a.metadata.name).cmp(&(
            b.kind(),
            &b.metadata.namespace,
            &b.metadata.name,
        ))
    });
    let labels = own_labels(&resources, s);
    let me = Workload::new(
        &s.principal,
        &s.namespace,
        s.workload_name.as_deref(),
        &labels,
    );
    let mut mesh = Mesh {
        namespace: s.namespace.clone(),
        domain: s.domain.clone(),
        peer_metadata: serde_json::to_string(&me)
            .ok()
            .and_then(|j| http::HeaderValue::from_str(&j).ok())
            .or_else(|| {
                tracing::warn!(?labels, "this workload's labels do not fit in the peer-metadata header; peers will not see them");
                None
            }),
        me: Arc::new(me),
        ..Default::default()
    };
    // (namespace, entry, whether it takes traffic: a registered workload
    // failing its probe does not, but still tells its own agent its ports;
    // the east-west gateway it is reached through, on another network)
    let workload_entries: Vec<(&str, &WorkloadEntry, bool, Option<SocketAddr>, &str)> = resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(we) => Some((
                r.metadata.namespace.as_str(),
                we.as_ref(),
                r.metadata
                    .annotations
                    .get(annotations::HEALTH)
                    .is_none_or(|h| h == annotations::READY),
                r.metadata
                    .annotations
                    .get(annotations::GATEWAY)
                    .and_then(|a| a.parse().ok()),
                r.metadata.name.as_str(),
            )),
            _ => None,
        })
        .collect();
    // The entries each host took by selector: a WorkloadEntry selected by
    // two ServiceEntries of one host (a VM service and a Kubernetes
    // Service of the same name, or one Service in two clusters) is one
    // endpoint of it, with the ports of the first.
    let mut selected: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut endpoints: HashMap<String, Vec<(ServiceEntryRef, WorkloadEntry, Option<SocketAddr>)>> =
        HashMap::new();
    for r in &resources {
        let Spec::ServiceEntry(se) = &r.spec else {
            continue;
        };
        let ns = r.metadata.namespace.as_str();
        let inline: Vec<(WorkloadEntry, bool, Option<SocketAddr>)> = se
            .endpoints
            .iter()
            .map(|we| (we.clone(), true, None))
            .collect();
        let chosen: Vec<_> = match &se.workload_selector {
            Some(sel) => workload_entries
                .iter()
                .filter(|(wns, we, _, _, _)| {
                    *wns == ns && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v))
                })
                .collect(),
            None => Vec::new(),
        };
        let vips = allocated_addresses(r);
        for host in &se.hosts {
            let mut eps = inline.clone();
            eps.extend(
                chosen
                    .iter()
                    .filter(|(wns, _, _, _, name)| selected.insert((host.as_str(), wns, name)))
                    .map(|(_, we, ready, via, _)| ((*we).clone(), *ready, *via)),
            );
            let svc = service(host, ns, se, &vips);
            for ip in &svc.addresses {
                for p in &svc.ports {
                    mesh.by_addr
                        .insert(SocketAddr::new(*ip, p.number), (svc.clone(), p.number));
                }
            }
            // An entry reached through a gateway has the gateway's address:
            // never this workload's.
            for (we, _, _) in eps.iter().filter(|(_, _, via)| via.is_none()) {
                mark_inbound(&mut mesh, s, &svc, se, we);
            }
            endpoints.entry(host.clone()).or_default().extend(
                eps.iter()
                    .filter(|(_, ready, _)| *ready)
                    .map(|(we, _, via)| {
                        (
                            ServiceEntryRef {
                                namespace: ns.to_string(),
                                external: se.location == Some(Location::MeshExternal),
                                ports: se.ports.clone(),
                            },
                            we.clone(),
                            *via,
                        )
                    }),
            );
            mesh.services.entry(host.clone()).or_insert(svc);
        }
    }
    // A service without an address (a headless Kubernetes Service) is
    // answered as Kubernetes DNS answers it: with the addresses of its
    // ready endpoints, those reached directly (not through a gateway).
    let headless: Vec<Service> = mesh
        .services
        .values()
        .filter(|svc| svc.addresses.is_empty())
        .filter_map(|svc| {
            let mut addresses: Vec<IpAddr> = endpoints
                .get(&svc.host)?
                .iter()
                .filter(|(_, _, via)| via.is_none())
                .filter_map(|(_, we, _)| we.address.parse().ok())
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            Some(Service {
                addresses,
                ..Service::clone(svc)
            })
        })
        .collect();
    mesh.dns = Arc::new(NameTable::new(
        mesh.services.values().map(AsRef::as_ref).chain(&headless),
        &s.namespace,
        &s.domain,
    ));
    let known = |h: &str| mesh.services.contains_key(h);
    let mut rules: HashMap<String, &DestinationRule> = HashMap::new();
    for r in &resources {
        match &r.spec {
            // Bound to gateways only: not the agents' routes.
            Spec::VirtualService(vs) if binds_mesh(&vs.gateways) => {
                let ns = &r.metadata.namespace;
                let mut http = mesh_routes(&vs.http, |r| &mut r.matches, |m| &m.gateways);
                let tcp = mesh_routes(&vs.tcp, |r| &mut r.matches, |m| &m.gateways);
                for route in &mut http {
                    for d in &mut route.route {
                        d.destination.host = canonical(&d.destination.host, ns, &s.domain, known);
                    }
                    if let Some(m) = &mut route.mirror {
                        m.host = canonical(&m.host, ns, &s.domain, known);
                    }
                    for m in &mut route.mirrors {
                        m.destination.host = canonical(&m.destination.host, ns, &s.domain, known);
                    }
                }
                for host in &vs.hosts {
                    let host = canonical(host, ns, &s.domain, known);
                    if !vs.http.is_empty() {
                        mesh.http
                            .entry(host.clone())
                            .or_insert_with(|| http.clone());
                    }
                    if !tcp.is_empty() {
                        mesh.tcp.entry(host).or_insert_with(|| tcp.clone());
                    }
                }
            }
            Spec::DestinationRule(dr) => {
                let host = canonical(&dr.host, &r.metadata.namespace, &s.domain, known);
                rules.entry(host).or_insert(dr);
            }
            _ => {}
        }
    }
    mesh.mtls = peer_authentication(&resources, s, &labels);
    mesh.outbound = outbound_policy(&resources, s, &labels);
    mesh.labels = labels;
    let mut hosts: Vec<&String> = mesh.services.keys().collect();
    hosts.sort();
    let mut clusters: FastMap<String, Vec<Arc<Cluster>>> = FastMap::default();
    let origin = Place {
        locality: &s.locality,
        network: &s.network,
        cluster: &s.cluster,
        labels: &mesh.labels,
    };
    for host in hosts {
        let svc = &mesh.services[host];
        let eps = endpoints.get(host).map(Vec::as_slice).unwrap_or_default();
        let dr = rules.get(host).copied();
        for p in &svc.ports {
            let subsets = std::iter::once(None)
                .chain(dr.into_iter().flat_map(|d| d.subsets.iter().map(Some)));
            for subset in subsets {
                let labels = subset.map(|ss| &ss.labels);
                let members: Vec<Endpoint> = eps
                    .iter()
                    .filter(|(_, we, _)| {
                        labels.is_none_or(|l| l.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
                    })
                    .filter_map(|(se, we, via)| endpoint(s, se, we, *via, p))
                    .collect();
                let policy = merged_policy(
                    dr.and_then(|d| d.traffic_policy.as_ref()),
                    subset.and_then(|ss| ss.traffic_policy.as_ref()),
                    p.number,
                );
                let name = subset.map(|ss| ss.name.as_str()).unwrap_or("");
                let plan = locality_plan(&policy, &origin, &members);
                let mut c = Cluster::new(
                    host,
                    p.number,
                    name,
                    members,
                    lb_policy(&policy),
                    limits(&policy, p.protocol),
                    outlier(&policy),
                )
                .with_locality(plan);
                if let Some(old) = prev.and_then(|m| m.cluster(host, p.number, name)) {
                    c.adopt(&old);
                }
                clusters.entry(host.clone()).or_default().push(Arc::new(c));
            }
        }
    }
    mesh.clusters = clusters;
    mesh.resources = resources;
    mesh
}

struct ServiceEntryRef {
    namespace: String,
    external: bool,
    ports: Vec<config::ServicePort>,
}

/// The virtual IPs the control plane allocated to a ServiceEntry's hosts
/// (it had no `addresses`), by host.
fn allocated_addresses(r: &Resource) -> HashMap<&str, IpAddr> {
    r.metadata
        .annotations
        .get(annotations::ADDRESSES)
        .map(|a| {
            a.split(',')
                .filter_map(|pair| {
                    let (h, ip) = pair.split_once('=')?;
                    Some((h, ip.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn service(host: &str, ns: &str, se: &ServiceEntry, vips: &HashMap<&str, IpAddr>) -> Arc<Service> {
    Arc::new(Service {
        host: host.to_string(),
        namespace: ns.to_string(),
        ports: se
            .ports
            .iter()
            .map(|p| ServicePort {
                number: p.number as u16,
                name: p.name.clone(),
                protocol: p.protocol().into(),
            })
            .collect(),
        addresses: se
            .addresses
            .iter()
            .filter_map(|a| a.parse().ok())
            .chain(vips.get(host).copied())
            .collect(),
    })
}

/// The port `we` serves service port `p` on: its own mapping by port name,
/// else the port's `targetPort`, else the port itself.
/// The routes of a VirtualService bound to the mesh that apply to the
/// agents: a match block naming `gateways` replaces the VirtualService's
/// own and counts only if `mesh` is among them; a route whose every block
/// is another gateway's is left out (a route with no blocks takes all).
fn mesh_routes<R: Clone, M>(
    routes: &[R],
    matches: impl Fn(&mut R) -> &mut Vec<M>,
    gateways: impl Fn(&M) -> &Vec<String>,
) -> Vec<R> {
    let mut out = routes.to_vec();
    out.retain_mut(|r| {
        let blocks = matches(r);
        if blocks.is_empty() {
            return true;
        }
        blocks.retain(|m| binds_mesh(gateways(m)));
        !blocks.is_empty()
    });
    out
}

fn target_port(we: &WorkloadEntry, p: &config::ServicePort) -> u16 {
    we.ports
        .get(&p.name)
        .copied()
        .or(p.target_port)
        .unwrap_or(p.number) as u16
}

fn mark_inbound(
    mesh: &mut Mesh,
    s: &Settings,
    svc: &Arc<Service>,
    se: &ServiceEntry,
    we: &WorkloadEntry,
) {
    let Ok(ip) = we.address.parse::<IpAddr>() else {
        return;
    };
    if !s.addresses.contains(&ip) {
        return;
    }
    for p in &se.ports {
        mesh.inbound
            .entry(target_port(we, p))
            .or_insert_with(|| (p.protocol().into(), Arc::from(svc.host.as_str())));
    }
}

/// The endpoint `we` of service port `p`; `via`: the east-west gateway
/// it is reached through (it is on another network), with mTLS to it.
fn endpoint(
    s: &Settings,
    se: &ServiceEntryRef,
    we: &WorkloadEntry,
    via: Option<SocketAddr>,
    p: &ServicePort,
) -> Option<Endpoint> {
    let Ok(ip) = we.address.parse::<IpAddr>() else {
        tracing::warn!(address = %we.address, "skipping an endpoint that is not an IP address (DNS endpoints are not supported yet)");
        return None;
    };
    let cfg_port = se.ports.iter().find(|sp| sp.number as u16 == p.number)?;
    let target = target_port(we, cfg_port);
    let plaintext = via.is_none()
        && (se.external
            || we
                .labels
                .get(TLS_MODE_LABEL)
                .is_some_and(|m| m == "disabled"));
    let sa = we
        .service_account
        .clone()
        .unwrap_or_else(|| "default".into());
    let identity = (!plaintext).then(|| SpiffeId::workload(&s.trust_domain, &se.namespace, &sa));
    let workload = Workload {
        workload: we.labels.get("app").cloned().unwrap_or_default(),
        namespace: se.namespace.clone(),
        principal: identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
        app: we.labels.get("app").cloned().unwrap_or_default(),
        version: we.labels.get("version").cloned().unwrap_or_default(),
    };
    Some(Endpoint {
        addr: via.unwrap_or_else(|| {
            SocketAddr::new(
                ip,
                if plaintext {
                    target
                } else {
                    s.peer_inbound_port
                },
            )
        }),
        target_port: target,
        identity,
        peer: None,
        labels: we.labels.clone(),
        workload: Arc::new(workload),
        weight: we.weight.unwrap_or(1),
        network: topology::network_of(we.network.as_deref(), &we.labels).into(),
        locality: Locality::of_entry(we.locality.as_deref(), &we.labels),
        state: Arc::default(),
    })
}

/// The effective traffic policy of a cluster: the rule's, then its settings
/// for this port, then the subset's, each later one overriding per field.
fn merged_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u16,
) -> TrafficPolicy {
    let mut out = TrafficPolicy::default();
    for p in [top, subset].into_iter().flatten() {
        overlay(
            &mut out,
            p.load_balancer.clone(),
            p.connection_pool.clone(),
            p.outlier_detection.clone(),
        );
        if let Some(pl) = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.is_some_and(|x| x.number == u32::from(port)))
        {
            overlay(
                &mut out,
                pl.load_balancer.clone(),
                pl.connection_pool.clone(),
                pl.outlier_detection.clone(),
            );
        }
    }
    out
}

fn overlay(
    out: &mut TrafficPolicy,
    lb: Option<config::LoadBalancerSettings>,
    pool: Option<config::ConnectionPoolSettings>,
    od: Option<OutlierDetection>,
) {
    if lb.is_some() {
        out.load_balancer = lb;
    }
    if pool.is_some() {
        out.connection_pool = pool;
    }
    if od.is_some() {
        out.outlier_detection = od;
    }
}

fn lb_policy(p: &TrafficPolicy) -> LbPolicy {
    let Some(lb) = &p.load_balancer else {
        return LbPolicy::LeastRequest;
    };
    if let Some(ch) = &lb.consistent_hash {
        let on = if let Some(h) = &ch.http_header_name {
            HashOn::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            HashOn::Cookie(c.name.clone())
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashOn::QueryParameter(q.clone())
        } else {
            HashOn::SourceIp
        };
        return LbPolicy::RingHash(on);
    }
    match lb.simple {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        _ => LbPolicy::LeastRequest,
    }
}

/// How HTTP goes to endpoints without an agent, as in Istio: a declared
/// `http` port gets HTTP/1.1 unless `h2UpgradePolicy` is `UPGRADE` (the
/// mesh default, `DEFAULT`, is Istio's `DO_NOT_UPGRADE`), `http2` and
/// `grpc` ports get HTTP/2, a sniffed port the client's version, and
/// `useClientProtocol` the client's version whatever the port.
fn plain_http(http: Option<&HttpSettings>, protocol: AppProtocol) -> PlainHttp {
    if http.is_some_and(|h| h.use_client_protocol) {
        return PlainHttp::Client;
    }
    match protocol {
        AppProtocol::Http2 => PlainHttp::Http2,
        AppProtocol::Http1 => match http.and_then(|h| h.h2_upgrade_policy) {
            Some(H2UpgradePolicy::Upgrade) => PlainHttp::Http2,
            _ => PlainHttp::Http1,
        },
        AppProtocol::Tcp | AppProtocol::Unknown => PlainHttp::Client,
    }
}

/// Connection-pool settings. Between agents requests to an endpoint share
/// multiplexed HTTP/2 connections, so Envoy's limits become one cap on
/// requests in flight: `http2MaxRequests`, and, when `maxConnections` is
/// set, HTTP/1.1's view of it (`maxConnections` busy plus
/// `http1MaxPendingRequests` waiting). `connectTimeout`,
/// `maxRequestsPerConnection`, `maxConcurrentStreams`, `maxRetries` and
/// `idleTimeout` are taken as they are (0 requests, streams or retries:
/// unlimited, 0s: no idle timeout, as in Envoy).
fn limits(p: &TrafficPolicy, protocol: AppProtocol) -> Limits {
    let http = p.connection_pool.as_ref().and_then(|c| c.http.as_ref());
    let mut l = Limits {
        plain_http: plain_http(http, protocol),
        ..Limits::default()
    };
    let Some(pool) = &p.connection_pool else {
        return l;
    };
    // Validation has refused timeouts under 1ms.
    l.connect_timeout = pool
        .tcp
        .as_ref()
        .and_then(|t| t.connect_timeout)
        .map(|d| d.as_std());
    // Validation has refused keepalive times under 1s.
    l.keepalive = pool
        .tcp
        .as_ref()
        .and_then(|t| t.tcp_keepalive.as_ref())
        .map(|k| Keepalive {
            time: k.time.map(|d| d.as_std()),
            interval: k.interval.map(|d| d.as_std()),
            probes: k.probes,
        });
    if let Some(tcp) = &pool.tcp {
        // idleTimeout unset: Istio's hour; 0s: never. maxConnectionDuration
        // unset or 0s: no limit.
        if let Some(t) = tcp.idle_timeout {
            l.tcp.idle = Some(t.as_std()).filter(|t| !t.is_zero());
        }
        l.tcp.max_duration = tcp
            .max_connection_duration
            .map(|d| d.as_std())
            .filter(|d| !d.is_zero());
    }
    l.reuse.max_requests = http
        .and_then(|h| h.max_requests_per_connection)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new);
    l.reuse.max_streams = http
        .and_then(|h| h.max_concurrent_streams)
        .and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new);
    // Unset: Istio's 1h (the default's); 0: never, as in Envoy.
    if let Some(t) = http.and_then(|h| h.idle_timeout) {
        l.reuse.idle_timeout = Some(t.as_std()).filter(|t| !t.is_zero());
    }
    if let Some(n) = http.and_then(|h| h.http2_max_requests).filter(|n| *n > 0) {
        l.max_active = n as u32;
    }
    // 0 is unset in Istio: no limit beyond the retry budget.
    if let Some(n) = http.and_then(|h| h.max_retries).filter(|n| *n > 0) {
        l.max_retries = n as u32;
    }
    if let Some(c) = pool
        .tcp
        .as_ref()
        .and_then(|t| t.max_connections)
        .filter(|n| *n > 0)
    {
        let pending = http
            .and_then(|h| h.http1_max_pending_requests)
            .unwrap_or(0)
            .max(0);
        l.max_active = l.max_active.min((c + pending) as u32);
    }
    l
}

/// How locality arranges a cluster's `endpoints` for this workload, by the
/// policy's `localityLbSetting` (failover only with outlier detection).
fn locality_plan(p: &TrafficPolicy, origin: &Place<'_>, endpoints: &[Endpoint]) -> Option<Plan> {
    let places: Vec<Place<'_>> = endpoints
        .iter()
        .map(|e| Place {
            locality: &e.locality,
            network: &e.network,
            cluster: "",
            labels: &e.labels,
        })
        .collect();
    let setting = p
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.locality_lb_setting.as_ref());
    Plan::new(setting, p.outlier_detection.is_some(), origin, &places)
}

fn outlier(p: &TrafficPolicy) -> Option<OutlierConfig> {
    let od = p.outlier_detection.as_ref()?;
    let secs = |d: Option<config::Duration>, default: u64| {
        d.map_or(Duration::from_secs(default), |d| d.as_std())
    };
    Some(OutlierConfig {
        // Envoy's default is 5 consecutive 5xx once detection is on.
        consecutive_5xx: Some(od.consecutive_5xx_errors.unwrap_or(5)),
        consecutive_gateway: od
            .consecutive_gateway_errors
            .or(od.consecutive_errors.and_then(|n| u32::try_from(n).ok())),
        base_ejection: secs(od.base_ejection_time, 30),
        // Istio's default sweep interval.
        interval: secs(od.interval, 10),
        max_ejection_percent: od
            .max_ejection_percent
            .map_or(10, |n| n.clamp(0, 100) as u32),
        min_health_percent: od.min_health_percent.map_or(0, |n| n.clamp(0, 100) as u32),
    })
}

/// This workload's labels: those of its WorkloadGroup's template, then
/// the group's `metadata.labels`, then its own (`--label`), each over the
/// one before, as the control plane labels the WorkloadEntry it registers
/// for it (so that the agent's own metrics name it as its callers' do).
fn own_labels(resources: &[Resource], s: &Settings) -> BTreeMap<String, String> {
    let group = s.workload_group.as_deref().and_then(|name| {
        resources.iter().find_map(|r| match &r.spec {
            Spec::WorkloadGroup(g)
                if r.metadata.namespace == s.namespace && r.metadata.name == name =>
            {
                Some(g)
            }
            _ => None,
        })
    });
    let mut labels = BTreeMap::new();
    if let Some(g) = group {
        if let Some(t) = &g.template {
            labels.extend(t.labels.clone());
        }
        if let Some(m) = &g.metadata {
            labels.extend(m.labels.clone());
        }
    }
    labels.extend(s.labels.clone());
    labels
}

/// What this workload's traffic to destinations outside the registry does:
/// the `outboundTrafficPolicy` of the Sidecar that applies to it (one
/// selecting it by its `labels` over its namespace's over the root
/// namespace's, as Istio picks it; a policy without a mode is
/// REGISTRY_ONLY, as in Istio's API), else ALLOW_ANY, Istio's mesh default.
fn outbound_policy(
    resources: &[Resource],
    s: &Settings,
    labels: &BTreeMap<String, String>,
) -> OutboundPolicy {
    let mut best: Option<(u8, &config::Sidecar)> = None;
    for r in resources {
        let Spec::Sidecar(sc) = &r.spec else {
            continue;
        };
        let rank = match (&sc.workload_selector, r.metadata.namespace.as_str()) {
            (Some(sel), ns) if ns == s.namespace => {
                if sel.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    3
                } else {
                    continue;
                }
            }
            (None, ns) if ns == s.namespace => 2,
            (None, ROOT_NAMESPACE) => 1,
            _ => continue,
        };
        if best.is_none_or(|(b, _)| rank > b) {
            best = Some((rank, sc));
        }
    }
    match best.and_then(|(_, sc)| sc.outbound_traffic_policy.as_ref()) {
        Some(p) if p.mode == Some(config::OutboundTrafficMode::AllowAny) => {
            OutboundPolicy::AllowAny
        }
        Some(_) => OutboundPolicy::RegistryOnly,
        None => OutboundPolicy::AllowAny,
    }
}

/// This workload's mTLS mode: a PeerAuthentication selecting it (by its
/// `labels`) wins over its namespace's, which wins over the root
/// namespace's (mesh-wide).
fn peer_authentication(
    resources: &[Resource],
    s: &Settings,
    labels: &BTreeMap<String, String>,
) -> MtlsSettings {
    let mut best: Option<(u8, &config::PeerAuthentication)> = None;
    for r in resources {
        let Spec::PeerAuthentication(pa) = &r.spec else {
            continue;
        };
        let rank = match (&pa.selector, r.metadata.namespace.as_str()) {
            (Some(sel), ns) if ns == s.namespace => {
                if sel
                    .match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k) == Some(v))
                {
                    3
                } else {
                    continue;
                }
            }
            (None, ns) if ns == s.namespace => 2,
            (None, ROOT_NAMESPACE) => 1,
            _ => continue,
        };
        if best.is_none_or(|(b, _)| rank > b) {
            best = Some((rank, pa));
        }
    }
    let Some((_, pa)) = best else {
        return MtlsSettings::default();
    };
    let mode = |m: &config::MtlsMode| match m {
        config::MtlsMode::Strict => Some(MtlsMode::Strict),
        config::MtlsMode::Permissive | config::MtlsMode::Disable => Some(MtlsMode::Permissive),
        config::MtlsMode::Unset => None,
    };
    MtlsSettings {
        default: pa.mtls.as_ref().and_then(|m| mode(&m.mode)),
        ports: pa
            .port_level_mtls
            .iter()
            .filter_map(|(p, m)| Some((*p as u16, mode(&m.mode)?)))
            .collect(),
    }
}

#[cfg(test)]
mod tests;
