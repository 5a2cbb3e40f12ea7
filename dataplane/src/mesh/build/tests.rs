//! Compiling resources into the view: services, clusters with subsets and
//! policies, short names, mTLS modes, inbound ports.
use std::net::{IpAddr, SocketAddr};

use trellis_api::config::parse_documents;

use super::*;
use crate::mesh::cluster::LbPolicy;
use crate::mesh::AppProtocol;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [240.0.0.1]
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9090, name: grpc-api}]
  endpoints:
  - {address: 10.0.0.2, labels: {app: reviews, version: v1}, serviceAccount: reviews}
  - {address: 10.0.0.3, labels: {app: reviews, version: v2}, serviceAccount: reviews, ports: {http: 8080}}
  - {address: 10.0.0.4, labels: {app: reviews, version: v2, security.istio.io/tlsMode: disabled}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, maxRetries: 4, maxConcurrentStreams: 50}}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {consistentHash: {httpHeaderName: X-User}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 1m}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8080: {mode: STRICT}}
"#;

/// The mesh that `yaml` builds for the workload at 10.0.0.9.
fn mesh_of(yaml: &str) -> Mesh {
    build(
        parse_documents(yaml).unwrap(),
        &settings("10.0.0.9", &[]),
        None,
    )
}

fn settings(addr: &str, labels: &[(&str, &str)]) -> Settings {
    Settings {
        trust_domain: "example.org".into(),
        domain: "cluster.local".into(),
        namespace: "default".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        addresses: vec![addr.parse().unwrap()],
        peer_inbound_port: 15006,
        cluster: "east".into(),
        network: "net-east".into(),
        locality: Locality::default(),
        principal: "spiffe://example.org/ns/default/sa/reviews".into(),
        workload_name: None,
        workload_group: None,
    }
}

const HOST: &str = "reviews.default.svc.cluster.local";

#[test]
fn services_clusters_and_policies() {
    let m = mesh_of(MESH);
    assert_eq!(m.canonical_host("reviews"), HOST);
    assert_eq!(m.canonical_host("reviews.default"), HOST);
    assert_eq!(
        m.resolve("reviews:9080").map(|(h, p)| (h.to_string(), p)),
        Some((HOST.into(), 9080))
    );
    assert_eq!(m.resolve("240.0.0.1:9090").map(|(_, p)| p), Some(9090));
    assert!(m.resolve("unknown:80").is_none());
    let vip: SocketAddr = "240.0.0.1:9080".parse().unwrap();
    assert_eq!(
        m.service_by_addr(vip).map(|(s, p)| (s.host.as_str(), p)),
        Some((HOST, 9080))
    );
    assert_eq!(m.service(HOST).unwrap().protocol(9090), AppProtocol::Http2);
    assert!(
        m.http_routes(HOST).is_some(),
        "short VirtualService host is canonicalised"
    );

    let all = m.cluster(HOST, 9080, "").unwrap();
    assert_eq!(all.endpoints.len(), 3);
    assert_eq!(all.lb, LbPolicy::RoundRobin);
    assert_eq!(
        all.limits.max_active, 2,
        "maxConnections + http1MaxPendingRequests"
    );
    assert_eq!(all.limits.max_retries, 4, "maxRetries");
    assert_eq!(
        all.limits.reuse.max_streams.map(|n| n.get()),
        Some(50),
        "maxConcurrentStreams"
    );
    let e = &all.endpoints;
    assert_eq!(
        e[0].addr,
        "10.0.0.2:15006".parse::<SocketAddr>().unwrap(),
        "mTLS goes to the peer agent"
    );
    assert_eq!(
        e[0].identity.as_ref().unwrap().to_string(),
        "spiffe://example.org/ns/default/sa/reviews"
    );
    assert_eq!(e[1].target_port, 8080, "the entry's own port for `http`");
    assert_eq!(
        e[2].addr,
        "10.0.0.4:9080".parse::<SocketAddr>().unwrap(),
        "no agent: plaintext to the app"
    );
    assert!(e[2].identity.is_none());

    let v2 = m.cluster(HOST, 9080, "v2").unwrap();
    assert_eq!(v2.endpoints.len(), 2);
    assert_eq!(v2.lb, LbPolicy::Random, "the subset's policy wins");
    assert_eq!(v2.outlier.as_ref().unwrap().consecutive_5xx, Some(2));
    assert_eq!(
        v2.outlier.as_ref().unwrap().base_ejection,
        Duration::from_secs(60)
    );
    assert_eq!(
        v2.outlier.as_ref().unwrap().interval,
        Duration::from_secs(10),
        "Istio's default interval"
    );
    assert_eq!(
        v2.outlier.as_ref().unwrap().min_health_percent,
        0,
        "Istio's default: no panic mode"
    );
    let swept = mesh_of(&MESH.replace(
        "baseEjectionTime: 1m",
        "baseEjectionTime: 1m, interval: 2s, minHealthPercent: 40",
    ));
    let od = swept
        .cluster(HOST, 9080, "v2")
        .unwrap()
        .outlier
        .clone()
        .unwrap();
    assert_eq!(od.interval, Duration::from_secs(2));
    assert_eq!(od.min_health_percent, 40);
    assert!(
        matches!(m.cluster(HOST, 9090, "").unwrap().lb, LbPolicy::RingHash(HashOn::Header(ref h)) if h == "x-user")
    );
    assert!(m.cluster(HOST, 9080, "v9").is_none());
}

