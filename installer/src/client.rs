//! Connecting to the control plane with the admin config.
use std::path::Path;

use anyhow::Context;
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::Empty;
use trellis_identity::admin_config::AdminConfig;

/// An admin client connected to the first reachable control-plane address.
///
/// The config's address list is refreshed from the cluster's membership
/// while it is short or when the first address did not answer, so the CLI
/// keeps working when the node it was first given (the one that ran
/// `init`) is down or removed.
pub async fn admin(config_flag: Option<&Path>) -> anyhow::Result<AdminClient<Channel>> {
    let path = AdminConfig::default_path(config_flag);
    let mut cfg = AdminConfig::load(&path)?;
    let tls = cfg.tls().with_context(|| format!("{}", path.display()))?;
    let (channel, used) =
        trellis_identity::grpc::connect_any(&cfg.controlplanes, tls, None).await?;
    // Config applies and listings of big meshes are large.
    let mut client = AdminClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    // Refresh only while the list is short (as `init` writes it) or after a
    // failover: `Members` asks every node for its status.
    let refresh = cfg.controlplanes.len() < 3 || cfg.controlplanes.first() != Some(&used);
    if !refresh {
        return Ok(client);
    }
    if let Ok(r) = client.members(Empty {}).await {
        let addrs: Vec<String> = r
            .into_inner()
            .members
            .into_iter()
            .map(|m| m.address)
            .collect();
        if merge_addresses(&mut cfg.controlplanes, &addrs) {
            // Best effort: a read-only config still works with the old list.
            let _ = cfg.save(&path);
        }
    }
    Ok(client)
}

/// Makes `known` the current members, keeping the order of those it
/// already had first. Returns whether it changed.
fn merge_addresses(known: &mut Vec<String>, members: &[String]) -> bool {
    if members.is_empty() {
        return false;
    }
    let mut merged: Vec<String> = known
        .iter()
        .filter(|a| members.contains(a))
        .cloned()
        .collect();
    for m in members {
        if !merged.contains(m) {
            merged.push(m.clone());
        }
    }
    let changed = merged != *known;
    *known = merged;
    changed
}

/// A gRPC status as an error an operator can read.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

#[cfg(test)]
mod tests {
    use super::merge_addresses;

    #[test]
    fn merges_member_addresses_keeping_known_order() {
        let mut known = vec!["a:1".to_string(), "gone:1".to_string()];
        let members = ["c:1".to_string(), "a:1".to_string(), "b:1".to_string()];
        assert!(merge_addresses(&mut known, &members));
        assert_eq!(known, ["a:1", "c:1", "b:1"]);
        assert!(!merge_addresses(&mut known, &members));
        assert!(!merge_addresses(&mut known, &[]));
        assert_eq!(known.len(), 3);
    }
}
