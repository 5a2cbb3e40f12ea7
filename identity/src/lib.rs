//! Identity and mTLS plumbing shared by every Trellis component.
//!
//! Trellis identities are SPIFFE IDs carried as URI SANs of X.509
//! certificates issued by the mesh CA ([`spiffe::SpiffeId`]). This crate
//! turns PEM material into rustls configurations whose verifiers check those
//! identities instead of DNS names ([`verify`]), pins the root on first
//! contact as `kubeadm join` does ([`verify::PinnedRootVerifier`]), generates
//! keys and CSRs on the client side ([`csr`]), and connects tonic clients and
//! servers over those configurations ([`grpc`]). It also holds the join-token
//! format ([`join_token::JoinToken`]), which the control plane issues and
//! every joining component parses, and reads the claims of a Kubernetes
//! pod's service-account token ([`kube_token::Claims`]).
#![forbid(unsafe_code)]

pub mod admin_config;
pub mod csr;
pub mod files;
pub mod grpc;
pub mod join_token;
pub mod kube_token;
pub mod pem;
pub mod rfc3339;
pub mod spiffe;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod verify;

pub use spiffe::SpiffeId;

/// Errors of this crate; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no certificate found in {what}: expected PEM `-----BEGIN CERTIFICATE-----` blocks")]
    NoCertificate { what: String },
    #[error("no private key found in {what}: expected a PEM PKCS#8, SEC1 or PKCS#1 key")]
    NoPrivateKey { what: String },
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    #[error("invalid SPIFFE ID `{id}`: {reason}")]
    BadSpiffeId { id: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot reach the control plane: {0}")]
    Unreachable(String),
    #[error("config file {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("invalid address `{addr}`: {reason}")]
    BadAddress { addr: String, reason: String },
}

/// SHA-256 of some bytes (a certificate's DER for pins).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The rustls crypto provider used across Trellis (ring; one provider for the
/// whole workspace).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