#[test]
fn peer_authentication_workload_over_namespace_over_mesh() {
    let m = mesh_of(MESH);
    assert_eq!(m.inbound_mode(9080), MtlsMode::Strict, "mesh-wide STRICT");
    let r = build(
        parse_documents(MESH).unwrap(),
        &settings("10.0.0.3", &[("app", "reviews")]),
        None,
    );
    assert_eq!(
        r.inbound_mode(9080),
        MtlsMode::Permissive,
        "the selector matches"
    );
    assert_eq!(r.inbound_mode(8080), MtlsMode::Strict, "port-level");
    let none = build(Vec::new(), &settings("10.0.0.3", &[]), None);
    assert_eq!(
        none.inbound_mode(1),
        MtlsMode::Permissive,
        "Istio's default"
    );
}

#[test]
fn inbound_ports_come_from_entries_at_our_address() {
    let m = build(
        parse_documents(MESH).unwrap(),
        &settings("10.0.0.3", &[]),
        None,
    );
    assert_eq!(m.app_protocol(8080), AppProtocol::Http1);
    assert_eq!(m.app_protocol(9090), AppProtocol::Http2);
    assert_eq!(&*m.inbound_service(8080), HOST);
    assert_eq!(
        m.app_protocol(9080),
        AppProtocol::Unknown,
        "not this workload's port"
    );
    let ip: IpAddr = "10.0.0.3".parse().unwrap();
    assert!(m.services().all(|s| !s.addresses.contains(&ip)));
}

#[test]
fn a_new_view_keeps_the_old_counters() {
    let s = settings("10.0.0.9", &[]);
    let a = build(parse_documents(MESH).unwrap(), &s, None);
    let c = a.cluster(HOST, 9080, "v1").unwrap();
    c.state
        .active
        .store(7, std::sync::atomic::Ordering::Relaxed);
    let b = build(parse_documents(MESH).unwrap(), &s, Some(&a));
    let c2 = b.cluster(HOST, 9080, "v1").unwrap();
    assert_eq!(
        c2.state.active.load(std::sync::atomic::Ordering::Relaxed),
        7
    );
    assert!(Arc::ptr_eq(&c.endpoints[0].state, &c2.endpoints[0].state));
}

