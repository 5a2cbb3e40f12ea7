//! Pure checks of untrusted certificate signing requests, before anything is signed.
//!
//! [`check_csr`] takes the bytes a caller sent and the [`CsrPolicy`] the
//! control plane derived from the caller's credentials, and either returns
//! the public key and lifetime to certify or a [`CsrError`] naming what was
//! expected and what was found. No I/O, no clock: table-tested and fuzzable.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_SIG_ED25519, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// What the caller is entitled to, decided by the control plane before the
/// CSR is looked at (from the join token or the caller's mTLS identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrPolicy {
    /// The only SPIFFE ID the certificate may carry, e.g. `spiffe://example.org/ns/default/sa/web`.
    pub expected_uri: String,
    /// The lifetime the caller asked for; `None` means `default_ttl`.
    pub requested_ttl: Option<Duration>,
    /// Lifetime when none is requested (capped at `max_ttl`).
    pub default_ttl: Duration,
    /// Longest lifetime this CA grants.
    pub max_ttl: Duration,
}

/// The public key types the mesh CA certifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::EcdsaP256 => "ECDSA P-256",
            KeyKind::EcdsaP384 => "ECDSA P-384",
            KeyKind::Ed25519 => "Ed25519",
        })
    }
}

/// A CSR that passed every check: what to put in the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedCsr {
    /// DER `SubjectPublicKeyInfo` of the requester's key.
    pub public_key_der: Vec<u8>,
    pub key_kind: KeyKind,
    /// The granted lifetime (requested, or the default), never zero, never over the maximum.
    pub ttl: Duration,
    /// DER of the whole CSR, for audit logs.
    pub csr_der: Vec<u8>,
}

/// Why a CSR was refused. Values found in the CSR are escaped and shortened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error(
        "cannot parse the CSR: {reason}; send one PEM `CERTIFICATE REQUEST` block or \
         DER PKCS#10, e.g. from `trellis_identity::csr::generate_csr`"
    )]
    Unparsable { reason: String },
    #[error(
        "the CSR signature does not verify with the key it carries ({reason}); the request \
         was altered in transit or built wrongly, generate a new key and CSR"
    )]
    BadSignature { reason: String },
    #[error(
        "unsupported CSR key: {found}; the mesh CA accepts ECDSA P-256, ECDSA P-384 or \
         Ed25519 keys only (RSA and other curves are refused)"
    )]
    UnsupportedKey { found: String },
    #[error("the CSR carries no URI SAN (found: {found}); it must carry exactly one: {expected}")]
    NoUriSan { expected: String, found: String },
    #[error(
        "the CSR asks for identity {found} but this caller may only get {expected}; \
         check the service account / token the request was made with"
    )]
    WrongIdentity { expected: String, found: String },
    #[error(
        "the CSR must carry exactly one SAN, the URI {expected}, and no DNS, IP or email \
         names; found: {found}"
    )]
    ExtraSans { expected: String, found: String },
    #[error(
        "requested certificate lifetime {} is over the maximum {} this CA grants; ask for \
         a shorter ttl",
        fmt_duration(*requested),
        fmt_duration(*max)
    )]
    TtlTooLong { requested: Duration, max: Duration },
    #[error(
        "certificate lifetime is zero (under one second); ask for a ttl between 1s and {}",
        fmt_duration(*max)
    )]
    ZeroTtl { max: Duration },
}

/// Checks an untrusted CSR (PEM or DER) against what the caller is entitled to.
///
/// The order is parse → key type → signature → SANs → lifetime; the first
/// failure is returned.
pub fn check_csr(csr_pem_or_der: &[u8], policy: &CsrPolicy) -> Result<CheckedCsr, CsrError> {
    let csr = verify_csr(csr_pem_or_der)?;
    check_names(&csr.names, &policy.expected_uri)?;
    let ttl = effective_ttl(policy)?;
    Ok(CheckedCsr {
        public_key_der: csr.spki_der,
        key_kind: csr.key_kind,
        ttl,
        csr_der: csr.der,
    })
}

/// A parsed CSR whose self-signature verified and whose key type is
/// accepted; its names are not yet judged.
#[derive(Debug)]
pub(crate) struct VerifiedCsr {
    pub spki_der: Vec<u8>,
    pub key_kind: KeyKind,
    pub der: Vec<u8>,
    pub names: Vec<RequestedName>,
}

/// A subject alternative name requested in a CSR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RequestedName {
    Uri(String),
    /// Anything else, described for messages (`DNS:x`, `IP:1.2.3.4`, ...).
    Other(String),
}

