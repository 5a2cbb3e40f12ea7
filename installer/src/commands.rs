//! The subcommands, one function each; output is plain text for people or
//! JSON for scripts (`-o json`).
use std::path::Path;

use clap::ValueEnum;
use serde::Serialize;
use trellis_api::v1::{
    ClusterInfo, CreateTokenRequest, Empty, GetRequest, ListClustersResponse, Member, NetworkInfo,
    PutRequest, RemoveClusterRequest, RemoveNodeRequest, RevokeTokenRequest,
};

use crate::client::{admin, status};

/// Output format.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn time(unix: i64) -> String {
    trellis_identity::rfc3339::format_rfc3339(unix.max(0) as u64)
}

/// `trellis token create`: prints the token alone on stdout.
pub async fn token_create(config: Option<&Path>, req: CreateTokenRequest) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let kind = req.kind.clone();
    let r = c.create_token(req).await.map_err(status)?.into_inner();
    eprintln!(
        "token {} ({kind}) expires {}",
        r.id,
        time(r.expires_at_unix)
    );
    println!("{}", r.token);
    Ok(())
}

#[derive(Serialize)]
struct TokenRow {
    id: String,
    kind: String,
    identity: String,
    status: String,
    uses: u32,
    max_uses: Option<u32>,
    created: String,
    expires: String,
}

/// `trellis token list`.
pub async fn token_list(config: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let tokens = c
        .list_tokens(Empty {})
        .await
        .map_err(status)?
        .into_inner()
        .tokens;
    let rows: Vec<TokenRow> = tokens
        .into_iter()
        .map(|t| TokenRow {
            id: t.id,
            identity: if t.kind == "cluster" {
                format!("{} ({})", t.cluster, t.network)
            } else {
                t.identity
            },
            kind: t.kind,
            status: t.status,
            uses: t.uses,
            max_uses: (t.max_uses > 0).then_some(t.max_uses),
            created: time(t.created_at_unix),
            expires: time(t.expires_at_unix),
        })
        .collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            println!(
                "{:<10} {:<13} {:<20} {:<9} {:<7} {:<21}",
                "ID", "KIND", "IDENTITY", "STATUS", "USES", "EXPIRES"
            );
            for r in rows {
                let uses = match r.max_uses {
                    Some(m) => format!("{}/{m}", r.uses),
                    None => r.uses.to_string(),
                };
                println!(
                    "{:<10} {:<13} {:<20} {:<9} {:<7} {:<21}",
                    r.id,
                    r.kind,
                    if r.identity.is_empty() {
                        "-"
                    } else {
                        &r.identity
                    },
                    r.status,
                    uses,
                    r.expires
                );
            }
            Ok(())
        }
    }
}

/// `trellis token revoke`.
pub async fn token_revoke(config: Option<&Path>, id: String) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    c.revoke_token(RevokeTokenRequest { id: id.clone() })
        .await
        .map_err(status)?;
    println!("token {id} revoked");
    Ok(())
}

#[derive(Serialize)]
struct MemberRow {
    id: u64,
    address: String,
    role: String,
    leader: bool,
    last_applied: Option<u64>,
}

fn print_members(members: Vec<Member>, output: Output) -> anyhow::Result<()> {
    let rows: Vec<MemberRow> = members
        .into_iter()
        .map(|m| MemberRow {
            id: m.node_id,
            address: m.address,
            role: m.role,
            leader: m.leader,
            last_applied: m.last_applied_index,
        })
        .collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            println!(
                "{:<4} {:<24} {:<8} {:<7} {:<12}",
                "ID", "ADDRESS", "ROLE", "LEADER", "APPLIED"
            );
            for r in rows {
                println!(
                    "{:<4} {:<24} {:<8} {:<7} {:<12}",
                    r.id,
                    r.address,
                    r.role,
                    if r.leader { "*" } else { "" },
                    r.last_applied
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "unreachable".into())
                );
            }
            Ok(())
        }
    }
}

