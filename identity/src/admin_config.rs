//! The administrator's client configuration (like a kubeconfig): where the
//! control plane is, which roots to trust, and the admin certificate and
//! key. `trellis-controlplane init` writes it; the `trellis` CLI reads it
//! from `--config FILE`, else `$TRELLIS_CONFIG`, else
//! `~/.config/trellis/config.yaml`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::files::write_private;
use crate::verify::{client_config, CertCell, Expect, Identity, SpiffeServerVerifier};
use crate::{pem, IdentityError};

/// The admin client configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// Control-plane gRPC addresses (`host:port`), tried in order.
    pub controlplanes: Vec<String>,
    /// PEM roots of the mesh.
    pub trust_bundle: String,
    /// PEM admin certificate chain, leaf first.
    pub certificate: String,
    /// PEM private key of the admin certificate.
    pub key: String,
}

impl AdminConfig {
    /// Where the CLI looks for its configuration.
    pub fn default_path(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("TRELLIS_CONFIG").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".config/trellis/config.yaml")
    }

    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let err = |reason: String| IdentityError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(format!(
                "{e}; pass --config FILE or set TRELLIS_CONFIG (trellis-controlplane init writes DATA_DIR/admin.yaml)"
            ))
        })?;
        let cfg: Self = trellis_api::yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if cfg.controlplanes.is_empty() {
            return Err(err("controlplanes: at least one address is required".into()));
        }
        Ok(cfg)
    }

    /// Writes the file readable by its owner only: it holds a private key.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let text = trellis_api::yaml::to_string(self).map_err(|e| IdentityError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_private(path, text.as_bytes()).map_err(|e| IdentityError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The TLS client configuration: the admin identity, and servers must
    /// be control-plane nodes of this trust domain under these roots.
    pub fn tls(&self) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let identity = Identity::from_pem(&self.certificate, &self.key)?;
        self.tls_as(Some(CertCell::new(&identity)?))
    }

    /// The same server checks, presenting `cert` (or no certificate) instead
    /// of the admin's: for callers with another identity of the mesh.
    pub fn tls_as(
        &self,
        cert: Option<Arc<CertCell>>,
    ) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let roots = pem::certs(&self.trust_bundle, "trust_bundle")?;
        let verifier = SpiffeServerVerifier::new(
            &roots,
            Expect::AnyControlPlane {
                trust_domain: self.trust_domain.clone(),
            },
        )?;
        Ok(Arc::new(client_config(cert, Arc::new(verifier))?))
    }
}
