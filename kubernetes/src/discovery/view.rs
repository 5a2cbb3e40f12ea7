//! The mesh's view of one cluster (pure): from what the API server lists,
//! the records discovery writes, as Istio resources agents already know.
//!
//! - Each Service is a ServiceEntry named like it, host
//!   `NAME.NS.svc.DOMAIN`, its cluster IP as address, its TCP ports
//!   (protocol from `appProtocol`, else the port name's prefix, as Istio
//!   does), `MESH_INTERNAL`, and the Service's selector as
//!   `workloadSelector`: like a Kubernetes Service in Istio, it selects the
//!   pods of every cluster and the WorkloadEntries (VMs) of its namespace
//!   that carry its labels.
//! - Each pod that is a ready endpoint of some Service is a WorkloadEntry
//!   `POD.CLUSTER`: its IP, its labels, its service account, the
//!   cluster's network (or its namespace's or its own
//!   `topology.istio.io/network` label), the `topology.istio.io/cluster`
//!   label, the locality of its Node's topology labels, and the port each
//!   Service port name resolved to on it. A pod without a sidecar (no
//!   `security.istio.io/tlsMode: istio` label, which Istio's injector
//!   sets) is reached in plaintext.
//! - A Service without a selector has its ready endpoints inline.
//!
//! Not-ready endpoints, UDP and SCTP ports and `ExternalName` Services
//! are left out.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServicePort as KubePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use trellis_api::annotations;
use trellis_api::config::{
    ApiVersion, Location, Metadata, Protocol, Resolution, Resource, ServiceEntry, ServicePort,
    WorkloadEntry, WorkloadLabelSelector,
};
use trellis_api::topology::{
    CLUSTER_LABEL, NETWORK_LABEL, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL,
};

use super::slice::EndpointSlice;

/// The label by which a workload says it has a sidecar (`istio`) or not.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// What the API server lists, by `(namespace, name)` (nodes and
/// namespaces by name).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: BTreeMap<(String, String), Service>,
    pub slices: BTreeMap<(String, String), EndpointSlice>,
    pub pods: BTreeMap<(String, String), Pod>,
    pub nodes: BTreeMap<String, Node>,
    pub namespaces: BTreeMap<String, Namespace>,
}

/// Where the cluster is in the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    pub cluster: String,
    pub network: String,
    /// The DNS domain of service names.
    pub domain: String,
}

/// The records of the cluster, by key `KIND/NAMESPACE/NAME`.
pub fn records(objects: &Objects, place: &Place) -> BTreeMap<String, Resource> {
    let source = format!("kubernetes/{}", place.cluster);
    let meta = |ns: &str, name: &str| Metadata {
        name: name.to_string(),
        namespace: ns.to_string(),
        labels: BTreeMap::new(),
        annotations: [(annotations::SOURCE.to_string(), source.clone())].into(),
    };
    let mut out = BTreeMap::new();
    let mut pods: BTreeMap<(String, String), WorkloadEntry> = BTreeMap::new();
    // Each Service's IP slices, found once (not a scan of every slice per
    // Service: 1,000 Services of 10,000 pods made that the cost).
    let mut slices_of: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for ((ns, _), slice) in &objects.slices {
        if let (Some(service), true) = (slice.service(), slice.is_ip()) {
            slices_of.entry((ns, service)).or_default().push(slice);
        }
    }
    for ((ns, name), svc) in &objects.services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let kube_ports: Vec<&KubePort> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .collect();
        if kube_ports.is_empty() {
            continue;
        }
        let ports: Vec<ServicePort> = kube_ports.iter().map(|p| service_port(p)).collect();
        // The mesh's port name of a slice port's (unnamed: the only one).
        let port_name = |slice_name: Option<&str>| -> Option<String> {
            let given = slice_name.unwrap_or_default();
            kube_ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == given)
                .map(|p| port_name(p))
        };
        let selector = spec.selector.clone().filter(|s| !s.is_empty());
        let mut inline = Vec::new();
        let slices = slices_of.get(&(ns.as_str(), name.as_str()));
        for slice in slices.into_iter().flatten() {
            let slice_ports: BTreeMap<String, u32> = slice
                .ports
                .iter()
                .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
                .filter_map(|p| Some((port_name(p.name.as_deref())?, p.port?)))
                .collect();
            for ep in slice.endpoints.iter().filter(|e| e.is_ready()) {
                let Some(address) = ep.addresses.first() else {
                    continue;
                };
                match (&selector, ep.pod()) {
                    (Some(_), Some(pod_name)) => {
                        let key = (ns.clone(), pod_name.to_string());
                        let Some(pod) = objects.pods.get(&key) else {
                            // Listed before its pod: taken at the next batch.
                            continue;
                        };
                        let we = pods
                            .entry(key)
                            .or_insert_with(|| pod_entry(pod, address, ns, objects, place));
                        for (k, v) in &slice_ports {
                            we.ports.entry(k.clone()).or_insert(*v);
                        }
                    }
                    (Some(_), None) => {}
                    (None, _) => inline.push(inline_entry(address, &slice_ports, place)),
                }
            }
        }
        inline.sort_by(|a, b| a.address.cmp(&b.address));
        inline.dedup_by(|a, b| a.address == b.address);
        let addresses = spec
            .cluster_ip
            .iter()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .cloned()
            .collect();
        let se = ServiceEntry {
            hosts: vec![format!("{name}.{ns}.svc.{}", place.domain)],
            addresses,
            ports,
            location: Some(Location::MeshInternal),
            resolution: Resolution::Static,
            endpoints: inline,
            workload_selector: selector.map(|labels| WorkloadLabelSelector {
                labels: labels.into_iter().collect(),
            }),
            ..Default::default()
        };
        out.insert(
            format!("ServiceEntry/{ns}/{name}"),
            Resource {
                api_version: ApiVersion::NetworkingV1,
                metadata: meta(ns, name),
                spec: se.into(),
            },
        );
    }
    for ((ns, pod), we) in pods {
        let name = format!("{pod}.{}", place.cluster);
        let mut metadata = meta(&ns, &name);
        metadata.labels = we.labels.clone();
        out.insert(
            format!("WorkloadEntry/{ns}/{name}"),
            Resource {
                api_version: ApiVersion::NetworkingV1,
                metadata,
                spec: we.into(),
            },
        );
    }
    out
}

