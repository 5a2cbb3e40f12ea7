//! Split horizon (pure): what an agent on one network is sent of the
//! endpoints on the others, as Istio's control plane does it.
//!
//! An endpoint on the agent's network, or with no network said (Istio: every
//! caller's own), is sent as it is. One on another network is sent with its
//! address replaced by one of that network's east-west gateways
//! ([`annotations::GATEWAY`]): the agent connects there with the endpoint's
//! SNI and expects the endpoint's identity, and the gateway splices the
//! bytes to it. Each endpoint stays one entry, its labels (subsets), health
//! and locality unchanged, so a gateway carries a share of the traffic in
//! proportion to the healthy endpoints behind it (an unhealthy endpoint is
//! sent, and skipped by the agent, as it would be directly); a network's
//! endpoints are spread over its gateways by key. A network with no
//! gateway connected contributes no endpoints: never a black hole. A
//! gateway is sent only its own network's endpoints: it never forwards to
//! another gateway.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use trellis_api::annotations;

use super::item::{annotate, Item, Type};
use crate::raft::state::registry::GatewayRecord;

/// The east-west gateways connected now, by network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gateways(BTreeMap<String, Vec<SocketAddr>>);

impl Gateways {
    /// From the registry's records; addresses sorted, so that every node
    /// sends an endpoint to the same gateway.
    pub fn new<'a>(records: impl IntoIterator<Item = &'a GatewayRecord>) -> Gateways {
        let mut by_network: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        for r in records {
            let addrs = by_network.entry(r.network.clone()).or_default();
            for a in &r.addresses {
                match a.parse() {
                    Ok(a) => addrs.push(a),
                    Err(_) => {
                        tracing::warn!(network = %r.network, address = %a, "a gateway's address is not IP:PORT; not used")
                    }
                }
            }
        }
        by_network.retain(|_, addrs| {
            addrs.sort_unstable();
            addrs.dedup();
            !addrs.is_empty()
        });
        Gateways(by_network)
    }

    /// The gateway of `network` that carries the endpoint named `key`.
    fn for_endpoint(&self, network: &str, key: &str) -> Option<SocketAddr> {
        let addrs = self.0.get(network)?;
        let i = fnv1a(key.as_bytes()) % addrs.len() as u64;
        addrs.get(i as usize).copied()
    }
}

/// Where the receiving end of a stream is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Horizon {
    /// Its network; empty: not known, and every endpoint is sent as it is.
    pub network: String,
    /// It is an east-west gateway.
    pub gateway: bool,
}

