//! Fuzzes the east-west gateway's routing of a connection's first bytes:
//! the ClientHello read without terminating TLS, its SNI, and the pick of
//! an endpoint of the mesh on the gateway's network (untrusted input from
//! any network that can reach port 15443).
//!
//! Beyond "no panic": a connection is either refused with a reason or
//! sent to endpoints of the service its SNI names, on the gateway's own
//! network, with the SNI's port, each tried once.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use trellis_api::config::parse_documents;
use trellis_api::topology::Locality;
use trellis_dataplane::mesh::{build, Mesh, Settings};
use trellis_eastwest::route::{route, sni};
use trellis_transport::client_hello::parse;
use trellis_transport::sni::Sni;

const NETWORK: &str = "net-b";

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
  - {address: 10.2.0.5, network: net-a, labels: {version: v3}, serviceAccount: reviews, ports: {http: 8080}}
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

fn mesh() -> &'static Mesh {
    static MESH_BUILT: OnceLock<Mesh> = OnceLock::new();
    MESH_BUILT.get_or_init(|| {
        let s = Settings {
            trust_domain: "example.org".into(),
            domain: "cluster.local".into(),
            namespace: "trellis-system".into(),
            labels: Default::default(),
            addresses: Vec::new(),
            peer_inbound_port: 15006,
            cluster: "c2".into(),
            network: NETWORK.into(),
            locality: Locality::default(),
            principal: "spiffe://example.org/ns/trellis-system/sa/eastwest-gateway-net-b".into(),
            workload_name: None,
            workload_group: None,
        };
        build(parse_documents(MESH).expect("the fixed mesh parses"), &s, None)
    })
}

fuzz_target!(|data: &[u8]| {
    let hello = parse(data);
    let Ok(name) = sni(&hello) else { return };
    for turn in [0, 1, usize::MAX] {
        if let Ok(t) = route(mesh(), NETWORK, name, turn, 3) {
            let wanted = Sni::parse(name).expect("routed, so the SNI parsed");
            assert_eq!(&*t.host, wanted.host);
            assert!(!t.picks.is_empty() && t.picks.len() <= 3);
            for (k, p) in t.picks.iter().enumerate() {
                let e = p.endpoint();
                assert_eq!(e.target_port, wanted.port);
                assert!(e.network.is_empty() || &*e.network == NETWORK);
                // Never the same endpoint twice.
                assert!(!t.picks[..k].iter().any(|q| q.endpoint().addr == e.addr));
            }
        }
    }
});
