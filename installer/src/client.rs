//! Connecting to the control plane with the admin config.
use std::path::Path;

use anyhow::Context;
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_identity::admin_config::AdminConfig;

/// An admin client connected to the first reachable control-plane address.
pub async fn admin(config_flag: Option<&Path>) -> anyhow::Result<AdminClient<Channel>> {
    let path = AdminConfig::default_path(config_flag);
    let cfg = AdminConfig::load(&path)?;
    let tls = cfg.tls().with_context(|| format!("{}", path.display()))?;
    let (channel, _) = trellis_identity::grpc::connect_any(&cfg.controlplanes, tls).await?;
    Ok(AdminClient::new(channel))
}

/// A gRPC status as an error an operator can read.
pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}
