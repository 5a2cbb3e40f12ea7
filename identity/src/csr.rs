//! Client-side key and CSR generation: agents, joining nodes and the CLI
//! make an ECDSA P-256 key here and send only the CSR to the mesh CA.
//!
//! The private key never leaves the caller; the CA decides everything in the
//! certificate except the public key and checks the requested identity.

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

/// RFC 5280 upper bound of a commonName; longer SPIFFE IDs go only in the SAN.
const MAX_CN: usize = 64;

/// A new private key (PKCS#8 PEM) and the CSR (PEM) for it.
///
/// `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("key_pem", &"[redacted]")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CsrGenError {
    #[error(
        "invalid SPIFFE ID `{id}` for a CSR: {reason}; expected e.g. \
         spiffe://example.org/ns/default/sa/web"
    )]
    BadSpiffeId { id: String, reason: String },
    #[error("cannot generate the key or CSR: {0}")]
    Crypto(String),
}

impl From<rcgen::Error> for CsrGenError {
    fn from(e: rcgen::Error) -> Self {
        CsrGenError::Crypto(e.to_string())
    }
}

/// A new ECDSA P-256 key and a CSR carrying `spiffe_id` as its only URI SAN
/// (and as CN when it fits in 64 characters).
pub fn generate_csr(spiffe_id: &str) -> Result<KeyAndCsr, CsrGenError> {
    let bad = |reason: &str| CsrGenError::BadSpiffeId {
        id: spiffe_id.escape_debug().to_string(),
        reason: reason.to_string(),
    };
    if !spiffe_id.starts_with("spiffe://") {
        return Err(bad("it must start with spiffe://"));
    }
    if spiffe_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("it must not contain spaces or control characters"));
    }
    let uri = Ia5String::try_from(spiffe_id).map_err(|_| bad("it must be ASCII"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if spiffe_id.len() <= MAX_CN {
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe_id);
    }
    params.subject_alt_names = vec![SanType::URI(uri)];
    sign(&params)
}

/// A new ECDSA P-256 key and a CSR for a control-plane node's intermediate
/// CA. It carries no SAN: the root decides the subject and the identity.
pub fn generate_ca_csr() -> Result<KeyAndCsr, CsrGenError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Trellis intermediate CA request");
    sign(&params)
}

fn sign(params: &CertificateParams) -> Result<KeyAndCsr, CsrGenError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr_pem = params.serialize_request(&key)?.pem()?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_pem,
    })
}

#[cfg(test)]
mod tests {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    use super::*;

    fn parse_and_check(pem: &str, f: impl FnOnce(&X509CertificationRequest<'_>)) {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(block.label, "CERTIFICATE REQUEST");
        let (rest, csr) = X509CertificationRequest::from_der(&block.contents).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        f(&csr);
    }

    fn sans(csr: &X509CertificationRequest<'_>) -> Vec<String> {
        let mut out = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    out.push(match n {
                        GeneralName::URI(u) => format!("URI:{u}"),
                        other => format!("{other:?}"),
                    });
                }
            }
        }
        out
    }

    #[test]
    fn workload_csr_carries_exactly_the_id() {
        let id = "spiffe://example.org/ns/default/sa/web";
        let kc = generate_csr(id).unwrap();
        parse_and_check(&kc.csr_pem, |csr| {
            assert_eq!(sans(csr), vec![format!("URI:{id}")]);
            let cn: Vec<_> = csr
                .certification_request_info
                .subject
                .iter_common_name()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            assert_eq!(cn, vec![id.to_string()]);
            // The CSR is for the returned key.
            let key = KeyPair::from_pem(&kc.key_pem).unwrap();
            assert_eq!(
                csr.certification_request_info.subject_pki.raw,
                rcgen::PublicKeyData::subject_public_key_info(&key)
            );
            assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        });
        assert!(kc.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{kc:?}").contains("PRIVATE KEY"));
        // Fresh key every time.
        assert_ne!(generate_csr(id).unwrap().key_pem, kc.key_pem);
    }

    #[test]
    fn long_ids_skip_the_common_name() {
        let id = format!("spiffe://example.org/ns/default/sa/{}", "a".repeat(80));
        let kc = generate_csr(&id).unwrap();
        parse_and_check(&kc.csr_pem, |csr| {
            assert_eq!(sans(csr), vec![format!("URI:{id}")]);
            assert_eq!(
                csr.certification_request_info
                    .subject
                    .iter_common_name()
                    .count(),
                0
            );
        });
    }

    #[test]
    fn bad_ids_are_refused() {
        for id in [
            "",
            "https://example.org/x",
            "spiffe://example.org/a b",
            "spiffe://é.org/x",
        ] {
            let err = generate_csr(id).unwrap_err();
            assert!(
                matches!(err, CsrGenError::BadSpiffeId { .. }),
                "{id}: {err}"
            );
        }
    }

    #[test]
    fn ca_csr_has_no_san() {
        let kc = generate_ca_csr().unwrap();
        parse_and_check(&kc.csr_pem, |csr| assert!(sans(csr).is_empty()));
        KeyPair::from_pem(&kc.key_pem).unwrap();
    }
}
