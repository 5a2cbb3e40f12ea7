//! Shared pieces for building and reading CA certificates: names, SANs,
//! validity windows, serials and PEM/DER handling. No I/O except the OS
//! random generator behind [`random_serial`].

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use rcgen::string::Ia5String;
use rcgen::{DistinguishedName, DnType, KeyPair, SanType, SerialNumber};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::CaError;

/// CA certificates are backdated a little so nodes with a slightly slow
/// clock accept them at once; leaves less, since they are renewed often.
pub(crate) const CA_BACKDATE: time::Duration = time::Duration::minutes(5);
pub(crate) const LEAF_BACKDATE: time::Duration = time::Duration::minutes(1);
/// RFC 5280 upper bound of a commonName.
pub(crate) const MAX_CN: usize = 64;

pub(crate) fn names(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Trellis");
    dn.push(
        DnType::CommonName,
        common_name.chars().take(MAX_CN).collect::<String>(),
    );
    dn
}

pub(crate) fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| CaError::BadName {
            what: "URI SAN",
            value: uri.escape_debug().to_string(),
            reason: e.to_string(),
        })
}

pub(crate) fn extra_san(s: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !valid {
        return Err(CaError::BadName {
            what: "DNS SAN",
            value: s.escape_debug().to_string(),
            reason: "expected an IP address or a DNS name (letters, digits, '-', dots)".into(),
        });
    }
    Ia5String::try_from(s)
        .map(SanType::DnsName)
        .map_err(|e| CaError::BadName {
            what: "DNS SAN",
            value: s.to_string(),
            reason: e.to_string(),
        })
}

/// The SPIFFE trust domain rule, as [`trellis_identity::spiffe`] applies it.
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), CaError> {
    trellis_identity::spiffe::validate_trust_domain(td).map_err(|reason| CaError::BadName {
        what: "trust domain",
        value: td.escape_debug().to_string(),
        reason,
    })
}

/// One SPIFFE path segment: letters, digits, `-`, `.`, `_`; at most 63.
pub(crate) fn validate_node_name(node: &str) -> Result<(), CaError> {
    let ok = !node.is_empty()
        && node.len() <= 63
        && node != "."
        && node != ".."
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CaError::BadName {
            what: "control-plane node name",
            value: node.escape_debug().to_string(),
            reason: "use 1 to 63 letters, digits, '-', '.' or '_'".into(),
        })
    }
}

/// `now + lifetime`, never past `cap`, and saturating instead of overflowing.
pub(crate) fn add_clamped(
    now: OffsetDateTime,
    lifetime: Duration,
    cap: Option<OffsetDateTime>,
) -> OffsetDateTime {
    // Past year 9999 the certificate time encodings end.
    let far = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(now);
    let end = time::Duration::try_from(lifetime)
        .ok()
        .and_then(|d| now.checked_add(d))
        .map_or(far, |t| t.min(far));
    match cap {
        Some(cap) => end.min(cap),
        None => end,
    }
}

/// 16 random bytes, positive, no leading zero byte.
pub(crate) fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Signing("the OS random generator failed".into()))?;
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

pub(crate) fn load_key(key_pem: &str, what: &'static str) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(key_pem).map_err(|e| CaError::BadKey {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn bad_cert(what: &'static str, reason: String) -> CaError {
    CaError::BadCertificate { what, reason }
}

pub(crate) fn cert_pem_to_der(pem: &str, what: &'static str) -> Result<Vec<u8>, CaError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad_cert(what, format!("not PEM ({e})")))?;
    if block.label != "CERTIFICATE" {
        return Err(bad_cert(
            what,
            format!(
                "PEM block is `{}`, expected `CERTIFICATE`",
                block.label.escape_debug()
            ),
        ));
    }
    Ok(block.contents)
}

pub(crate) fn parse_cert<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<X509Certificate<'a>, CaError> {
    let (rem, cert) = X509Certificate::from_der(der).map_err(|e| bad_cert(what, e.to_string()))?;
    if !rem.is_empty() {
        return Err(bad_cert(
            what,
            "trailing bytes after the certificate".into(),
        ));
    }
    Ok(cert)
}

pub(crate) fn require_ca(cert: &X509Certificate<'_>, what: &'static str) -> Result<(), CaError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(()),
        Ok(_) => Err(bad_cert(what, "it is not a CA certificate".into())),
        Err(e) => Err(bad_cert(what, format!("bad basic constraints ({e})"))),
    }
}

/// The single `spiffe://` URI SAN of a CA certificate.
pub(crate) fn spiffe_uri(
    cert: &X509Certificate<'_>,
    what: &'static str,
) -> Result<String, CaError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad_cert(what, format!("bad subject alternative names ({e})")))?;
    let mut uris = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(u), None) => Ok(u.to_string()),
        (None, _) => Err(bad_cert(what, "it carries no spiffe:// URI SAN".into())),
        (Some(_), Some(_)) => Err(bad_cert(
            what,
            "it carries several spiffe:// URI SANs".into(),
        )),
    }
}

pub(crate) fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub(crate) use trellis_identity::sha256;