/// `connectTimeout` and `maxRequestsPerConnection`: the rule's, overridden
/// by its port-level settings, by a subset's, and by the subset's own
/// port-level settings, a `connectionPool` replacing the one below it whole
/// (as Istio merges); 0 requests is unlimited.
#[test]
fn connect_timeout_and_requests_per_connection_per_port_and_subset() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}, {number: 9090, name: tcp-db}, {number: 9091, name: http-admin}]
  endpoints:
  - {address: 10.0.0.2, labels: {version: v1}}
  - {address: 10.0.0.3, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 250ms, maxConnections: 4}
      http: {maxRequestsPerConnection: 3}
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {tcp: {connectTimeout: 2s}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {maxRequestsPerConnection: 1}}
      portLevelSettings:
      - port: {number: 9091}
        connectionPool: {tcp: {connectTimeout: 50ms}, http: {maxRequestsPerConnection: 0}}
"#;
    let m = mesh_of(yaml);
    let host = "ratings.default.svc.cluster.local";
    let got = |port, subset| {
        let c = m.cluster(host, port, subset).unwrap();
        (
            c.limits.connect_timeout,
            c.limits.reuse.max_requests.map(|n| n.get()),
        )
    };
    let ms = |n| Some(Duration::from_millis(n));
    let cases = [
        (9080, "", (ms(250), Some(3)), "the rule's"),
        (9091, "", (ms(250), Some(3)), "no port-level settings there"),
        (
            9090,
            "",
            (ms(2000), None),
            "port-level pool replaces it whole",
        ),
        (9080, "v1", (ms(250), Some(3)), "a subset without a policy"),
        (9090, "v1", (ms(2000), None), "... takes the port's"),
        (9080, "v2", (None, Some(1)), "the subset's pool"),
        (
            9090,
            "v2",
            (None, Some(1)),
            "the subset's pool over the port's",
        ),
        (
            9091,
            "v2",
            (ms(50), None),
            "the subset's port-level; 0 is unlimited",
        ),
    ];
    for (port, subset, want, why) in cases {
        assert_eq!(got(port, subset), want, "{port} {subset:?}: {why}");
    }
    let none = mesh_of(&yaml.replace(
            "    connectionPool:\n      tcp: {connectTimeout: 250ms, maxConnections: 4}\n      http: {maxRequestsPerConnection: 3}\n",
            "",
        ));
    let c = none.cluster(host, 9080, "").unwrap();
    assert_eq!(
        (c.limits.connect_timeout, c.limits.reuse.max_requests),
        (None, None),
        "unset: the agent-wide timeout, unlimited requests"
    );
}

#[test]
fn idle_timeout_defaults_to_istios_hour_and_zero_turns_it_off() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}, {number: 9090, name: http-a}, {number: 9091, name: http-b}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    connectionPool: {http: {idleTimeout: 30s}}
    portLevelSettings:
    - port: {number: 9090}
      connectionPool: {http: {idleTimeout: 0s}}
    - port: {number: 9091}
      connectionPool: {tcp: {connectTimeout: 1s}}
"#;
    let m = mesh_of(yaml);
    let idle = |port| {
        m.cluster("ratings.default.svc.cluster.local", port, "")
            .unwrap()
            .limits
            .reuse
            .idle_timeout
    };
    assert_eq!(idle(9080), Some(Duration::from_secs(30)));
    assert_eq!(idle(9090), None, "0s: connections are never closed idle");
    assert_eq!(
        idle(9091),
        Some(Duration::from_secs(3600)),
        "a pool without idleTimeout: Istio's 1h"
    );
    let plain = mesh_of(&yaml.replace("idleTimeout: 30s", "maxRequestsPerConnection: 5"));
    let c = plain
        .cluster("ratings.default.svc.cluster.local", 9080, "")
        .unwrap();
    assert_eq!(c.limits.reuse.idle_timeout, Some(Duration::from_secs(3600)));
}

#[test]
fn tcp_idle_timeout_and_max_connection_duration_with_istios_defaults() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}, {number: 5433, name: tcp-b}, {number: 5434, name: tcp-c}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db
  trafficPolicy:
    connectionPool: {tcp: {idleTimeout: 5m, maxConnectionDuration: 2h}}
    portLevelSettings:
    - port: {number: 5433}
      connectionPool: {tcp: {idleTimeout: 0s, maxConnectionDuration: 0s}}
    - port: {number: 5434}
      connectionPool: {tcp: {connectTimeout: 1s}}
