//! Where a connection goes, from what its ClientHello says (pure): the
//! SNI in Istio's form `outbound_.PORT_.SUBSET_.HOST` names a service, a
//! subset and the port on the workload (its target port, as the agent's
//! inbound side takes it); the gateway picks an endpoint of that subset
//! with that port on its own network, the one with the fewest connections
//! open through the gateway, ties taken in turn (round robin), and the
//! next ones in that order for the connection to try if the first does
//! not accept it. What does not name a reachable endpoint is refused with
//! a [`Refusal`], counted by reason.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use trellis_dataplane::mesh::cluster::{Cluster, Endpoint};
use trellis_dataplane::mesh::Mesh;
use trellis_transport::client_hello::Peeked;
use trellis_transport::sni::Sni;

/// Why a connection was closed without being proxied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a TLS ClientHello (or none within the timeout), or one without
    /// an SNI.
    NoSni,
    /// An SNI not in the agents' form.
    BadSni,
    /// The SNI names no service (or no subset of it) of the mesh.
    UnknownService,
    /// The service has no endpoint with that port on this network.
    NoEndpoint,
    /// `--max-connections` connections were open already.
    Overloaded,
    /// None of the endpoints tried accepted the connection in time.
    ConnectFailed,
}

impl Refusal {
    /// The `reason` label of `trellis_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoSni => "no_sni",
            Refusal::BadSni => "bad_sni",
            Refusal::UnknownService => "unknown_service",
            Refusal::NoEndpoint => "no_endpoint",
            Refusal::Overloaded => "overloaded",
            Refusal::ConnectFailed => "connect_failed",
        }
    }
}

/// An endpoint: `cluster.endpoints[endpoint]`.
#[derive(Clone, Debug)]
pub struct Pick {
    pub cluster: Arc<Cluster>,
    pub endpoint: usize,
}

impl Pick {
    pub fn endpoint(&self) -> &Endpoint {
        &self.cluster.endpoints[self.endpoint]
    }
}

/// Where a connection goes: the endpoints to try in order, each once.
#[derive(Clone, Debug)]
pub struct Target {
    /// Never empty.
    pub picks: Vec<Pick>,
    /// The SNI's host (the destination service).
    pub host: Arc<str>,
}

/// The SNI of `hello`, if it has one.
pub fn sni(hello: &Peeked) -> Result<&str, Refusal> {
    match hello {
        Peeked::Hello(h) => h.sni.as_deref().ok_or(Refusal::NoSni),
        Peeked::NeedMore | Peeked::Invalid(_) => Err(Refusal::NoSni),
    }
}

