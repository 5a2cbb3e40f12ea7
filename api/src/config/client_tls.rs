//! `ClientTLSSettings`: how a proxy speaks TLS to a destination.

use serde::{Deserialize, Serialize};

use super::validate::{push, Validate};
use super::FieldError;

/// TLS from the proxy to the endpoints of a destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientTlsSettings {
    /// Whether and how to use TLS.
    pub mode: TlsMode,
    /// PEM client certificate file (`MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// PEM private key file (`MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// PEM CA bundle file to verify the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Name of a secret holding the certificates instead of files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Names accepted in the server certificate's SAN.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip verifying the server certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// PEM certificate revocation list file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

/// TLS modes towards a destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plain text.
    #[default]
    Disable,
    /// TLS, server authenticated.
    Simple,
    /// Mutual TLS with the given client certificate.
    Mutual,
    /// Mutual TLS with the mesh's workload certificates.
    IstioMutual,
}

impl Validate for ClientTlsSettings {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let files = [
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
            ("caCertificates", &self.ca_certificates),
        ];
        if self.credential_name.is_some() {
            for (field, value) in files {
                if value.is_some() {
                    push(
                        errors,
                        &format!("{path}.{field}"),
                        "cannot be set together with `credentialName`",
                    );
                }
            }
        } else if self.mode == TlsMode::Mutual {
            for (field, value) in &files[..2] {
                if value.is_none() {
                    push(
                        errors,
                        &format!("{path}.{field}"),
                        "required for MUTUAL mode unless `credentialName` is set",
                    );
                }
            }
        }
    }
}
