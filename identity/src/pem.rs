//! PEM in, rustls types out; and the URI SANs of a certificate.
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{IdentityError, SpiffeId};

/// All certificates in a PEM text, in order.
pub fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| IdentityError::BadCertificate(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(IdentityError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

/// The first private key in a PEM text.
pub fn private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| IdentityError::NoPrivateKey { what: what.into() })
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(cert_der: &[u8]) -> Result<Vec<String>, IdentityError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push(uri.to_string());
            }
        }
    }
    Ok(out)
}

/// The SPIFFE ID of a certificate: its one `spiffe://` URI SAN.
pub fn spiffe_id(cert_der: &[u8]) -> Result<SpiffeId, IdentityError> {
    let uris = uri_sans(cert_der)?;
    let mut spiffe = uris.iter().filter(|u| u.starts_with("spiffe://"));
    match (spiffe.next(), spiffe.next()) {
        (Some(one), None) => SpiffeId::parse(one),
        (None, _) => Err(IdentityError::BadCertificate(
            "certificate has no spiffe:// URI SAN".into(),
        )),
        (Some(_), Some(_)) => Err(IdentityError::BadCertificate(
            "certificate has more than one spiffe:// URI SAN".into(),
        )),
    }
}

/// The trust domain a root certificate is for: its URI SAN
/// `spiffe://TRUST_DOMAIN`, as the mesh's root CA carries it.
pub fn root_trust_domain(cert_der: &[u8]) -> Result<String, IdentityError> {
    let uris = uri_sans(cert_der)?;
    uris.iter()
        .filter_map(|u| u.strip_prefix("spiffe://"))
        .find(|td| crate::spiffe::validate_trust_domain(td).is_ok())
        .map(str::to_string)
        .ok_or_else(|| {
            IdentityError::BadCertificate(
                "the root certificate has no URI SAN spiffe://TRUST_DOMAIN: is it the mesh's root?"
                    .into(),
            )
        })
}

/// The validity window of a DER certificate (`notBefore`, `notAfter`), as
/// unix seconds.
pub fn validity(cert_der: &[u8]) -> Result<(i64, i64), IdentityError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Hex SHA-256 of a DER certificate: the pin a join token carries.
pub fn fingerprint_hex(cert_der: &[u8]) -> String {
    hex::encode(crate::sha256(cert_der))
}