impl fmt::Display for RequestedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestedName::Uri(u) => write!(f, "URI:{}", shown(u)),
            RequestedName::Other(o) => f.write_str(o),
        }
    }
}

/// Checks a CSR for an intermediate CA before anything is spent on it: it
/// parses, its key type is accepted and its self-signature verifies. Its
/// names do not matter: the root decides them.
pub fn check_ca_csr(input: &[u8]) -> Result<(), CsrError> {
    verify_csr(input).map(|_| ())
}

/// Parses PEM or DER, checks the key type and the self-signature.
pub(crate) fn verify_csr(input: &[u8]) -> Result<VerifiedCsr, CsrError> {
    let der = to_der(input)?;
    let (rem, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Unparsable {
            reason: format!("not a DER PKCS#10 request ({e})"),
        })?;
    if !rem.is_empty() {
        return Err(CsrError::Unparsable {
            reason: format!("{} unexpected bytes after the request", rem.len()),
        });
    }
    if !envelope_is_der(&der) {
        return Err(CsrError::Unparsable {
            reason: "the outer structure is not DER (wrong tag or length encoding)".to_string(),
        });
    }
    let info = &csr.certification_request_info;
    let key_kind = key_kind(&info.subject_pki)?;
    csr.verify_signature().map_err(|e| CsrError::BadSignature {
        reason: e.to_string(),
    })?;
    let names = requested_names(&csr)?;
    let spki_der = info.subject_pki.raw.to_vec();
    Ok(VerifiedCsr {
        spki_der,
        key_kind,
        der,
        names,
    })
}

fn to_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(input.len());
    if !input[start..].starts_with(b"-----BEGIN") {
        if input.is_empty() {
            return Err(CsrError::Unparsable {
                reason: "the request is empty".to_string(),
            });
        }
        return Ok(input.to_vec());
    }
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(input).map_err(|e| CsrError::Unparsable {
            reason: format!("bad PEM ({e})"),
        })?;
    if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
        return Err(CsrError::Unparsable {
            reason: format!(
                "PEM block is `{}`, expected `CERTIFICATE REQUEST`",
                shown(&pem.label)
            ),
        });
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(CsrError::Unparsable {
            reason: "more than one PEM block; send only the certificate request".to_string(),
        });
    }
    Ok(pem.contents)
}

/// The parser tolerates BER-style tags in the unsigned outer wrapper
/// (request, signature algorithm, signature); the signature does not cover
/// those bytes, so check them strictly here to accept one encoding only.
fn envelope_is_der(der: &[u8]) -> bool {
    let Some((0x30, body, [])) = der_tlv(der) else {
        return false;
    };
    let Some((0x30, _info, rest)) = der_tlv(body) else {
        return false;
    };
    let Some((0x30, alg, rest)) = der_tlv(rest) else {
        return false;
    };
    let Some((0x06, _oid, _params)) = der_tlv(alg) else {
        return false;
    };
    // A signature is whole bytes: zero unused bits.
    matches!(der_tlv(rest), Some((0x03, [0, ..], [])))
}

/// One DER tag-length-value with a one-byte tag and a minimal length:
/// `(tag, contents, rest)`.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        // Minimal encoding: no leading zero byte, long form only from 128.
        if bytes[0] == 0 || len < 0x80 {
            return None;
        }
        (len, rest)
    };
    (rest.len() >= len)
        .then(|| rest.split_at(len))
        .map(|(c, r)| (tag, c, r))
}

fn key_kind(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, CsrError> {
    let alg = &spki.algorithm.algorithm;
    let key_len = spki.subject_public_key.data.len();
    let (kind, want_len) = if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => (KeyKind::EcdsaP256, 65),
            Some(c) if c == OID_NIST_EC_P384 => (KeyKind::EcdsaP384, 97),
            Some(c) => {
                return Err(CsrError::UnsupportedKey {
                    found: format!("ECDSA on curve {}", curve_name(&c.to_id_string())),
                })
            }
            None => {
                return Err(CsrError::UnsupportedKey {
                    found: "ECDSA without a named curve".to_string(),
                })
            }
        }
    } else if *alg == OID_SIG_ED25519 {
        (KeyKind::Ed25519, 32)
    } else if *alg == OID_PKCS1_RSAENCRYPTION || *alg == OID_PKCS1_RSASSAPSS {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(k)) => format!("{} bits", k.key_size()),
            _ => "malformed".to_string(),
        };
        return Err(CsrError::UnsupportedKey {
            found: format!("RSA ({bits})"),
        });
    } else {
        return Err(CsrError::UnsupportedKey {
            found: format!("key algorithm OID {alg}"),
        });
    };
    // Uncompressed points only (what every TLS stack produces); a wrong size
    // is a malformed key rather than a bad signature.
    if key_len != want_len {
        return Err(CsrError::UnsupportedKey {
            found: format!("{kind} public key of {key_len} bytes (expected {want_len})"),
        });
    }
    Ok(kind)
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.10" => "secp256k1".to_string(),
        "1.3.132.0.35" => "P-521".to_string(),
        "1.2.840.10045.3.1.1" => "P-192".to_string(),
        "1.3.132.0.33" => "P-224".to_string(),
        other => format!("OID {other}"),
    }
}

