//! The admission webhooks of a node started with `--kubernetes`
//! ([`trellis_kubernetes::webhook`]): served with the node's own serving
//! certificate (its names include the webhooks', [`names`]), and the
//! webhook configurations kept trusting the mesh root.
use std::sync::Arc;

use tokio::net::TcpListener;
use trellis_identity::verify::CertCell;
use trellis_kubernetes::webhook::{self, inject, Injection};

use super::BootstrapError;
use crate::node::Node;

/// The names the node's serving certificate has for the webhooks.
pub(super) fn names(kube: &kube::Client, opts: &webhook::Options) -> Vec<String> {
    webhook::server_names(kube.default_namespace(), opts.listen)
}

/// Binds the webhooks' port and serves them, and keeps the caBundle of
/// their configurations; `grpc_port` is the node's port that injected
/// agents stream from.
pub(super) async fn start(
    node: Arc<Node>,
    kube: kube::Client,
    cert: Arc<CertCell>,
    grpc_port: &str,
) -> Result<(), BootstrapError> {
    let opts = node.settings.webhooks.clone();
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| BootstrapError::Bind {
            addr: opts.listen.to_string(),
            source,
        })?;
    let native_sidecar = match kube.apiserver_version().await {
        Ok(v) => inject::native_sidecars(&v.major, &v.minor),
        Err(e) => {
            tracing::warn!(error = %e, "reading the API server's version; injecting the agent as a regular container");
            false
        }
    };
    let injection = Injection {
        agent_image: opts.agent_image.clone(),
        control_plane: format!(
            "{}.{}.svc:{grpc_port}",
            webhook::SERVICE,
            kube.default_namespace()
        ),
        native_sidecar,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(trellis_identity::provider())
        .with_safe_default_protocol_versions()
        .map_err(trellis_identity::IdentityError::from)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tracing::info!(listen = %opts.listen, native_sidecar, "serving the admission webhooks");
    tokio::spawn(webhook::serve(listener, Arc::new(tls), injection));
    tokio::spawn(webhook::ca_bundle::keep_patched(kube, move || {
        node.mesh().map(|m| m.root_cert_pem)
    }));
    Ok(())
}