/// `trellis controlplane members`.
pub async fn members(config: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let m = c
        .members(Empty {})
        .await
        .map_err(status)?
        .into_inner()
        .members;
    print_members(m, output)
}

/// `trellis controlplane remove`.
pub async fn remove(config: Option<&Path>, node_id: u64, output: Output) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let m = c
        .remove_node(RemoveNodeRequest { node_id })
        .await
        .map_err(status)?
        .into_inner()
        .members;
    eprintln!("node {node_id} removed");
    print_members(m, output)
}

#[derive(Debug, Serialize)]
struct ClusterRow {
    name: String,
    network: String,
    joined: String,
    endpoints: u32,
    ready_endpoints: u32,
    /// Seconds since the cluster last stamped itself through Raft.
    stamp_age_seconds: u64,
    /// Taken as stale by the node that answered: its endpoints are
    /// pushed as not ready.
    stale: bool,
    nodes: Vec<ClusterNodeRow>,
    /// East-west gateways registered for the cluster or on its network.
    gateways: Vec<GatewayRow>,
}

#[derive(Debug, Serialize)]
struct ClusterNodeRow {
    id: u64,
    address: String,
    /// voter, learner, or removed (recorded but no longer a member).
    role: String,
    leader: bool,
    locality: String,
    last_applied: Option<u64>,
    /// Log entries behind the node that answered; absent: unreachable.
    lag: Option<u64>,
}

#[derive(Debug, Serialize)]
struct GatewayRow {
    name: String,
    network: String,
    cluster: String,
    addresses: Vec<String>,
    /// The control-plane node holding its config stream.
    node: u64,
    registered: String,
    /// Its stream is open on a node that is not stale.
    healthy: bool,
    /// Seconds since its stream was last known open; absent: unknown.
    heard_from_seconds: Option<u64>,
    /// Ready endpoints of its network, which it forwards to.
    endpoints: u32,
}

fn cluster_rows(clusters: Vec<ClusterInfo>) -> Vec<ClusterRow> {
    clusters
        .into_iter()
        .map(|c| ClusterRow {
            name: c.name,
            network: c.network,
            joined: time(c.joined_at_unix),
            endpoints: c.endpoints,
            ready_endpoints: c.ready_endpoints,
            stamp_age_seconds: c.stamp_age_seconds,
            stale: c.stale,
            nodes: c
                .nodes
                .into_iter()
                .map(|n| ClusterNodeRow {
                    id: n.node_id,
                    address: n.address,
                    role: n.role,
                    leader: n.leader,
                    locality: n.locality,
                    last_applied: n.last_applied_index,
                    lag: n.lag,
                })
                .collect(),
            gateways: c
                .gateways
                .into_iter()
                .map(|g| GatewayRow {
                    name: g.name,
                    network: g.network,
                    cluster: g.cluster,
                    addresses: g.addresses,
                    node: g.node_id,
                    registered: time(g.registered_at_unix),
                    healthy: g.healthy,
                    heard_from_seconds: g.heard_from_seconds,
                    endpoints: g.endpoints,
                })
                .collect(),
        })
        .collect()
}

