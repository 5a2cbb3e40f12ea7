//! Envoy as network C's east-west gateway: one listener with the TLS
//! inspector, a filter chain per SNI of the service behind it (Istio's
//! `outbound_.PORT_.SUBSET_.HOST` as the agents send it, one per port) and a `tcp_proxy` from each to
//! the server agent's inbound port. TLS passes through untouched, as
//! through Istio's east-west gateway (which matches the same SNIs with
//! `sni_cluster`); one worker (`--concurrency 1`), no access log, admin on
//! port 15000 of its address.
use std::path::Path;

use serde_json::{json, Value};
use trellis_e2e::Proc;

use crate::net::wait_http_ok;
use trellis_transport::sni::Sni;

use crate::proxy::envoy::{address, admin, bootstrap, cluster, spawn};

/// What the gateway passes through: the SNIs of `host`'s `ports`, to
/// `endpoint` (the server agent's inbound, `IP:PORT`).
pub struct Passthrough<'a> {
    pub listen_ip: &'a str,
    pub listen_port: u16,
    pub host: &'a str,
    pub ports: &'a [u16],
    pub endpoint: (&'a str, u16),
}

/// The static bootstrap of the gateway.
pub fn gateway_bootstrap(p: &Passthrough) -> Value {
    const CLUSTER: &str = "endpoint";
    let chains: Vec<Value> = p
        .ports
        .iter()
        .map(|port| {
            json!({
                "filter_chain_match": {"server_names": [Sni::encode(*port, "", p.host)]},
                "filters": [{
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "passthrough",
                        "cluster": CLUSTER,
                    },
                }],
            })
        })
        .collect();
    let listener = json!({
        "name": "eastwest",
        "address": address(p.listen_ip, p.listen_port),
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
        }],
        "filter_chains": chains,
    });
    let (ip, port) = p.endpoint;
    let endpoint = cluster(CLUSTER, address(ip, port), false, None);
    bootstrap(p.listen_ip, vec![listener], vec![endpoint])
}

/// Writes the bootstrap to `dir`, starts Envoy and waits until it is ready.
pub async fn start(envoy: &Path, dir: &Path, p: &Passthrough<'_>) -> anyhow::Result<Proc> {
    let mut proc = spawn(envoy, dir, "gateway", &gateway_bootstrap(p))?;
    wait_http_ok(admin(p.listen_ip), "/ready", &mut proc).await?;
    Ok(proc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_passthrough_chain_per_sni_to_the_endpoint() {
        let b = gateway_bootstrap(&Passthrough {
            listen_ip: "127.60.1.50",
            listen_port: 15443,
            host: "echo-c.default.svc.cluster.local",
            ports: &[30080, 30090],
            endpoint: ("127.60.1.40", 15006),
        });
        let l = &b["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["port_value"], 15443);
        assert!(l["listener_filters"][0]["name"]
            .as_str()
            .unwrap()
            .ends_with("tls_inspector"));
        let chains = l["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[1]["filter_chain_match"]["server_names"][0],
            "outbound_.30090_._.echo-c.default.svc.cluster.local"
        );
        // Passed through: no TLS context on the chain or the cluster.
        assert!(chains[0].get("transport_socket").is_none());
        let f = &chains[0]["filters"][0];
        assert_eq!(f["typed_config"]["cluster"], "endpoint");
        let c = &b["static_resources"]["clusters"][0];
        assert!(c.get("transport_socket").is_none());
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"];
        assert_eq!(ep["address"]["socket_address"]["address"], "127.60.1.40");
        assert_eq!(ep["address"]["socket_address"]["port_value"], 15006);
    }
}
