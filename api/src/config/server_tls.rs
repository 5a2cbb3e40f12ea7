//! `ServerTLSSettings`: how a proxy terminates (or passes through) TLS from
//! its clients, on a Gateway server or a Sidecar ingress listener.

use serde::{Deserialize, Serialize};

use super::validate::{push, Validate};
use super::FieldError;

/// TLS on a listening port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerTlsSettings {
    /// Answer plain HTTP requests with a 301 to HTTPS.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// How TLS is handled; `PASSTHROUGH` when unset (see [`Self::mode`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    /// PEM server certificate file (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_certificate: Option<String>,
    /// PEM private key file of the server certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// PEM CA bundle file to verify client certificates (`MUTUAL`,
    /// `OPTIONAL_MUTUAL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// PEM certificate revocation list file for client certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
    /// Name of a secret holding the certificate, key and CA bundle instead
    /// of files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Several such secrets (e.g. one RSA and one ECDSA certificate).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credential_names: Vec<String>,
    /// Names accepted in the client certificate's SAN.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// Base64 SHA-256 hashes of the SPKIs of accepted client certificates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_spki: Vec<String>,
    /// Hex SHA-256 hashes of accepted client certificates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub verify_certificate_hash: Vec<String>,
    /// Lowest TLS version accepted; TLS 1.2 when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<TlsProtocol>,
    /// Highest TLS version accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites to offer (OpenSSL names); the proxy's defaults when
    /// empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// TLS modes of a listening port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Route on the client's SNI without terminating TLS.
    #[default]
    Passthrough,
    /// Terminate TLS; no client certificate asked for.
    Simple,
    /// Terminate TLS; a client certificate is required.
    Mutual,
    /// Pass through to the cluster named in the SNI, no VirtualService
    /// needed (east-west gateways).
    AutoPassthrough,
    /// Mutual TLS with the mesh's workload certificates.
    IstioMutual,
    /// Terminate TLS; a client certificate is asked for and checked if
    /// sent.
    OptionalMutual,
}

/// TLS protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsProtocol {
    /// The proxy's choice.
    #[serde(rename = "TLS_AUTO")]
    Auto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    V1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    V1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

impl ServerTlsSettings {
    /// The mode, `PASSTHROUGH` when unset as in Istio.
    pub fn mode(&self) -> ServerTlsMode {
        self.mode.unwrap_or_default()
    }

    /// Whether the port passes TLS through rather than terminating it.
    pub fn is_passthrough(&self) -> bool {
        matches!(
            self.mode(),
            ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
        )
    }

    /// Whether any certificate source is set: files, `credentialName` or
    /// `credentialNames`.
    pub fn has_certificates(&self) -> bool {
        self.server_certificate.is_some()
            || self.private_key.is_some()
            || self.ca_certificates.is_some()
            || self.credential_name.is_some()
            || !self.credential_names.is_empty()
    }
}

impl Validate for ServerTlsSettings {
    /// Istio's warnings: certificates a passthrough mode ignores, cipher
    /// suites given twice.
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        if self.is_passthrough() && self.has_certificates() {
            push(
                warnings,
                path,
                format!(
                    "{} does not terminate TLS: the certificates are ignored",
                    self.mode().as_str()
                ),
            );
        }
        for (i, suite) in self.cipher_suites.iter().enumerate() {
            if self.cipher_suites[..i].contains(suite) {
                push(
                    warnings,
                    &format!("{path}.cipherSuites[{i}]"),
                    format!(
                        "cipher suite `{suite}` is given more than once; the repeat is ignored"
                    ),
                );
            }
        }
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        let field = |name: &str| format!("{path}.{name}");
        let mode = self.mode();
        if mode == ServerTlsMode::IstioMutual {
            for (name, set) in [
                ("serverCertificate", self.server_certificate.is_some()),
                ("privateKey", self.private_key.is_some()),
                ("caCertificates", self.ca_certificates.is_some()),
                ("credentialName", self.credential_name.is_some()),
                ("credentialNames", !self.credential_names.is_empty()),
            ] {
                if set {
                    push(
                        errors,
                        &field(name),
                        "ISTIO_MUTUAL uses the mesh's workload certificate; remove this field",
                    );
                }
            }
        }
        let sources = [
            self.server_certificate.is_some() && self.private_key.is_some(),
            self.credential_name.is_some(),
            !self.credential_names.is_empty(),
        ];
        if sources.iter().filter(|set| **set).count() > 1 {
            push(
                errors,
                path,
                "only one of `credentialName`, `credentialNames` and `serverCertificate`/`privateKey` may be set",
            );
        }
        let terminates = matches!(
            mode,
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        );
        let from_secret = self.credential_name.is_some() || !self.credential_names.is_empty();
        if terminates && !from_secret {
            let mutual = mode != ServerTlsMode::Simple;
            let required = [
                ("serverCertificate", self.server_certificate.is_some(), true),
                ("privateKey", self.private_key.is_some(), true),
                ("caCertificates", self.ca_certificates.is_some(), mutual),
            ];
            for (name, set, needed) in required {
                if needed && !set {
                    push(
                        errors,
                        &field(name),
                        format!(
                            "required for {} mode unless `credentialName` is set",
                            mode.as_str()
                        ),
                    );
                }
            }
        }
        if self.ca_crl.is_some() {
            if self.credential_name.is_some() {
                push(
                    errors,
                    &field("caCrl"),
                    "cannot be set together with `credentialName`; put the CRL in the secret",
                );
            }
            if mode == ServerTlsMode::Simple {
                push(
                    errors,
                    &field("caCrl"),
                    "SIMPLE mode does not check client certificates; a CRL needs MUTUAL or OPTIONAL_MUTUAL",
                );
            }
        }
        if let (Some(min), Some(max)) = (self.min_protocol_version, self.max_protocol_version) {
            if min != TlsProtocol::Auto && max != TlsProtocol::Auto && min > max {
                push(
                    errors,
                    &field("minProtocolVersion"),
                    "is above `maxProtocolVersion`",
                );
            }
        }
        // Certificates under a passthrough mode are ignored; Istio only
        // warns about them, so they are not refused here.
    }
}

impl ServerTlsMode {
    /// The spelling in config, e.g. `ISTIO_MUTUAL`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerTlsMode::Passthrough => "PASSTHROUGH",
            ServerTlsMode::Simple => "SIMPLE",
            ServerTlsMode::Mutual => "MUTUAL",
            ServerTlsMode::AutoPassthrough => "AUTO_PASSTHROUGH",
            ServerTlsMode::IstioMutual => "ISTIO_MUTUAL",
            ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        }
    }
}