impl Horizon {
    /// `item` as this end is sent it; `None`: not sent.
    pub fn view(&self, item: &Arc<Item>, gateways: &Gateways) -> Option<Arc<Item>> {
        let network = &*item.network;
        if item.ty != Type::Endpoints
            || network.is_empty()
            || self.network.is_empty()
            || network == self.network
        {
            return Some(item.clone());
        }
        if self.gateway {
            return None;
        }
        let via = gateways.for_endpoint(network, &item.key)?;
        let mut entry: serde_json::Value = serde_json::from_slice(&item.body).ok()?;
        *entry.get_mut("spec")?.get_mut("address")? = via.ip().to_string().into();
        annotate(&mut entry, &[(annotations::GATEWAY, via.to_string())])?;
        Some(Arc::new(Item {
            key: item.key.clone(),
            ty: item.ty,
            namespace: item.namespace.clone(),
            body: Bytes::from(serde_json::to_vec(&entry).ok()?),
            visibility: item.visibility.clone(),
            network: item.network.clone(),
        }))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::item::Visibility;
    use crate::raft::state::registry::Conn;

    fn endpoint(key: &str, network: &str) -> Arc<Item> {
        let body = serde_json::json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "WorkloadEntry",
            "metadata": {"name": key, "namespace": "default"},
            "spec": {"address": "10.2.0.7", "network": network,
                     "labels": {"app": "reviews", "version": "v3"},
                     "serviceAccount": "reviews", "locality": "eu/b"},
        });
        Arc::new(Item {
            key: key.into(),
            ty: Type::Endpoints,
            namespace: "default".into(),
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
            visibility: Visibility::Namespace,
            network: network.into(),
        })
    }

    fn gateways(nets: &[(&str, &[&str])]) -> Gateways {
        let records: Vec<GatewayRecord> = nets
            .iter()
            .map(|(net, addrs)| GatewayRecord {
                network: net.to_string(),
                cluster: "c".into(),
                addresses: addrs.iter().map(|a| a.to_string()).collect(),
                conn: Conn { node: 1, stream: 1 },
                registered_at: 0,
            })
            .collect();
        Gateways::new(&records)
    }

    fn json(i: &Item) -> serde_json::Value {
        serde_json::from_slice(&i.body).unwrap()
    }

    fn agent(network: &str) -> Horizon {
        Horizon {
            network: network.into(),
            gateway: false,
        }
    }

    #[test]
    fn endpoints_on_the_agents_network_or_none_are_sent_as_they_are() {
        let gws = gateways(&[("net-b", &["192.0.2.1:15443"])]);
        for (agent_net, ep_net) in [("net-a", "net-a"), ("net-a", ""), ("", "net-b")] {
            let e = endpoint("workload/default/r", ep_net);
            let seen = agent(agent_net).view(&e, &gws).unwrap();
            assert!(Arc::ptr_eq(&seen, &e), "{agent_net} {ep_net}");
        }
    }

    #[test]
    fn an_endpoint_on_another_network_is_reached_through_its_gateway() {
        let gws = gateways(&[("net-b", &["192.0.2.1:15443"])]);
        let e = endpoint("workload/default/r", "net-b");
        let seen = agent("net-a").view(&e, &gws).unwrap();
        let j = json(&seen);
        assert_eq!(j["spec"]["address"], "192.0.2.1");
        assert_eq!(
            j["metadata"]["annotations"][annotations::GATEWAY],
            "192.0.2.1:15443"
        );
        // What the agent selects on, verifies and balances by is the
        // endpoint's.
        for field in ["labels", "serviceAccount", "locality", "network"] {
            assert_eq!(j["spec"][field], json(&e)["spec"][field], "{field}");
        }
        assert_eq!(seen.key, e.key);
    }

    #[test]
    fn a_network_without_a_gateway_contributes_no_endpoints() {
        let gws = gateways(&[("net-c", &["192.0.2.9:15443"])]);
        assert!(agent("net-a")
            .view(&endpoint("workload/default/r", "net-b"), &gws)
            .is_none());
        // A gateway whose only address does not read is no gateway.
        let bad = gateways(&[("net-b", &["gw.example:15443"])]);
        assert_eq!(bad, Gateways::default());
    }

    #[test]
    fn a_gateway_is_sent_only_its_own_networks_endpoints() {
        let gws = gateways(&[("net-a", &["192.0.2.1:15443"])]);
        let gw = Horizon {
            network: "net-b".into(),
            gateway: true,
        };
        assert!(gw
            .view(&endpoint("workload/default/r", "net-a"), &gws)
            .is_none());
        assert!(gw
            .view(&endpoint("workload/default/r", "net-b"), &gws)
            .is_some());
    }

    #[test]
    fn a_networks_endpoints_are_spread_over_its_gateways_alike_on_every_node() {
        let a = gateways(&[("net-b", &["192.0.2.2:15443", "192.0.2.1:15443"])]);
        let b = gateways(&[("net-b", &["192.0.2.1:15443", "192.0.2.2:15443"])]);
        assert_eq!(a, b);
        let mut used = std::collections::BTreeMap::new();
        for i in 0..200 {
            let e = endpoint(&format!("workload/default/r-{i}"), "net-b");
            let via = json(&agent("net-a").view(&e, &a).unwrap())["metadata"]["annotations"]
                [annotations::GATEWAY]
                .as_str()
                .unwrap()
                .to_string();
            *used.entry(via).or_insert(0) += 1;
        }
        assert_eq!(used.len(), 2, "{used:?}");
        assert!(used.values().all(|n| *n > 60), "{used:?}");
    }
}
