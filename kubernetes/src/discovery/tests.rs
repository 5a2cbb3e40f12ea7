use serde_json::{json, Value};
use trellis_api::config::{Resource, Spec};

use super::slice::EndpointSlice;
use super::*;

fn place() -> Place {
    Place {
        cluster: "east".into(),
        network: "net-east".into(),
        domain: "cluster.local".into(),
    }
}

fn service(
    ns: &str,
    name: &str,
    spec: Value,
) -> ((String, String), k8s_openapi::api::core::v1::Service) {
    let s = json!({"metadata": {"name": name, "namespace": ns}, "spec": spec});
    ((ns.into(), name.into()), serde_json::from_value(s).unwrap())
}

fn pod(
    ns: &str,
    name: &str,
    node: &str,
    labels: Value,
) -> ((String, String), k8s_openapi::api::core::v1::Pod) {
    let p = json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": "reviews", "containers": []},
    });
    ((ns.into(), name.into()), serde_json::from_value(p).unwrap())
}

fn node(name: &str, labels: Value) -> (String, k8s_openapi::api::core::v1::Node) {
    let n = json!({"metadata": {"name": name, "labels": labels}});
    (name.into(), serde_json::from_value(n).unwrap())
}

/// An EndpointSlice as a v1 server sends it: `(address, pod, ready)`.
fn slice_v1(
    ns: &str,
    svc: &str,
    ports: Value,
    eps: &[(&str, Option<&str>, Option<bool>)],
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{svc}-abcde"),
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": eps.iter().map(|(a, pod, ready)| {
            let mut e = json!({"addresses": [a], "nodeName": "n1", "zone": "z"});
            if let Some(r) = ready {
                e["conditions"] = json!({"ready": r, "serving": r, "terminating": false});
            }
            if let Some(p) = pod {
                e["targetRef"] = json!({"kind": "Pod", "name": p, "namespace": ns});
            }
            e
        }).collect::<Vec<_>>(),
    })
}

fn add_slice(o: &mut Objects, json: Value) {
    let s: EndpointSlice = serde_json::from_value(json).unwrap();
    o.slices
        .insert((s.metadata.namespace.clone(), s.metadata.name.clone()), s);
}

/// reviews (selector app=reviews, port `http` 9080 → named target port
/// `web`), two pods on node n1 (us/us-1/rack-1), r1 ready, r2 not.
fn reviews() -> Objects {
    let mut o = Objects::default();
    o.services.extend([service(
        "prod",
        "reviews",
        json!({
            "selector": {"app": "reviews"},
            "clusterIP": "10.96.0.10",
            "ports": [{"name": "http", "port": 9080, "targetPort": "web", "protocol": "TCP"}],
        }),
    )]);
    o.pods.extend([
        pod(
            "prod",
            "r1",
            "n1",
            json!({"app": "reviews", "version": "v1"}),
        ),
        pod(
            "prod",
            "r2",
            "n1",
            json!({"app": "reviews", "version": "v2"}),
        ),
    ]);
    o.nodes.extend([node(
        "n1",
        json!({
            "topology.kubernetes.io/region": "us",
            "topology.kubernetes.io/zone": "us-1",
            "topology.istio.io/subzone": "rack-1",
        }),
    )]);
    add_slice(
        &mut o,
        slice_v1(
            "prod",
            "reviews",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            &[
                ("10.0.0.1", Some("r1"), Some(true)),
                ("10.0.0.2", Some("r2"), Some(false)),
            ],
        ),
    );
    o
}

fn spec_of<'a>(rs: &'a BTreeMap<String, Resource>, key: &str) -> &'a Spec {
    &rs.get(key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", rs.keys()))
        .spec
}

