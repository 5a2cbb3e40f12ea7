//! The subcommands, one function each; output is plain text for people or
//! JSON for scripts (`-o json`).
use std::path::Path;

use clap::ValueEnum;
use serde::Serialize;
use trellis_api::v1::{
    ClusterInfo, CreateTokenRequest, Empty, GetRequest, Member, PutRequest, RemoveClusterRequest,
    RemoveNodeRequest, RevokeTokenRequest,
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

#[derive(Serialize)]
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
}

#[derive(Serialize)]
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

fn print_clusters(clusters: Vec<ClusterInfo>, output: Output) -> anyhow::Result<()> {
    let rows: Vec<ClusterRow> = clusters
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
        })
        .collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            println!(
                "{:<16} {:<16} {:<10} {:<14} {:<40}",
                "CLUSTER",
                "NETWORK",
                "ENDPOINTS",
                "HEARD FROM",
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
                println!(
                    "{:<16} {:<16} {:<10} {:<14} {}",
                    c.name,
                    c.network,
                    format!("{}/{}", c.ready_endpoints, c.endpoints),
                    heard,
                    if nodes.is_empty() {
                        "-".to_string()
                    } else {
                        nodes.join(", ")
                    }
                );
            }
            Ok(())
        }
    }
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
    print_clusters(r.clusters, output)
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
    print_clusters(r.clusters, output)
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