/// Every SAN in every extension request of the CSR.
fn requested_names(csr: &X509CertificationRequest<'_>) -> Result<Vec<RequestedName>, CsrError> {
    let mut names = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in &req.extensions {
            if ext.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CsrError::Unparsable {
                    reason: "the subject alternative name extension is malformed".to_string(),
                });
            };
            names.extend(san.general_names.iter().map(describe));
        }
    }
    Ok(names)
}

fn describe(name: &GeneralName<'_>) -> RequestedName {
    let other = |s: String| RequestedName::Other(s);
    match name {
        GeneralName::URI(u) => RequestedName::Uri((*u).to_string()),
        GeneralName::DNSName(d) => other(format!("DNS:{}", shown(d))),
        GeneralName::RFC822Name(e) => other(format!("email:{}", shown(e))),
        GeneralName::IPAddress(b) => other(match <[u8; 4]>::try_from(*b) {
            Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*b) {
                Ok(v6) => format!("IP:{}", IpAddr::from(v6)),
                Err(_) => format!("IP:<{} bytes>", b.len()),
            },
        }),
        GeneralName::DirectoryName(n) => other(format!("DirName:{}", shown(&n.to_string()))),
        GeneralName::OtherName(oid, _) => other(format!("otherName:{oid}")),
        GeneralName::RegisteredID(oid) => other(format!("RID:{oid}")),
        GeneralName::X400Address(_) => other("X400Address".to_string()),
        GeneralName::EDIPartyName(_) => other("EDIPartyName".to_string()),
        GeneralName::Invalid(tag, _) => other(format!("invalid name (tag {})", tag.0)),
    }
}

fn check_names(names: &[RequestedName], expected: &str) -> Result<(), CsrError> {
    let list = || {
        if names.is_empty() {
            "no SAN".to_string()
        } else {
            names
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut uris = names.iter().filter_map(|n| match n {
        RequestedName::Uri(u) => Some(u.as_str()),
        RequestedName::Other(_) => None,
    });
    let Some(first_uri) = uris.next() else {
        return Err(CsrError::NoUriSan {
            expected: expected.to_string(),
            found: list(),
        });
    };
    if names.len() > 1 {
        return Err(CsrError::ExtraSans {
            expected: expected.to_string(),
            found: list(),
        });
    }
    // Exact comparison: no case folding or normalisation, so what is
    // certified is byte for byte what the control plane authorised.
    if first_uri != expected {
        return Err(CsrError::WrongIdentity {
            expected: expected.to_string(),
            found: shown(first_uri),
        });
    }
    Ok(())
}

fn effective_ttl(policy: &CsrPolicy) -> Result<Duration, CsrError> {
    let ttl = match policy.requested_ttl {
        Some(t) if t > policy.max_ttl => {
            return Err(CsrError::TtlTooLong {
                requested: t,
                max: policy.max_ttl,
            })
        }
        Some(t) => t,
        None => policy.default_ttl.min(policy.max_ttl),
    };
    if ttl.as_secs() == 0 {
        return Err(CsrError::ZeroTtl {
            max: policy.max_ttl,
        });
    }
    Ok(ttl)
}

/// Escapes control characters and shortens untrusted text for messages.
fn shown(s: &str) -> String {
    const MAX: usize = 200;
    let escaped: String = s.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() > MAX {
        let cut: String = escaped.chars().take(MAX).collect();
        format!("{cut}…")
    } else {
        escaped
    }
}

/// `36h`, `1h30m`, `90s`, `500ms`: durations as operators write ttls.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
#[path = "csr_check_tests.rs"]
mod tests;