#[test]
fn a_service_is_a_service_entry_selecting_its_ready_pods_entries() {
    let rs = records(&reviews(), &place());
    assert_eq!(
        rs.keys().collect::<Vec<_>>(),
        ["ServiceEntry/prod/reviews", "WorkloadEntry/prod/r1.east"],
        "r2 is not ready"
    );
    let Spec::ServiceEntry(se) = spec_of(&rs, "ServiceEntry/prod/reviews") else {
        panic!()
    };
    assert_eq!(se.hosts, ["reviews.prod.svc.cluster.local"]);
    assert_eq!(se.addresses, ["10.96.0.10"]);
    assert_eq!(se.ports.len(), 1);
    assert_eq!(
        (se.ports[0].number, se.ports[0].name.as_str()),
        (9080, "http")
    );
    assert_eq!(
        se.ports[0].protocol().as_str(),
        "HTTP",
        "by the name's prefix"
    );
    assert_eq!(
        se.ports[0].target_port, None,
        "a named target port is per pod"
    );
    assert_eq!(
        se.workload_selector.as_ref().unwrap().labels,
        [("app".to_string(), "reviews".to_string())].into()
    );
    assert!(se.endpoints.is_empty());
    let r1 = &rs["WorkloadEntry/prod/r1.east"];
    assert_eq!(r1.metadata.name, "r1.east");
    assert_eq!(
        r1.metadata.annotations[trellis_api::annotations::SOURCE],
        "kubernetes/east"
    );
    let Spec::WorkloadEntry(we) = &r1.spec else {
        panic!()
    };
    assert_eq!(we.address, "10.0.0.1");
    assert_eq!(
        we.ports,
        [("http".to_string(), 8080)].into(),
        "the resolved named port"
    );
    assert_eq!(we.network.as_deref(), Some("net-east"));
    assert_eq!(we.locality.as_deref(), Some("us/us-1/rack-1"));
    assert_eq!(we.service_account.as_deref(), Some("reviews"));
    let labels: Vec<(&str, &str)> = we
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            ("app", "reviews"),
            ("security.istio.io/tlsMode", "disabled"),
            ("topology.istio.io/cluster", "east"),
            ("topology.istio.io/network", "net-east"),
            ("version", "v1"),
        ]
    );
    // Every record reads back as what `trellis apply` accepts.
    for (k, r) in &rs {
        r.validate().unwrap_or_else(|e| panic!("{k}: {e:?}"));
    }
}

/// A headless Service (`clusterIP: None`) is a ServiceEntry without an
/// address (agents answer its name with its endpoints' addresses) that
/// still selects its ready pods' entries.
#[test]
fn a_headless_service_has_no_address_and_its_pods_entries() {
    let mut o = reviews();
    let (_, svc) = o.services.iter_mut().next().unwrap();
    svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
    let rs = records(&o, &place());
    assert_eq!(
        rs.keys().collect::<Vec<_>>(),
        ["ServiceEntry/prod/reviews", "WorkloadEntry/prod/r1.east"]
    );
    let Spec::ServiceEntry(se) = spec_of(&rs, "ServiceEntry/prod/reviews") else {
        panic!()
    };
    assert!(se.addresses.is_empty(), "{:?}", se.addresses);
    assert!(se.workload_selector.is_some());
    rs["ServiceEntry/prod/reviews"].validate().unwrap();
}

#[test]
fn a_v1beta1_slice_reads_like_a_v1_slice() {
    // What a 1.20 server sends: `topology` instead of `nodeName`/`zone`,
    // and no `serving`/`terminating` conditions.
    let beta = json!({
        "apiVersion": "discovery.k8s.io/v1beta1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "reviews-abcde",
            "namespace": "prod",
            "labels": {"kubernetes.io/service-name": "reviews"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "r1", "namespace": "prod"},
             "topology": {"kubernetes.io/hostname": "n1"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false},
             "targetRef": {"kind": "Pod", "name": "r2", "namespace": "prod"}},
        ],
    });
    let mut o = reviews();
    o.slices.clear();
    add_slice(&mut o, beta);
    assert_eq!(
        to_json(records(&o, &place())),
        to_json(records(&reviews(), &place()))
    );
}

#[test]
fn an_endpoint_without_a_ready_condition_is_ready() {
    let mut o = reviews();
    o.slices.clear();
    add_slice(
        &mut o,
        slice_v1(
            "prod",
            "reviews",
            json!([{"name": "http", "port": 8080}]),
            &[("10.0.0.2", Some("r2"), None)],
        ),
    );
    assert!(records(&o, &place()).contains_key("WorkloadEntry/prod/r2.east"));
}

#[test]
fn a_service_without_a_selector_has_its_endpoints_inline() {
    let mut o = Objects::default();
    o.services.extend([service(
        "default",
        "db",
        json!({"clusterIP": "None", "ports": [{"port": 5432, "appProtocol": "tcp"}]}),
    )]);
    add_slice(
        &mut o,
        slice_v1(
            "default",
            "db",
            json!([{"port": 5432}]),
            &[
                ("192.0.2.7", None, Some(true)),
                ("192.0.2.8", None, Some(false)),
            ],
        ),
    );
    let rs = records(&o, &place());
    assert_eq!(rs.len(), 1);
    let Spec::ServiceEntry(se) = spec_of(&rs, "ServiceEntry/default/db") else {
        panic!()
    };
    assert!(se.addresses.is_empty(), "headless");
    assert!(se.workload_selector.is_none());
    assert_eq!(se.ports[0].name, "port-5432", "the one unnamed port");
    assert_eq!(se.ports[0].protocol().as_str(), "TCP", "by appProtocol");
    assert_eq!(se.endpoints.len(), 1, "the ready one");
    assert_eq!(se.endpoints[0].address, "192.0.2.7");
    assert_eq!(
        se.endpoints[0].ports,
        [("port-5432".to_string(), 5432)].into()
    );
    assert_eq!(se.endpoints[0].labels["topology.istio.io/cluster"], "east");
    rs["ServiceEntry/default/db"].validate().unwrap();
}

