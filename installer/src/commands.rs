//! The subcommands, one function each; output is plain text for people or
//! JSON for scripts (`-o json`).
use std::path::Path;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use trellis_api::v1::{
    CreateTokenRequest, Empty, GetRequest, Member, PutRequest, RemoveNodeRequest,
    RevokeTokenRequest,
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
/// What a token is for, besides its kind: a VM's identity or
/// WorkloadGroup, a gateway's network.
pub struct TokenScope {
    pub identity: Option<String>,
    pub workload_group: Option<String>,
    pub network: Option<String>,
}

pub async fn token_create(
    config: Option<&Path>,
    kind: &str,
    scope: TokenScope,
    ttl: Duration,
    uses: Option<u32>,
) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let r = c
        .create_token(CreateTokenRequest {
            kind: kind.to_string(),
            identity: scope.identity.unwrap_or_default(),
            ttl_seconds: ttl.as_secs(),
            max_uses: uses.unwrap_or(0),
            workload_group: scope.workload_group.unwrap_or_default(),
            network: scope.network.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
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
            kind: t.kind,
            identity: t.identity,
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