/// Where a connection with SNI `sni` goes, among the endpoints of `mesh`
/// on `network` (or on no network said): up to `attempts` (at least one)
/// different endpoints, the least loaded first, where the connection
/// tries the next if one does not accept it; `turn` breaks ties between
/// equally loaded ones (a counter, one more per connection).
pub fn route(
    mesh: &Mesh,
    network: &str,
    sni: &str,
    turn: usize,
    attempts: usize,
) -> Result<Target, Refusal> {
    let Sni { port, subset, host } = Sni::parse(sni).ok_or(Refusal::BadSni)?;
    if mesh.service(host).is_none() {
        return Err(Refusal::UnknownService);
    }
    let clusters: Vec<&Arc<Cluster>> = mesh
        .clusters_of(host)
        .iter()
        .filter(|c| c.subset == subset)
        .collect();
    if clusters.is_empty() {
        return Err(Refusal::UnknownService);
    }
    // A service port may map to one target port on every endpoint (the
    // usual), or to several: the SNI's port is the endpoint's.
    let candidates: Vec<(&Arc<Cluster>, usize)> = clusters
        .iter()
        .flat_map(|c| {
            c.endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.target_port == port
                        && e.identity.is_some()
                        && (e.network.is_empty() || &*e.network == network)
                })
                .map(move |(i, _)| (*c, i))
        })
        .collect();
    if candidates.is_empty() {
        return Err(Refusal::NoEndpoint);
    }
    // In turn order, with the load read once: it changes meanwhile.
    let n = candidates.len();
    let mut order: Vec<(u32, (&Arc<Cluster>, usize))> = (0..n)
        .map(|k| {
            let (c, i) = candidates[(turn + k) % n];
            (c.endpoints[i].state.active.load(Ordering::Relaxed), (c, i))
        })
        .collect();
    // The first least loaded of those left, once per attempt.
    let picks = (0..attempts.clamp(1, n))
        .map(|_| {
            let k = (0..order.len())
                .min_by_key(|&k| order[k].0)
                .expect("one candidate left per attempt");
            let (_, (cluster, endpoint)) = order.remove(k);
            Pick {
                cluster: cluster.clone(),
                endpoint,
            }
        })
        .collect();
    Ok(Target {
        picks,
        host: Arc::from(host),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use trellis_api::config::parse_documents;
    use trellis_api::topology::Locality;
    use trellis_dataplane::mesh::{build, Settings};
    use trellis_transport::client_hello::ClientHello;

    use super::*;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 10.1.0.2, network: net-b, labels: {version: v1}, serviceAccount: reviews}
  - {address: 10.1.0.3, network: net-b, labels: {version: v3}, serviceAccount: reviews, ports: {http: 8080}}
  - {address: 10.1.0.4, labels: {version: v3}, serviceAccount: reviews, ports: {http: 8080}}
  - {address: 10.2.0.5, network: net-a, labels: {version: v3}, serviceAccount: reviews, ports: {http: 8080}}
  - {address: 10.1.0.6, network: net-b, labels: {version: v3, security.istio.io/tlsMode: disabled}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v3, labels: {version: v3}}
"#;

    fn mesh() -> Mesh {
        mesh_of(MESH, 15006)
    }

    /// The gateway of net-b's view of `yaml`, its endpoints' agents on
    /// `peer_inbound_port`.
    pub(crate) fn mesh_of(yaml: &str, peer_inbound_port: u16) -> Mesh {
        let s = Settings {
            trust_domain: "example.org".into(),
            domain: "cluster.local".into(),
            namespace: "trellis-system".into(),
            labels: Default::default(),
            addresses: Vec::new(),
            peer_inbound_port,
            cluster: "c2".into(),
            network: "net-b".into(),
            locality: Locality::default(),
            principal: "spiffe://example.org/ns/trellis-system/sa/eastwest-gateway-net-b".into(),
            workload_name: None,
            workload_group: None,
        };
        build(parse_documents(yaml).unwrap(), &s, None)
    }

    /// The endpoints `t` tries, in order.
    fn addrs(t: &Target) -> Vec<String> {
        t.picks
            .iter()
            .map(|p| p.endpoint().addr.to_string())
            .collect()
    }

    fn addr(t: &Target) -> String {
        addrs(t).remove(0)
    }

    #[test]
    fn a_subset_and_port_go_to_this_networks_endpoints_in_turn() {
        let m = mesh();
        let sni = "outbound_.8080_.v3_.reviews.default.svc.cluster.local";
        let mut seen: Vec<String> = (0..4)
            .map(|turn| addr(&route(&m, "net-b", sni, turn, 1).unwrap()))
            .collect();
        seen.sort();
        seen.dedup();
        // Not the one on net-a, nor the one without an agent.
        assert_eq!(seen, ["10.1.0.3:15006", "10.1.0.4:15006"]);
        let v1 = route(
            &m,
            "net-b",
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local",
            0,
            1,
        );
        assert_eq!(addr(&v1.unwrap()), "10.1.0.2:15006");
        let any = route(
            &m,
            "net-b",
            "outbound_.9080_.__.reviews.default.svc.cluster.local",
            0,
            1,
        );
        assert_eq!(&*any.unwrap().host, "reviews.default.svc.cluster.local");
    }

    #[test]
    fn the_least_loaded_endpoint_is_picked() {
        let m = mesh();
        let sni = "outbound_.8080_.v3_.reviews.default.svc.cluster.local";
        let busy = route(&m, "net-b", sni, 0, 1).unwrap();
        busy.picks[0]
            .endpoint()
            .state
            .active
            .fetch_add(1, Ordering::Relaxed);
        for turn in 0..4 {
            assert_ne!(
                addr(&route(&m, "net-b", sni, turn, 1).unwrap()),
                addr(&busy)
            );
        }
    }

    #[test]
    fn a_connection_may_try_other_endpoints_each_once_the_least_loaded_first() {
        let m = mesh();
        let sni = "outbound_.8080_.v3_.reviews.default.svc.cluster.local";
        let both = ["10.1.0.3:15006", "10.1.0.4:15006"];
        for turn in 0..4 {
            // Two candidates: three attempts try each once.
            let mut tried = addrs(&route(&m, "net-b", sni, turn, 3).unwrap());
            tried.sort();
            assert_eq!(tried, both);
            assert_eq!(addrs(&route(&m, "net-b", sni, turn, 0).unwrap()).len(), 1);
        }
        let busy = route(&m, "net-b", sni, 0, 1).unwrap();
        busy.picks[0]
            .endpoint()
            .state
            .active
            .fetch_add(1, Ordering::Relaxed);
        for turn in 0..4 {
            let tried = addrs(&route(&m, "net-b", sni, turn, 2).unwrap());
            assert_eq!(tried[1], addr(&busy), "the busy one last");
        }
    }

    #[test]
    fn what_names_no_reachable_endpoint_is_refused_by_reason() {
        let m = mesh();
        for (sni, why) in [
            ("reviews.default.svc.cluster.local", Refusal::BadSni),
            ("outbound_.0_._.reviews", Refusal::BadSni),
            (
                "outbound_.9080_.__.ratings.default.svc.cluster.local",
                Refusal::UnknownService,
            ),
            (
                "outbound_.9080_.v9_.reviews.default.svc.cluster.local",
                Refusal::UnknownService,
            ),
            (
                "outbound_.9999_.v1_.reviews.default.svc.cluster.local",
                Refusal::NoEndpoint,
            ),
            // v1 has no endpoint with 8080.
            (
                "outbound_.8080_.v1_.reviews.default.svc.cluster.local",
                Refusal::NoEndpoint,
            ),
        ] {
            assert_eq!(route(&m, "net-b", sni, 0, 1).unwrap_err(), why, "{sni}");
        }
        // On net-c, nothing of reviews but the endpoint with no network.
        let t = route(
            &m,
            "net-c",
            "outbound_.8080_.v3_.reviews.default.svc.cluster.local",
            0,
            1,
        );
        assert_eq!(addr(&t.unwrap()), "10.1.0.4:15006");
    }

    #[test]
    fn a_hello_without_sni_is_refused() {
        assert_eq!(sni(&Peeked::NeedMore), Err(Refusal::NoSni));
        assert_eq!(sni(&Peeked::Invalid("not TLS")), Err(Refusal::NoSni));
        assert_eq!(
            sni(&Peeked::Hello(ClientHello::default())),
            Err(Refusal::NoSni)
        );
        let named = Peeked::Hello(ClientHello {
            sni: Some("a".into()),
            alpn: Vec::new(),
        });
        assert_eq!(sni(&named), Ok("a"));
    }
}
