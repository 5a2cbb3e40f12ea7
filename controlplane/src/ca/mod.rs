//! The mesh certificate authority: root → per-node intermediate → leaf.
//!
//! The root (ECDSA P-256, ten years) is generated once at cluster init; its
//! key is stored only sealed ([`SealKey`]) and is used to sign one
//! intermediate CA per control-plane node ([`RootCa::sign_intermediate`]).
//! Each node issues short-lived workload leaves with its intermediate
//! ([`IntermediateCa::issue`]) after the pure checks of [`check_csr`] have
//! proved the request carries exactly the identity the caller is allowed.
//!
//! Files follow the job: `seal` (the root key at rest), `csr_check` (pure
//! checks of untrusted CSRs), `root` and `intermediate` (the two CA levels),
//! `certs` (shared certificate building and parsing helpers).

mod certs;
mod csr_check;
mod intermediate;
mod root;
mod seal;

#[cfg(test)]
mod issuance_tests;

use std::path::PathBuf;

pub use csr_check::{check_ca_csr, check_csr, CheckedCsr, CsrError, CsrPolicy, KeyKind};
pub use intermediate::{IntermediateCa, IssuedCert, DEFAULT_LEAF_TTL};
pub use root::{cert_fingerprint, RootCa, DEFAULT_INTERMEDIATE_LIFETIME, ROOT_LIFETIME};
pub use seal::SealKey;

/// Errors of the mesh CA; each message says what the operator should check.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// AES-GCM refused the sealed blob: the key is not the one it was sealed
    /// with, or the stored bytes were altered.
    #[error(
        "cannot unseal the CA key: the seal key is wrong or the sealed data was altered; \
         check that the CA key file or TRELLIS_CA_KEY holds the key this \
         cluster was initialised with"
    )]
    WrongSealKey,
    /// The sealed blob starts with a format version this build does not know.
    #[error(
        "sealed CA data has format version {found}, this build reads version {supported}; \
         run a Trellis version that wrote it, or check the store is not corrupted"
    )]
    SealVersion { found: u8, supported: u8 },
    /// The seal key text is not base64 of 32 bytes.
    #[error(
        "invalid CA seal key from {origin}: {reason}; expected 32 random bytes in standard \
         base64 (44 characters), as printed at cluster init"
    )]
    BadSealKey { origin: String, reason: String },
    /// The seal key file could not be read.
    #[error("cannot read the CA seal key file {path}")]
    SealKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A CSR failed the checks of [`check_csr`].
    #[error("certificate request refused: {0}")]
    Csr(#[from] CsrError),
    /// A stored or supplied certificate cannot be used.
    #[error("invalid {what} certificate: {reason}")]
    BadCertificate { what: &'static str, reason: String },
    /// A stored or supplied private key cannot be parsed.
    #[error("invalid {what} private key: {reason}; expected a PEM PKCS#8 `PRIVATE KEY`")]
    BadKey { what: &'static str, reason: String },
    /// The private key is not the one of the certificate it was stored with.
    #[error(
        "the {what} private key does not match the {what} certificate; the key and \
         certificate were mixed up from different CAs, restore them from the same backup"
    )]
    KeyMismatch { what: &'static str },
    /// The intermediate was not issued by the configured root.
    #[error(
        "the intermediate CA certificate does not chain to the mesh root ({reason}); \
         have the root sign a new intermediate for this node"
    )]
    NotIssuedByRoot { reason: String },
    /// A CA certificate has expired.
    #[error("the {what} certificate expired at unix time {not_after}; rotate it")]
    Expired { what: &'static str, not_after: i64 },
    /// A trust domain, node name, identity or SAN is malformed or foreign.
    #[error("invalid {what} `{value}`: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// A certificate lifetime is zero or out of range.
    #[error("invalid {what} lifetime: {reason}")]
    BadLifetime { what: &'static str, reason: String },
    /// Key generation or signing failed inside the crypto library.
    #[error("certificate signing failed: {0}")]
    Signing(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Signing(e.to_string())
    }
}
