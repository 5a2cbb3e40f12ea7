//! The kind path of the Kubernetes multi-cluster tests, for machines with
//! Docker and kind (this one has neither kind nor a way to pull its node
//! image): a topology file names the clusters, their networks and zones;
//! [`plan`] turns it into each cluster's kind configuration (pod and
//! service ranges distinct across the topology, a node per zone with its
//! topology labels), its Helm values (cluster name, network, images, the
//! gateway on a NodePort), which clusters share a network (their pods get
//! routes to each other), and the join tokens to make. `trellis-kind
//! plan TOPOLOGY DIR` writes them; `e2e/kind/up.sh` runs kind, Docker,
//! Helm and `trellis` with them. See docs/kubernetes.md ("kind").
use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The NodePort of every cluster's east-west gateway (15443 inside).
pub const GATEWAY_NODE_PORT: u16 = 31443;

/// At most this many clusters: ranges are 10.(10+i).0.0/16 for pods and
/// 10.(100+i).0.0/16 for services.
pub const MAX_CLUSTERS: usize = 8;

/// `e2e/kind/topology.yaml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    pub clusters: Vec<ClusterSpec>,
}

/// A Kubernetes cluster of the topology.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    pub name: String,
    pub network: String,
    pub region: String,
    /// One worker node per zone (at least one).
    pub zones: Vec<String>,
}

/// What [`plan`] makes of one cluster.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlan {
    pub name: String,
    pub network: String,
    pub pod_subnet: String,
    pub service_subnet: String,
    /// `kind create cluster --config` input.
    pub kind_config: serde_json::Value,
    /// The chart's values (`helm install -f`), but the join tokens.
    pub values: serde_json::Value,
    /// The other clusters on its network: their pods are routed to.
    pub same_network: Vec<String>,
}

/// Checks `topology` and plans each cluster.
pub fn plan(topology: &Topology, image_tag: &str) -> anyhow::Result<Vec<ClusterPlan>> {
    let clusters = &topology.clusters;
    if clusters.is_empty() {
        bail!("clusters: at least one");
    }
    if clusters.len() > MAX_CLUSTERS {
        bail!("clusters: at most {MAX_CLUSTERS}, not {}", clusters.len());
    }
    let mut names = BTreeSet::new();
    for (i, c) in clusters.iter().enumerate() {
        check_name(&format!("clusters[{i}].name"), &c.name)?;
        check_name(&format!("clusters[{i}].network"), &c.network)?;
        if !names.insert(&c.name) {
            bail!("clusters[{i}].name: {} is taken by another cluster", c.name);
        }
        if c.zones.is_empty() {
            bail!("clusters[{i}].zones: at least one");
        }
        for (j, z) in c.zones.iter().enumerate() {
            check_name(&format!("clusters[{i}].zones[{j}]"), z)?;
        }
    }
    let mut by_network: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in clusters {
        by_network.entry(&c.network).or_default().push(&c.name);
    }
    Ok(clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let pod_subnet = format!("10.{}.0.0/16", 10 + i);
            let service_subnet = format!("10.{}.0.0/16", 100 + i);
            let labels = |zone: &str| {
                json!({"topology.kubernetes.io/region": c.region,
                       "topology.kubernetes.io/zone": zone})
            };
            let mut nodes = vec![json!({"role": "control-plane", "labels": labels(&c.zones[0])})];
            nodes.extend(
                c.zones
                    .iter()
                    .map(|z| json!({"role": "worker", "labels": labels(z)})),
            );
            let kind_config = json!({
                "kind": "Cluster",
                "apiVersion": "kind.x-k8s.io/v1alpha4",
                "name": c.name,
                "networking": {"podSubnet": pod_subnet, "serviceSubnet": service_subnet},
                "nodes": nodes,
            });
            let values = json!({
                "cluster": {"name": c.name, "network": c.network},
                "images": {"tag": image_tag, "pullPolicy": "Never"},
                "controlplane": {"locality": format!("{}/{}", c.region, c.zones[0])},
                "eastwestGateway": {
                    "service": {"type": "NodePort", "nodePort": GATEWAY_NODE_PORT},
                },
            });
            let same_network = by_network[c.network.as_str()]
                .iter()
                .filter(|n| **n != c.name)
                .map(|n| n.to_string())
                .collect();
            ClusterPlan {
                name: c.name.clone(),
                network: c.network.clone(),
                pod_subnet,
                service_subnet,
                kind_config,
                values,
                same_network,
            }
        })
        .collect())
}

/// Reads a topology file's text.
pub fn parse(text: &str) -> anyhow::Result<Topology> {
    trellis_api::yaml::from_str(text).context("topology")
}

/// Names of clusters, networks and zones: DNS labels (kind and Docker
/// name things after them).
fn check_name(field: &str, name: &str) -> anyhow::Result<()> {
    if name.len() > 40 || !trellis_api::config::is_dns1123_label(name) {
        bail!("{field}: {name:?} is not a DNS label (a-z, 0-9, '-', at most 40)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: &str = include_str!("../kind/topology.yaml");

    #[test]
    fn the_example_topology_plans_distinct_ranges_and_a_node_per_zone() {
        let plans = plan(&parse(TOPOLOGY).expect("parses"), "dev").expect("plans");
        assert!(plans.len() >= 2);
        let pods: BTreeSet<_> = plans.iter().map(|p| &p.pod_subnet).collect();
        let services: BTreeSet<_> = plans.iter().map(|p| &p.service_subnet).collect();
        assert_eq!(pods.len(), plans.len());
        assert_eq!(services.len(), plans.len());
        assert!(pods.is_disjoint(&services));
        let topology = parse(TOPOLOGY).expect("parses");
        for (p, c) in plans.iter().zip(&topology.clusters) {
            let nodes = p.kind_config["nodes"].as_array().expect("nodes");
            assert_eq!(nodes.len(), 1 + c.zones.len(), "{}", p.name);
            assert_eq!(p.values["cluster"]["network"], c.network);
            assert_eq!(
                p.values["eastwestGateway"]["service"]["nodePort"],
                GATEWAY_NODE_PORT
            );
        }
    }

    #[test]
    fn clusters_on_one_network_are_routed_to_each_other_only() {
        let t = parse(
            "clusters:\n\
             - {name: a, network: n1, region: r, zones: [z1]}\n\
             - {name: b, network: n1, region: r, zones: [z1]}\n\
             - {name: c, network: n2, region: r, zones: [z1, z2]}\n",
        )
        .expect("parses");
        let plans = plan(&t, "dev").expect("plans");
        assert_eq!(plans[0].same_network, ["b"]);
        assert_eq!(plans[1].same_network, ["a"]);
        assert!(plans[2].same_network.is_empty());
    }

    #[test]
    fn a_bad_topology_is_refused_naming_the_field() {
        for (text, field) in [
            ("clusters: []", "clusters: at least one"),
            (
                "clusters: [{name: A, network: nw, region: r, zones: [z]}]",
                "clusters[0].name",
            ),
            (
                "clusters: [{name: a, network: nw, region: r, zones: []}]",
                "clusters[0].zones",
            ),
            (
                "clusters: [{name: a, network: nw, region: r, zones: [z]}, \
                 {name: a, network: m, region: r, zones: [z]}]",
                "clusters[1].name: a is taken",
            ),
        ] {
            let err = plan(&parse(text).expect("parses"), "dev").expect_err(text);
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let err = parse("clusters: [{name: a, netwrk: nw}]").expect_err("unknown field");
        assert!(format!("{err:#}").contains("netwrk"), "{err:#}");
    }
}