"#;
    let m = mesh_of(yaml);
    let tcp = |port| {
        m.cluster("db.default.svc.cluster.local", port, "")
            .unwrap()
            .limits
            .tcp
    };
    assert_eq!(tcp(5432).idle, Some(Duration::from_secs(300)));
    assert_eq!(tcp(5432).max_duration, Some(Duration::from_secs(7200)));
    assert_eq!(tcp(5433).idle, None, "0s: never closed idle");
    assert_eq!(tcp(5433).max_duration, None, "0s: no limit");
    assert_eq!(
        tcp(5434),
        trellis_transport::splice::Timeouts::default(),
        "unset: Istio's hour idle, no limit"
    );
}

#[test]
fn tcp_keepalive_is_taken_from_the_pool_with_unset_fields_left_to_the_system() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg}, {number: 5433, name: tcp-replica}]
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db
  trafficPolicy:
    connectionPool:
      tcp: {tcpKeepalive: {time: 60s, interval: 10s, probes: 4}}
    portLevelSettings:
    - port: {number: 5433}
      connectionPool: {tcp: {tcpKeepalive: {time: 2m}}}
"#;
    let m = mesh_of(yaml);
    let host = "db.default.svc.cluster.local";
    let ka = |port| m.cluster(host, port, "").unwrap().limits.keepalive;
    let secs = |n| Some(Duration::from_secs(n));
    assert_eq!(
        ka(5432),
        Some(trellis_transport::connect::Keepalive {
            time: secs(60),
            interval: secs(10),
            probes: Some(4),
        })
    );
    assert_eq!(
        ka(5433),
        Some(trellis_transport::connect::Keepalive {
            time: secs(120),
            interval: None,
            probes: None,
        }),
        "the port's pool replaces the rule's whole"
    );
    let none = mesh_of(&yaml.replace(
        "      tcp: {tcpKeepalive: {time: 60s, interval: 10s, probes: 4}}\n",
        "      tcp: {connectTimeout: 1s}\n",
    ));
    assert_eq!(none.cluster(host, 5432, "").unwrap().limits.keepalive, None);
}

#[test]
fn plaintext_endpoints_get_the_http_version_istio_picks() {
    use AppProtocol::{Http1, Http2, Tcp, Unknown};
    let upgrade = HttpSettings {
        h2_upgrade_policy: Some(H2UpgradePolicy::Upgrade),
        ..Default::default()
    };
    let keep = HttpSettings {
        h2_upgrade_policy: Some(H2UpgradePolicy::DoNotUpgrade),
        ..Default::default()
    };
    let default = HttpSettings {
        h2_upgrade_policy: Some(H2UpgradePolicy::Default),
        ..Default::default()
    };
    let client = HttpSettings {
        use_client_protocol: true,
        ..upgrade.clone()
    };
    let cases = [
        (None, Http1, PlainHttp::Http1),
        (None, Http2, PlainHttp::Http2),
        (None, Unknown, PlainHttp::Client),
        (None, Tcp, PlainHttp::Client),
        (Some(&upgrade), Http1, PlainHttp::Http2),
        (Some(&keep), Http1, PlainHttp::Http1),
        (Some(&default), Http1, PlainHttp::Http1),
        (Some(&keep), Http2, PlainHttp::Http2),
        (Some(&client), Http1, PlainHttp::Client),
        (Some(&client), Http2, PlainHttp::Client),
    ];
    for (http, protocol, want) in cases {
        assert_eq!(plain_http(http, protocol), want, "{http:?} {protocol:?}");
    }
}

