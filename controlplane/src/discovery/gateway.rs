//! East-west gateways in the registry: a gateway's config stream registers
//! it for the network its identity names ([`register_gateway`]), where
//! agents on other networks reach that network's endpoints (split horizon,
//! [`crate::push::horizon`]); its end removes it
//! ([`gateway_disconnected`]). A gateway is never an endpoint of a
//! service: it registers no WorkloadEntry.
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::Status;
use trellis_api::v1::ProxyNode;
use trellis_identity::SpiffeId;

use crate::node::{now, Node};
use crate::push::horizon::Horizon;
use crate::raft::state::registry::{gateway_key, Conn, GatewayRecord};
use crate::raft::state::{Command, RegistryCommand};

/// A registered gateway, as its stream knows it.
#[derive(Clone, Debug)]
pub struct GatewayRegistration {
    pub key: String,
    pub conn: Conn,
}

/// The cluster and network of this node: those of a stream that says none.
fn home(node: &Node) -> (String, String) {
    node.read_state(|s| s.store.node_topology(node.id).unwrap_or_default())
}

/// Where the end of a stream is: a gateway on the network of its identity,
/// an agent on the network it says, else on this node's.
pub fn horizon(node: &Node, id: &SpiffeId, proxy: &ProxyNode) -> Horizon {
    match id.gateway_network() {
        Some(network) => Horizon {
            network: network.to_string(),
            gateway: true,
        },
        None if !proxy.network.is_empty() => Horizon {
            network: proxy.network.clone(),
            gateway: false,
        },
        None => Horizon {
            network: home(node).1,
            gateway: false,
        },
    }
}

/// Registers the east-west gateway of a stream, if `id` is a gateway's:
/// for the network its identity names (a `network` it says must be that
/// one), at the addresses it advertises (`IP:PORT`, at least one).
pub async fn register_gateway(
    node: &Arc<Node>,
    id: &SpiffeId,
    proxy: &ProxyNode,
    conn: Conn,
) -> Result<Option<GatewayRegistration>, Status> {
    let Some(network) = id.gateway_network() else {
        return Ok(None);
    };
    let record = gateway_record(network, proxy, &home(node).0, conn)?;
    let key = gateway_key(network, &proxy.name);
    let addresses = record.addresses.join(",");
    node.write(Command::Registry(RegistryCommand::RegisterGateway {
        key: key.clone(),
        record,
    }))
    .await?;
    tracing::info!(%key, %addresses, "east-west gateway registered");
    Ok(Some(GatewayRegistration { key, conn }))
}

/// The record of the gateway of `network` that sent `proxy` (pure).
fn gateway_record(
    network: &str,
    proxy: &ProxyNode,
    home_cluster: &str,
    conn: Conn,
) -> Result<GatewayRecord, Status> {
    if !proxy.network.is_empty() && proxy.network != network {
        return Err(Status::permission_denied(format!(
            "node.network: this gateway's identity is for network `{network}`, not `{}`",
            proxy.network
        )));
    }
    if proxy.addresses.is_empty() {
        return Err(Status::invalid_argument(
            "node.addresses: a gateway must say where other networks reach it (--advertise IP:PORT)",
        ));
    }
    if let Some(bad) = proxy
        .addresses
        .iter()
        .find(|a| a.parse::<SocketAddr>().is_err())
    {
        return Err(Status::invalid_argument(format!(
            "node.addresses: `{bad}` is not IP:PORT"
        )));
    }
    Ok(GatewayRecord {
        network: network.to_string(),
        cluster: if proxy.cluster.is_empty() {
            home_cluster.to_string()
        } else {
            proxy.cluster.clone()
        },
        addresses: proxy.addresses.clone(),
        conn,
        registered_at: now(),
    })
}

/// Removes the gateway of a stream that ended (unless it registered again
/// through another stream meanwhile).
pub async fn gateway_disconnected(node: &Arc<Node>, g: GatewayRegistration) {
    let cmd = Command::Registry(RegistryCommand::GatewayDisconnected {
        key: g.key.clone(),
        conn: g.conn,
    });
    match node.write(cmd).await {
        Ok(_) => tracing::info!(key = %g.key, "east-west gateway disconnected"),
        Err(e) => {
            tracing::warn!(key = %g.key, error = %e.message(), "recording a gateway's disconnection")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(network: &str, addresses: &[&str]) -> ProxyNode {
        ProxyNode {
            name: "gw-1".into(),
            namespace: "trellis-system".into(),
            network: network.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_gateway_registers_only_for_its_identitys_network_at_ip_port() {
        let conn = Conn { node: 1, stream: 7 };
        let r = gateway_record("net-b", &node("", &["192.0.2.1:15443"]), "c2", conn).unwrap();
        assert_eq!(r.network, "net-b");
        assert_eq!(r.cluster, "c2");
        assert_eq!(r.addresses, vec!["192.0.2.1:15443"]);
        for (p, want) in [
            (node("net-a", &["192.0.2.1:15443"]), "not `net-a`"),
            (node("net-b", &[]), "--advertise"),
            (node("", &["192.0.2.1"]), "not IP:PORT"),
        ] {
            let e = gateway_record("net-b", &p, "c2", conn).unwrap_err();
            assert!(e.message().contains(want), "{}", e.message());
        }
    }
}