/// A Service port's name in the mesh: its own, or `port-NUMBER` for the
/// one unnamed port a Service may have (its protocol is then sniffed).
fn port_name(p: &KubePort) -> String {
    match p.name.as_deref() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => format!("port-{}", p.port),
    }
}

fn service_port(p: &KubePort) -> ServicePort {
    let number = u32::try_from(p.port).unwrap_or_default();
    ServicePort {
        number,
        // appProtocol when it is one the mesh knows; else the name says.
        protocol: p
            .app_protocol
            .as_deref()
            .and_then(Protocol::parse)
            .map(|p| p.as_str().to_string()),
        name: port_name(p),
        target_port: match &p.target_port {
            Some(IntOrString::Int(t)) => u32::try_from(*t).ok().filter(|t| *t != number),
            _ => None,
        },
    }
}

/// The entry of `pod` at `address`, its ports not yet filled in.
fn pod_entry(
    pod: &Pod,
    address: &str,
    ns: &str,
    objects: &Objects,
    place: &Place,
) -> WorkloadEntry {
    let mut labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let ns_label = objects
        .namespaces
        .get(ns)
        .and_then(|n| n.metadata.labels.as_ref()?.get(NETWORK_LABEL).cloned());
    let network = labels
        .get(NETWORK_LABEL)
        .cloned()
        .or(ns_label)
        .unwrap_or_else(|| place.network.clone());
    mark_place(&mut labels, &network, place);
    let spec = pod.spec.as_ref();
    let node = spec
        .and_then(|s| s.node_name.as_ref())
        .and_then(|n| objects.nodes.get(n));
    WorkloadEntry {
        address: address.to_string(),
        labels,
        network: Some(network).filter(|n| !n.is_empty()),
        locality: node.and_then(locality),
        service_account: Some(
            spec.and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
        ),
        ..Default::default()
    }
}

/// An endpoint of a Service without a selector: an address only.
fn inline_entry(address: &str, ports: &BTreeMap<String, u32>, place: &Place) -> WorkloadEntry {
    let mut labels = BTreeMap::new();
    mark_place(&mut labels, &place.network, place);
    WorkloadEntry {
        address: address.to_string(),
        ports: ports.clone(),
        labels,
        network: Some(place.network.clone()).filter(|n| !n.is_empty()),
        ..Default::default()
    }
}

/// The cluster and network labels, and plaintext unless the workload says
/// it has a sidecar.
fn mark_place(labels: &mut BTreeMap<String, String>, network: &str, place: &Place) {
    labels.insert(CLUSTER_LABEL.into(), place.cluster.clone());
    if !network.is_empty() {
        labels.insert(NETWORK_LABEL.into(), network.to_string());
    }
    if labels.get(TLS_MODE_LABEL).map(String::as_str) != Some("istio") {
        labels.insert(TLS_MODE_LABEL.into(), "disabled".into());
    }
}

/// `region[/zone[/subzone]]` of a Node's topology labels.
fn locality(node: &Node) -> Option<String> {
    let labels = node.metadata.labels.as_ref()?;
    let mut parts = vec![labels.get(REGION_LABEL)?.clone()];
    if let Some(zone) = labels.get(ZONE_LABEL) {
        parts.push(zone.clone());
        parts.extend(labels.get(SUBZONE_LABEL).cloned());
    }
    Some(parts.join("/"))
}