/// Every endpoint carries its network and locality: from the entry's
/// `network` and `locality` fields, else from Istio's topology labels,
/// for ServiceEntry endpoints and WorkloadEntries alike.
#[test]
fn endpoints_carry_their_network_and_locality() {
    let m = mesh_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  endpoints:
  - {address: 10.0.0.2, network: net-a, locality: us/us-1/rack-1}
  - address: 10.0.0.3
    labels:
      topology.istio.io/network: net-b
      topology.kubernetes.io/region: eu
      topology.kubernetes.io/zone: eu-2
      topology.istio.io/subzone: rack-9
  - {address: 10.0.0.4}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-vm, namespace: default}
spec:
  hosts: [db-vm.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-vm, namespace: default}
spec:
  address: 10.0.0.5
  network: net-c
  locality: ap
  labels: {app: db, topology.istio.io/network: ignored-for-the-field}
"#,
    );
    let clusters = ["db", "db-vm"].map(|h| {
        m.cluster(&format!("{h}.default.svc.cluster.local"), 5432, "")
            .unwrap()
    });
    let mut got: Vec<(String, String, String)> = clusters
        .iter()
        .flat_map(|c| &c.endpoints)
        .map(|e| {
            (
                e.addr.ip().to_string(),
                e.network.to_string(),
                e.locality.to_string(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("10.0.0.2", "net-a", "us/us-1/rack-1"),
        ("10.0.0.3", "net-b", "eu/eu-2/rack-9"),
        ("10.0.0.4", "", ""),
        ("10.0.0.5", "net-c", "ap"),
    ]
    .map(|(a, n, l)| (a.to_string(), n.to_string(), l.to_string()));
    assert_eq!(got, want);
    let zones: Vec<&str> = clusters[0]
        .endpoints
        .iter()
        .map(|e| e.locality.zone.as_str())
        .collect();
    assert!(
        zones.contains(&"us-1") && zones.contains(&"eu-2"),
        "{zones:?}"
    );
}

#[test]
fn routes_bound_to_other_gateways_are_not_the_agents() {
    let m = mesh_of(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge-only, namespace: default}
spec:
  hosts: [reviews]
  gateways: [istio-system/ingress]
  http: [{route: [{destination: {host: reviews, subset: edge}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: both, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  gateways: [istio-system/ingress, mesh]
  http:
  - match: [{uri: {prefix: /edge}, gateways: [istio-system/ingress]}]
    route: [{destination: {host: ratings, subset: edge}}]
  - match: [{uri: {prefix: /in}, gateways: [mesh]}, {uri: {prefix: /also}}]
    route: [{destination: {host: ratings, subset: inside}}]
  tcp:
  - match: [{port: 3306, gateways: [istio-system/ingress]}]
    route: [{destination: {host: ratings, subset: edge}}]
"#,
    );
    assert!(
        m.http_routes(HOST).is_none(),
        "a VirtualService bound to the ingress only is not the agents'"
    );
    let routes = m
        .http_routes("ratings.default.svc.cluster.local")
        .expect("bound to the mesh too");
    assert_eq!(routes.len(), 1, "the ingress-only route is left out");
    assert_eq!(routes[0].matches.len(), 2, "both blocks apply to the mesh");
    assert_eq!(
        m.tcp_subset("ratings.default.svc.cluster.local", 3306, 0),
        "",
        "the ingress-only TCP route is left out"
    );
}

#[test]
fn a_workload_in_a_group_has_the_groups_labels_under_its_own() {
    let group = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews-v1, namespace: default}
spec:
  metadata: {labels: {app: reviews, version: v1, tier: back}}
  template: {serviceAccount: reviews, labels: {zone: a}}
"#;
    let mut s = settings("10.0.0.9", &[("tier", "front")]);
    s.workload_group = Some("reviews-v1".into());
    let m = build(parse_documents(group).unwrap(), &s, None);
    let labels: Vec<(&str, &str)> = m
        .labels()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("app", "reviews"),
            ("tier", "front"),
            ("version", "v1"),
            ("zone", "a")
        ],
        "the group's, with the flags' over them"
    );
    let me = m.me();
    assert_eq!(
        (me.workload.as_str(), me.app.as_str(), me.version.as_str()),
        ("reviews", "reviews", "v1")
    );
    let header = m.peer_metadata().unwrap().to_str().unwrap();
    assert!(header.contains(r#""version":"v1""#), "{header}");
    // Before the group is pushed (or without one): the flags' alone.
    let alone = build(Vec::new(), &s, None);
    assert_eq!(alone.me().app, "");
    assert_eq!(alone.me().workload, "reviews", "the service account");
}

#[test]
fn the_sidecar_that_applies_sets_the_outbound_traffic_policy() {
    let sidecar = |ns: &str, name: &str, selector: &str, policy: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector}outboundTrafficPolicy: {policy}}}\n"
        )
    };
    let of = |yaml: &str| {
        build(
            parse_documents(yaml).unwrap(),
            &settings("10.0.0.9", &[("app", "reviews")]),
            None,
        )
        .outbound_policy()
    };
    assert_eq!(of(""), OutboundPolicy::AllowAny, "Istio's mesh default");
    let root = sidecar("istio-system", "default", "", "{mode: REGISTRY_ONLY}");
    assert_eq!(of(&root), OutboundPolicy::RegistryOnly);
    let own = sidecar("default", "default", "", "{mode: ALLOW_ANY}");
    assert_eq!(of(&format!("{root}{own}")), OutboundPolicy::AllowAny);
    let mine = sidecar(
        "default",
        "reviews",
        "workloadSelector: {labels: {app: reviews}}, ",
        "{}",
    );
    assert_eq!(
        of(&format!("{root}{own}{mine}")),
        OutboundPolicy::RegistryOnly,
        "selected by its labels; a policy without a mode is REGISTRY_ONLY"
    );
    let other = sidecar(
        "default",
        "ratings",
        "workloadSelector: {labels: {app: ratings}}, ",
        "{mode: REGISTRY_ONLY}",
    );
    assert_eq!(of(&format!("{own}{other}")), OutboundPolicy::AllowAny);
}

