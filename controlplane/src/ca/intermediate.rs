//! A control-plane node's intermediate CA and the leaves it issues.
//!
//! Leaves are not CAs, carry serverAuth + clientAuth and exactly one SPIFFE
//! URI SAN (plus DNS/IP names only for certificates whose key is made here,
//! [`IntermediateCa::issue_local`]). The intermediate key never leaves this
//! module.

use std::fmt;
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::certs::{
    add_clamped, cert_pem_to_der, der_to_pem, extra_san, load_key, parse_cert, random_serial,
    require_ca, spiffe_uri, uri_san, validate_node_name, validate_trust_domain, LEAF_BACKDATE,
    MAX_CN,
};
use super::csr_check::{check_csr, CsrPolicy};
use super::CaError;

/// Default lifetime of a leaf certificate: 24 hours.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

/// A certificate issued to a workload, node or admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    pub cert_pem: String,
    /// Leaf first, then the intermediate (the root is distributed separately).
    pub chain_pem: Vec<String>,
    /// Expiry of the leaf (Unix seconds), for scheduling renewal.
    pub not_after_unix: i64,
}

/// A control-plane node's intermediate CA, which signs leaves.
pub struct IntermediateCa {
    cert_pem: String,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: String,
    node_name: String,
    not_after: OffsetDateTime,
}

impl IntermediateCa {
    /// Loads an intermediate, checking that `key_pem` is its key and that it
    /// was issued by the root in `root_cert_pem` for a control-plane node of
    /// the root's trust domain.
    pub fn from_pem(cert_pem: &str, key_pem: &str, root_cert_pem: &str) -> Result<Self, CaError> {
        const WHAT: &str = "intermediate CA";
        let root_der = cert_pem_to_der(root_cert_pem, "root CA")?;
        let root = parse_cert(&root_der, "root CA")?;
        require_ca(&root, "root CA")?;
        let root_uri = spiffe_uri(&root, "root CA")?;

        let cert_der = cert_pem_to_der(cert_pem, WHAT)?;
        let x509 = parse_cert(&cert_der, WHAT)?;
        require_ca(&x509, WHAT)?;
        let key = load_key(key_pem, WHAT)?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(CaError::KeyMismatch { what: WHAT });
        }
        if x509.issuer() != root.subject() {
            return Err(CaError::NotIssuedByRoot {
                reason: format!(
                    "issuer is `{}`, root is `{}`",
                    x509.issuer(),
                    root.subject()
                ),
            });
        }
        x509.verify_signature(Some(root.public_key()))
            .map_err(|e| CaError::NotIssuedByRoot {
                reason: format!("signature does not verify with the root key ({e})"),
            })?;
        let uri = spiffe_uri(&x509, WHAT)?;
        let node_name = uri
            .strip_prefix(&format!("{root_uri}/trellis/controlplane/"))
            .ok_or_else(|| CaError::NotIssuedByRoot {
                reason: format!("its URI SAN {uri} is not {root_uri}/trellis/controlplane/NODE"),
            })?
            .to_string();
        validate_node_name(&node_name)?;
        let trust_domain = root_uri.trim_start_matches("spiffe://").to_string();
        validate_trust_domain(&trust_domain)?;
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)?;
        Ok(IntermediateCa {
            cert_pem: der_to_pem(&cert_der),
            root_pem: der_to_pem(&root_der),
            issuer,
            trust_domain,
            node_name,
            not_after,
        })
    }

    /// The intermediate certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The root certificate this intermediate chains to.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The control-plane node this intermediate belongs to.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// When the intermediate expires (Unix seconds); rotate well before.
    pub fn not_after_unix(&self) -> i64 {
        self.not_after.unix_timestamp()
    }

    /// Checks an untrusted CSR with [`check_csr`] and signs a leaf carrying
    /// exactly `policy.expected_uri`, for the checked ttl (capped at the
    /// intermediate's own expiry).
    pub fn issue(&self, csr_pem: &[u8], policy: &CsrPolicy) -> Result<IssuedCert, CaError> {
        self.check_identity(&policy.expected_uri)?;
        let checked = check_csr(csr_pem, policy)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&checked.public_key_der)?;
        self.sign_leaf(&public_key, &policy.expected_uri, Vec::new(), checked.ttl)
    }

    /// Issues a leaf for a key generated here: the node's own serving
    /// certificate or the admin client certificate. `dns_or_ip_sans` are
    /// added after the SPIFFE ID (IP addresses are recognised, the rest are
    /// DNS names). Returns the certificate and the new leaf's PKCS#8 key.
    pub fn issue_local(
        &self,
        spiffe_id: &str,
        dns_or_ip_sans: &[String],
        ttl: Duration,
    ) -> Result<(IssuedCert, String), CaError> {
        self.check_identity(spiffe_id)?;
        if ttl.as_secs() == 0 {
            return Err(CaError::BadLifetime {
                what: "leaf",
                reason: "it is zero".into(),
            });
        }
        let extra = dns_or_ip_sans
            .iter()
            .map(|s| extra_san(s))
            .collect::<Result<Vec<_>, _>>()?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let issued = self.sign_leaf(&key, spiffe_id, extra, ttl)?;
        Ok((issued, key.serialize_pem()))
    }

    fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        spiffe_id: &str,
        extra_sans: Vec<SanType>,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let now = OffsetDateTime::now_utc();
        if self.not_after <= now {
            return Err(CaError::Expired {
                what: "intermediate CA",
                not_after: self.not_after_unix(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Trellis");
        // A SPIFFE ID may be longer than a commonName may be; the URI SAN is
        // what identifies the leaf, the CN is only a convenience.
        if spiffe_id.len() <= MAX_CN {
            params
                .distinguished_name
                .push(DnType::CommonName, spiffe_id);
        }
        params.subject_alt_names = vec![uri_san(spiffe_id)?];
        params.subject_alt_names.extend(extra_sans);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = add_clamped(now, ttl, Some(self.not_after));
        params.serial_number = Some(random_serial()?);
        let cert_pem = params.signed_by(public_key, &self.issuer)?.pem();
        Ok(IssuedCert {
            chain_pem: vec![cert_pem.clone(), self.cert_pem.clone()],
            cert_pem,
            not_after_unix: params.not_after.unix_timestamp(),
        })
    }

    /// Refuses identities outside this CA's trust domain or malformed ones,
    /// whatever the caller computed.
    fn check_identity(&self, id: &str) -> Result<(), CaError> {
        let bad = |reason: String| CaError::BadName {
            what: "SPIFFE ID",
            value: id.escape_debug().to_string(),
            reason,
        };
        let prefix = format!("spiffe://{}/", self.trust_domain);
        let path = id
            .strip_prefix(&prefix)
            .ok_or_else(|| bad(format!("this CA only issues identities under {prefix}")))?;
        if path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(bad("path segments must be non-empty and not . or ..".into()));
        }
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        {
            return Err(bad(
                "path may hold only letters, digits, '-', '.', '_' and '/'".into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for IntermediateCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntermediateCa")
            .field("trust_domain", &self.trust_domain)
            .field("node_name", &self.node_name)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}