/// The table of `trellis cluster list`: a line per cluster, then one per
/// gateway of the cluster.
fn cluster_table(rows: &[ClusterRow]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<10} {:<14} {:<9} {}\n",
        "CLUSTER",
        "NETWORK",
        "ENDPOINTS",
        "HEARD FROM",
        "GATEWAYS",
        "CONTROL PLANE (id role address freshness)"
    );
    for c in rows {
        let nodes: Vec<String> = c
            .nodes
            .iter()
            .map(|n| {
                let fresh = match n.lag {
                    Some(0) => "up to date".to_string(),
                    Some(l) => format!("{l} behind"),
                    None => "unreachable".to_string(),
                };
                let leader = if n.leader { "*" } else { "" };
                format!("{}{leader} {} {} {fresh}", n.id, n.role, n.address)
            })
            .collect();
        let heard = format!(
            "{}s ago{}",
            c.stamp_age_seconds,
            if c.stale { " STALE" } else { "" }
        );
        let healthy = c.gateways.iter().filter(|g| g.healthy).count();
        let gateways = match healthy {
            0 => "none".to_string(),
            h => format!("{h}/{}", c.gateways.len()),
        };
        out.push_str(&format!(
            "{:<16} {:<16} {:<10} {:<14} {:<9} {}\n",
            c.name,
            c.network,
            format!("{}/{}", c.ready_endpoints, c.endpoints),
            heard,
            gateways,
            if nodes.is_empty() {
                "-".to_string()
            } else {
                nodes.join(", ")
            }
        ));
        for g in &c.gateways {
            let health = if g.healthy { "healthy" } else { "UNHEALTHY" };
            let heard = g
                .heard_from_seconds
                .map_or("never".to_string(), |s| format!("{s}s ago"));
            out.push_str(&format!(
                "  gateway {} ({}) {} {health}, heard from {heard}, {} endpoints, node {}\n",
                g.name,
                g.network,
                g.addresses.join(","),
                g.endpoints,
                g.node
            ));
        }
    }
    out
}

/// A line for each network whose endpoints other networks cannot reach:
/// it has endpoints and no healthy gateway, in a mesh of several networks.
fn network_warnings(networks: &[NetworkInfo]) -> Vec<String> {
    if networks.len() < 2 {
        return Vec::new();
    }
    networks
        .iter()
        .filter(|n| n.endpoints > 0 && n.healthy_gateways == 0)
        .map(|n| {
            format!(
                "network {} has no healthy east-west gateway ({} registered): its {} endpoints \
                 cannot be reached from other networks",
                n.name, n.gateways, n.endpoints
            )
        })
        .collect()
}

/// Prints the clusters as `output` says, and on stderr a warning for each
/// network cut off from the others.
fn print_clusters(r: ListClustersResponse, output: Output) -> anyhow::Result<()> {
    let rows = cluster_rows(r.clusters);
    match output {
        Output::Json => print_json(&rows)?,
        Output::Table => print!("{}", cluster_table(&rows)),
    }
    for w in network_warnings(&r.networks) {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// `trellis cluster join ARGS`: becomes `trellis-controlplane join ARGS`,
/// the one beside this executable, else the one on `PATH`.
pub fn cluster_join(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    const BIN: &str = "trellis-controlplane";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(BIN)))
        .filter(|p| p.is_file());
    let program = beside.unwrap_or_else(|| BIN.into());
    let err = std::process::Command::new(&program)
        .arg("join")
        .args(args)
        .exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", program.display()))
}

/// `trellis cluster list`.
pub async fn cluster_list(config: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let r = c
        .list_clusters(Empty {})
        .await
        .map_err(status)?
        .into_inner();
    print_clusters(r, output)
}

/// `trellis cluster remove`.
pub async fn cluster_remove(
    config: Option<&Path>,
    name: String,
    output: Output,
) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let r = c
        .remove_cluster(RemoveClusterRequest { name: name.clone() })
        .await
        .map_err(status)?
        .into_inner();
    eprintln!("cluster {name} removed");
    print_clusters(r, output)
}

/// `trellis kv put`.
pub async fn kv_put(config: Option<&Path>, key: String, value: String) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let r = c
        .put(PutRequest {
            key,
            value: value.into_bytes(),
        })
        .await
        .map_err(status)?
        .into_inner();
    println!("committed at index {}", r.index);
    Ok(())
}

/// `trellis kv get`: exits non-zero when the key is absent.
pub async fn kv_get(config: Option<&Path>, key: String, linearizable: bool) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let r = c
        .get(GetRequest {
            key: key.clone(),
            linearizable,
        })
        .await
        .map_err(status)?
        .into_inner();
    if !r.found {
        anyhow::bail!("key {key} not found");
    }
    println!("{}", String::from_utf8_lossy(&r.value));
    Ok(())
}