#[test]
fn locality_balancing_follows_the_policy_of_each_subset_and_port() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 5432, name: tcp}, {number: 9000, name: admin}]
  endpoints:
  - {address: 10.0.0.2, locality: eu/eu-2, labels: {v: a}}
  - {address: 10.0.0.3, locality: us/us-1, labels: {v: a}}
  - {address: 10.0.0.4, locality: us/us-2, labels: {v: b}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: default}
spec:
  host: db
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1}
    portLevelSettings:
    - port: {number: 9000}
      loadBalancer: {localityLbSetting: {enabled: false}}
  subsets:
  - {name: a, labels: {v: a}}
  - name: b
    labels: {v: b}
    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}
"#;
    let mut s = settings("10.0.0.9", &[]);
    s.locality = Locality::parse("us/us-1").unwrap();
    let m = build(parse_documents(yaml).unwrap(), &s, None);
    let host = "db.default.svc.cluster.local";
    let priorities = |port: u16, subset: &str| {
        let c = m.cluster(host, port, subset).unwrap();
        c.locality.as_ref()?;
        Some(
            (0..c.endpoints.len())
                .map(|i| c.placement(i).unwrap().0)
                .collect::<Vec<_>>(),
        )
    };
    // The caller's zone, its region's other zone, another region.
    assert_eq!(priorities(5432, ""), Some(vec![2, 0, 1]));
    assert_eq!(priorities(5432, "a"), Some(vec![1, 0]));
    assert_eq!(priorities(5432, "b"), None, "one endpoint: one level");
    assert_eq!(priorities(9000, ""), None, "turned off for the port");
    let plain = build(parse_documents(MESH).unwrap(), &s, None);
    assert!(
        plain.clusters().all(|c| c.locality.is_none()),
        "endpoints with no locality are all alike"
    );
}