#[test]
fn a_pod_on_a_node_without_topology_labels_has_no_locality() {
    let mut o = reviews();
    o.nodes
        .extend([node("n1", json!({"kubernetes.io/hostname": "n1"}))]);
    let rs = records(&o, &place());
    let Spec::WorkloadEntry(we) = spec_of(&rs, "WorkloadEntry/prod/r1.east") else {
        panic!()
    };
    assert_eq!(we.locality, None);
    // A node that is not listed (yet) is the same.
    o.nodes.clear();
    let rs = records(&o, &place());
    let Spec::WorkloadEntry(we) = spec_of(&rs, "WorkloadEntry/prod/r1.east") else {
        panic!()
    };
    assert_eq!(we.locality, None);
}

#[test]
fn a_namespace_or_pod_network_label_wins_over_the_clusters() {
    let mut o = reviews();
    let ns =
        json!({"metadata": {"name": "prod", "labels": {"topology.istio.io/network": "net-ns"}}});
    o.namespaces
        .insert("prod".into(), serde_json::from_value(ns).unwrap());
    let network = |o: &Objects| {
        let rs = records(o, &place());
        let Spec::WorkloadEntry(we) = spec_of(&rs, "WorkloadEntry/prod/r1.east") else {
            panic!()
        };
        (
            we.network.clone().unwrap(),
            we.labels["topology.istio.io/network"].clone(),
        )
    };
    assert_eq!(network(&o), ("net-ns".into(), "net-ns".into()));
    o.pods.extend([pod(
        "prod",
        "r1",
        "n1",
        json!({"app": "reviews", "topology.istio.io/network": "net-pod", "security.istio.io/tlsMode": "istio"}),
    )]);
    assert_eq!(network(&o), ("net-pod".into(), "net-pod".into()));
    let rs = records(&o, &place());
    let Spec::WorkloadEntry(we) = spec_of(&rs, "WorkloadEntry/prod/r1.east") else {
        panic!()
    };
    assert_eq!(
        we.labels["security.istio.io/tlsMode"], "istio",
        "a sidecar: mTLS"
    );
}

#[test]
fn udp_ports_external_names_and_unknown_pods_are_left_out() {
    let mut o = reviews();
    o.services.extend([
        service("prod", "dns", json!({"selector": {"app": "dns"}, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]})),
        service("prod", "ext", json!({"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]})),
    ]);
    // A ready endpoint whose pod is not listed yet.
    add_slice(
        &mut o,
        json!({
            "metadata": {"name": "reviews-zzz", "namespace": "prod",
                         "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.3"], "targetRef": {"kind": "Pod", "name": "r3"}}],
        }),
    );
    let keys: Vec<String> = records(&o, &place()).into_keys().collect();
    assert_eq!(
        keys,
        ["ServiceEntry/prod/reviews", "WorkloadEntry/prod/r1.east"]
    );
}

#[test]
fn a_pod_behind_two_services_is_one_entry_with_both_ports() {
    let mut o = reviews();
    o.services.extend([service(
        "prod",
        "reviews-admin",
        json!({"selector": {"app": "reviews"}, "ports": [{"name": "admin", "port": 9901, "targetPort": 9901}]}),
    )]);
    add_slice(
        &mut o,
        slice_v1(
            "prod",
            "reviews-admin",
            json!([{"name": "admin", "port": 9901}]),
            &[("10.0.0.1", Some("r1"), Some(true))],
        ),
    );
    let rs = records(&o, &place());
    let Spec::WorkloadEntry(we) = spec_of(&rs, "WorkloadEntry/prod/r1.east") else {
        panic!()
    };
    assert_eq!(
        we.ports,
        [("admin".to_string(), 9901), ("http".to_string(), 8080)].into()
    );
    assert_eq!(rs.len(), 3);
}

#[test]
fn the_diff_writes_only_what_differs_and_deletes_what_is_gone() {
    let stored = to_json(records(&reviews(), &place()));
    assert!(diff(&stored, &stored).is_empty(), "nothing to write");
    // r1 turns not ready, r2 ready.
    let mut o = reviews();
    o.slices.clear();
    add_slice(
        &mut o,
        slice_v1(
            "prod",
            "reviews",
            json!([{"name": "http", "port": 8080}]),
            &[
                ("10.0.0.1", Some("r1"), Some(false)),
                ("10.0.0.2", Some("r2"), Some(true)),
            ],
        ),
    );
    let d = diff(&to_json(records(&o, &place())), &stored);
    assert_eq!(
        d.upserts
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["WorkloadEntry/prod/r2.east"]
    );
    assert_eq!(d.deletes, ["WorkloadEntry/prod/r1.east"]);
    // The service goes: everything of it is deleted.
    let d = diff(&to_json(records(&Objects::default(), &place())), &stored);
    assert!(d.upserts.is_empty());
    assert_eq!(d.deletes.len(), 2);
}