#[cfg(test)]
mod tests {
    use trellis_api::v1::{ClusterNode, GatewayInfo};

    use super::*;

    fn gateway(name: &str, healthy: bool, heard: Option<u64>) -> GatewayInfo {
        GatewayInfo {
            name: name.into(),
            network: "net-b".into(),
            cluster: "west".into(),
            addresses: vec!["192.0.2.1:15443".into(), "192.0.2.2:15443".into()],
            node_id: 2,
            registered_at_unix: 0,
            healthy,
            heard_from_seconds: heard,
            endpoints: 3,
        }
    }

    fn cluster(name: &str, gateways: Vec<GatewayInfo>) -> ClusterInfo {
        ClusterInfo {
            name: name.into(),
            network: "net-b".into(),
            joined_at_unix: 0,
            nodes: vec![ClusterNode {
                node_id: 2,
                address: "192.0.2.9:15012".into(),
                role: "learner".into(),
                leader: false,
                locality: String::new(),
                last_applied_index: Some(9),
                lag: Some(0),
            }],
            endpoints: 4,
            ready_endpoints: 3,
            stamp_age_seconds: 2,
            stale: false,
            gateways,
        }
    }

    #[test]
    fn a_cluster_line_counts_healthy_gateways_and_each_gateway_gets_a_line() {
        let gws = vec![gateway("gw-1", true, Some(2)), gateway("gw-2", false, None)];
        let rows = cluster_rows(vec![cluster("west", gws)]);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["gateways"][0]["name"], "gw-1");
        assert_eq!(json[0]["gateways"][0]["healthy"], true);
        assert_eq!(json[0]["gateways"][0]["endpoints"], 3);
        assert_eq!(
            json[0]["gateways"][1]["heard_from_seconds"],
            serde_json::Value::Null
        );
        let table = cluster_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].contains("GATEWAYS"), "{table}");
        assert!(
            lines[1].starts_with("west ") && lines[1].contains(" 1/2 "),
            "{table}"
        );
        assert!(
            lines[1].contains("2 learner 192.0.2.9:15012 up to date"),
            "{table}"
        );
        assert_eq!(
            lines[2],
            "  gateway gw-1 (net-b) 192.0.2.1:15443,192.0.2.2:15443 healthy, heard from 2s ago, \
             3 endpoints, node 2"
        );
        assert!(lines[3].contains("gw-2") && lines[3].contains("UNHEALTHY, heard from never"));
    }

    #[test]
    fn a_cluster_without_a_healthy_gateway_says_none() {
        for gws in [vec![], vec![gateway("gw-1", false, Some(40))]] {
            let table = cluster_table(&cluster_rows(vec![cluster("west", gws)]));
            let row = table.lines().nth(1).unwrap();
            assert!(row.contains(" none "), "{table}");
        }
    }

    #[test]
    fn a_network_with_endpoints_and_no_healthy_gateway_is_warned_about() {
        let net = |name: &str, endpoints, gateways, healthy_gateways| NetworkInfo {
            name: name.into(),
            endpoints,
            ready_endpoints: endpoints,
            gateways,
            healthy_gateways,
        };
        let w = network_warnings(&[
            net("net-a", 2, 0, 0),
            net("net-b", 3, 1, 0),
            net("net-c", 0, 0, 0),
        ]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("network net-a has no healthy east-west gateway (0 registered)"));
        assert!(
            w[1].contains("net-b") && w[1].contains("its 3 endpoints"),
            "{w:?}"
        );
        assert!(network_warnings(&[net("net-a", 2, 1, 1), net("net-b", 3, 2, 1)]).is_empty());
        // One network: nothing to cross.
        assert!(network_warnings(&[net("net-a", 2, 0, 0)]).is_empty());
    }
}