#[test]
fn an_endpoint_behind_a_gateway_is_reached_there_with_its_sni_and_identity() {
    // As the control plane sends an endpoint of another network: its
    // address the gateway's, the gateway's IP:PORT annotated. One is at
    // this workload's own address (10.0.0.9): it is still not this
    // workload.
    let m = mesh_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-v3
  namespace: default
  annotations: {trellis.io/gateway: "192.0.2.1:15443"}
spec:
  address: 192.0.2.1
  network: net-west
  labels: {app: reviews, version: v3, security.istio.io/tlsMode: disabled}
  serviceAccount: reviews-v3
  ports: {http: 8080}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-odd
  namespace: default
  annotations: {trellis.io/gateway: "10.0.0.9:15443"}
spec: {address: 10.0.0.9, network: net-west, labels: {app: reviews}}
"#,
    );
    let c = m.cluster(HOST, 9080, "").unwrap();
    let e = c
        .endpoints
        .iter()
        .find(|e| e.addr.port() == 15443 && e.addr.ip().to_string() == "192.0.2.1")
        .unwrap();
    // mTLS even though the entry's labels say plaintext: what is behind a
    // gateway is reached by SNI, never in the clear.
    let peer = e.peer.as_ref().unwrap();
    assert_eq!(
        peer.identity.to_string(),
        "spiffe://example.org/ns/default/sa/reviews-v3"
    );
    assert_eq!(
        peer.sni,
        "outbound_.8080_._.reviews.default.svc.cluster.local"
    );
    assert_eq!(&*e.network, "net-west");
    assert_eq!(m.app_protocol(9080), AppProtocol::Unknown);
    assert_eq!(m.inbound_service(9080).as_ref(), "unknown");
}

/// A Kubernetes Service (as discovery writes it) and a VM service of the
/// same name and namespace are one service: their endpoints add up, and
/// an entry both select is one endpoint.
#[test]
fn two_service_entries_of_one_host_add_up_their_endpoints_once() {
    let m = mesh_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, annotations: {trellis.io/source: kubernetes/east}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews-vm}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: r1.east}
spec: {address: 10.0.0.1, labels: {app: reviews}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1}
spec: {address: 10.0.1.1, labels: {app: reviews}}
"#,
    );
    let c = m.cluster(HOST, 9080, "").unwrap();
    let mut addrs: Vec<String> = c.endpoints.iter().map(|e| e.addr.to_string()).collect();
    addrs.sort();
    assert_eq!(addrs, ["10.0.0.1:15006", "10.0.1.1:15006"]);
    let r1 = c
        .endpoints
        .iter()
        .find(|e| e.addr.ip().to_string() == "10.0.0.1")
        .unwrap();
    assert_eq!(r1.target_port, 8080);
}

/// A ServiceEntry without addresses (a headless Kubernetes Service) is
/// answered by the DNS proxy with its ready endpoints reached directly:
/// not those failing their probe, not those behind a gateway.
#[test]
fn a_headless_service_resolves_to_its_ready_endpoints() {
    let m = mesh_of(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: default}
spec: {address: 10.1.0.8, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-0, namespace: default}
spec: {address: 10.1.0.7, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-2
  namespace: default
  annotations: {trellis.io/health: "unhealthy: probe failed"}
spec: {address: 10.1.0.9, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-west
  namespace: default
  annotations: {trellis.io/gateway: "192.0.2.1:15443"}
spec: {address: 192.0.2.1, network: net-west, labels: {app: db}}
"#,
    );
    for name in ["db.default.svc.cluster.local", "db.default", "db"] {
        let a = m.dns().lookup(name).unwrap();
        assert_eq!(
            a.v4,
            [
                "10.1.0.7".parse::<std::net::Ipv4Addr>().unwrap(),
                "10.1.0.8".parse().unwrap()
            ],
            "{name}"
        );
    }
    // Still no virtual address: a connection to a pod's own address is
    // not taken for the service's.
    assert!(m
        .service_by_addr("10.1.0.7:5432".parse().unwrap())
        .is_none());
}
