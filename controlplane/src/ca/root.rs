//! The mesh root CA: generated once per cluster, it signs only the
//! per-node intermediate CAs.
//!
//! Its key leaves this module only through [`RootCa::key_pem`], to be sealed
//! with [`super::SealKey`] before it is stored.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::certs::{
    add_clamped, bad_cert, cert_pem_to_der, der_to_pem, load_key, names, parse_cert, random_serial,
    require_ca, sha256, spiffe_uri, uri_san, validate_node_name, validate_trust_domain,
    CA_BACKDATE,
};
use super::csr_check;
use super::CaError;

/// Lifetime of a newly generated root: ten years.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Default lifetime of a node's intermediate CA: one year.
pub const DEFAULT_INTERMEDIATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The mesh root CA: its certificate and key.
pub struct RootCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: String,
    not_after: OffsetDateTime,
}

impl RootCa {
    /// A new root for `trust_domain`: ECDSA P-256, ten years, CA with
    /// pathlen 1, URI SAN `spiffe://TRUST_DOMAIN`.
    pub fn generate(trust_domain: &str) -> Result<RootCa, CaError> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = names(&format!("Trellis root CA {trust_domain}"));
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - CA_BACKDATE;
        params.not_after = add_clamped(now, ROOT_LIFETIME, None);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a root from its certificate and (unsealed) PKCS#8 key, checking
    /// that the certificate is a self-signed CA for a SPIFFE trust domain and
    /// that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa, CaError> {
        const WHAT: &str = "root CA";
        let cert_der = cert_pem_to_der(cert_pem, WHAT)?;
        let x509 = parse_cert(&cert_der, WHAT)?;
        require_ca(&x509, WHAT)?;
        x509.verify_signature(None)
            .map_err(|e| bad_cert(WHAT, format!("not self-signed ({e})")))?;
        let trust_domain = match spiffe_uri(&x509, WHAT)?.strip_prefix("spiffe://") {
            Some(td) if !td.contains('/') => td.to_string(),
            _ => {
                return Err(bad_cert(
                    WHAT,
                    "its URI SAN is not spiffe://TRUST_DOMAIN".into(),
                ))
            }
        };
        validate_trust_domain(&trust_domain)?;
        let key = load_key(key_pem, WHAT)?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(CaError::KeyMismatch { what: WHAT });
        }
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)?;
        let key_pem = issuer.key().serialize_pem();
        Ok(RootCa {
            cert_pem: der_to_pem(&cert_der),
            cert_der,
            key_pem,
            issuer,
            trust_domain,
            not_after,
        })
    }

    /// The root certificate (the mesh trust anchor).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root private key as PKCS#8 PEM.
    ///
    /// Only for sealing it with [`super::SealKey`] before it is stored; never
    /// send it anywhere or write it unsealed.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// SHA-256 of the DER certificate: the pin joining nodes check.
    pub fn fingerprint_sha256(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// When the root expires (Unix seconds).
    pub fn not_after_unix(&self) -> i64 {
        self.not_after.unix_timestamp()
    }

    /// Signs the intermediate CA of control-plane node `node_name`.
    ///
    /// The CSR's signature and key type are checked; its subject and SANs are
    /// ignored: the root decides them (CN `Trellis intermediate CA NODE`, URI
    /// SAN `spiffe://TD/trellis/controlplane/NODE`, CA with pathlen 0,
    /// keyCertSign + cRLSign). The lifetime is capped at the root's expiry.
    pub fn sign_intermediate(
        &self,
        csr_pem: &str,
        node_name: &str,
        lifetime: Duration,
    ) -> Result<String, CaError> {
        validate_node_name(node_name)?;
        if lifetime.as_secs() == 0 {
            return Err(CaError::BadLifetime {
                what: "intermediate CA",
                reason: "it is zero".into(),
            });
        }
        let csr = csr_check::verify_csr(csr_pem.as_bytes())?;
        let now = OffsetDateTime::now_utc();
        if self.not_after <= now {
            return Err(CaError::Expired {
                what: "root CA",
                not_after: self.not_after_unix(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = names(&format!("Trellis intermediate CA {node_name}"));
        params.subject_alt_names = vec![uri_san(&format!(
            "spiffe://{}/trellis/controlplane/{node_name}",
            self.trust_domain
        ))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - CA_BACKDATE;
        params.not_after = add_clamped(now, lifetime, Some(self.not_after));
        params.serial_number = Some(random_serial()?);
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki_der)?;
        Ok(params.signed_by(&public_key, &self.issuer)?.pem())
    }
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &hex::encode(self.fingerprint_sha256()))
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn cert_fingerprint(cert_pem: &str) -> Result<[u8; 32], CaError> {
    Ok(sha256(&cert_pem_to_der(cert_pem, "fingerprinted")?))
}
