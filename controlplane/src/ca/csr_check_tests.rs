//! Table tests of [`check_csr`] and a no-panic loop over mangled CSRs.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, SanType, SignatureAlgorithm};

use super::*;

const ID: &str = "spiffe://example.org/ns/default/sa/web";
const HOUR: Duration = Duration::from_secs(3600);

/// `openssl req -newkey rsa:2048 -addext subjectAltName=URI:spiffe://example.org/ns/default/sa/web`
/// (ring cannot generate RSA keys, so the request is fixed here).
const RSA_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIClzCCAX8CAQAwDjEMMAoGA1UEAwwDcnNhMIIBIjANBgkqhkiG9w0BAQEFAAOC
AQ8AMIIBCgKCAQEAlcEgHvZ01tbezAaQnjDo8SeKIWsi7D6FNXa6Yga/cxy0nbMs
+KQkaI8QbRpbYW0cbI+YJobugUNlLr6G17sx3Uw/3SJPFkUD7+bbSX8q4HcVsdwo
jYK5AweFxDiaiG2NwXZ+QyMKqs+HizE7/zDNI9e78I9tkxRRQuUHJKwU2RVYh49k
Z9fibj8boHmyRqTSoiakvSWNS+4Bcmm6hqaUX/ZaXnWnQePoQMYEHgAwvhR0c3KJ
BdkcZQ+c2wVHw1nScCTnNB7ue27+7PcbeXj6nv4AUWcVD8Zxn1h1dBcqYxf0uhI1
cDN3mlc+qQF9t42bNLlrd1u9M23DQqFTwiF44wIDAQABoEQwQgYJKoZIhvcNAQkO
MTUwMzAxBgNVHREEKjAohiZzcGlmZmU6Ly9leGFtcGxlLm9yZy9ucy9kZWZhdWx0
L3NhL3dlYjANBgkqhkiG9w0BAQsFAAOCAQEAc6htOmQFsEfryIRcXn2gWfrBolEH
I9I+7tx1zzeIQGOE9ow/ozfc33t8ZCPDFWjJl3J33Zkeh5x9kC5vYLKQTyB1RMo0
lmiQ2KJlTK0dRbp+5REYGojVf3G3p3HaG1CJIvg6uAmiFQvWeRgghd5visR+NznG
NNiFgeMRpKO5OtqdLWClU6Nhi7tHR9wU2p2pvu5SrB1U0Xk0ZJ8skfSd1t0jLJfA
zyHxHtDQgHo1WGi0xtzXc8bmpyYSlBx01R6GOkb0Vx+x8dAEA3lzWndOLX1SqWrn
DXCPUCr+Lbh5B7YtbmZGROZnYb8wSxh2szPQOFz6s7+Okyj+AaI3mvfMlg==
-----END CERTIFICATE REQUEST-----
";

/// `openssl ecparam -name secp256k1`, same SAN: a curve the CA refuses.
const SECP256K1_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBCTCBsAIBADANMQswCQYDVQQDDAJrMTBWMBAGByqGSM49AgEGBSuBBAAKA0IA
BFjtCtYvDWb8FJb9BTVkkBpj15NP5UTigmjzrIXY8vrJ9B9X/t1Z9I6hFx9EYrXK
ZGmPCVmpyltz+SFX4nXvYN+gRDBCBgkqhkiG9w0BCQ4xNTAzMDEGA1UdEQQqMCiG
JnNwaWZmZTovL2V4YW1wbGUub3JnL25zL2RlZmF1bHQvc2Evd2ViMAoGCCqGSM49
BAMCA0gAMEUCIFB78yy2t4kg4Jpz3XADCW7P+SZ9qUc2hclQWYGEgTO5AiEAnomd
MkselSU7+WM59UgDhDbYVm8F+mpKR3Hm8gQtMw8=
-----END CERTIFICATE REQUEST-----
";

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

fn dns(s: &str) -> SanType {
    SanType::DnsName(Ia5String::try_from(s).unwrap())
}

fn csr_der(alg: &'static SignatureAlgorithm, sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn csr_pem(alg: &'static SignatureAlgorithm, sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

fn p256(sans: Vec<SanType>) -> Vec<u8> {
    csr_pem(&rcgen::PKCS_ECDSA_P256_SHA256, sans)
}

fn policy(requested: Option<Duration>) -> CsrPolicy {
    CsrPolicy {
        expected_uri: ID.to_string(),
        requested_ttl: requested,
        default_ttl: 24 * HOUR,
        max_ttl: 48 * HOUR,
    }
}

fn variant(e: &CsrError) -> &'static str {
    match e {
        CsrError::Unparsable { .. } => "Unparsable",
        CsrError::BadSignature { .. } => "BadSignature",
        CsrError::UnsupportedKey { .. } => "UnsupportedKey",
        CsrError::NoUriSan { .. } => "NoUriSan",
        CsrError::WrongIdentity { .. } => "WrongIdentity",
        CsrError::ExtraSans { .. } => "ExtraSans",
        CsrError::TtlTooLong { .. } => "TtlTooLong",
        CsrError::ZeroTtl { .. } => "ZeroTtl",
    }
}

/// A valid DER CSR with one bit of its signature flipped (still parses).
fn bad_signature() -> Vec<u8> {
    let mut der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(ID)]);
    let last = der.len() - 1;
    der[last] ^= 0x01;
    der
}

enum Expect {
    Ok(KeyKind, Duration),
    /// Variant name and fragments the message must contain.
    Err(&'static str, &'static [&'static str]),
}

#[test]
fn table() {
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let cases: Vec<(&str, Vec<u8>, CsrPolicy, Expect)> = vec![
        (
            "P-256 PEM, default ttl",
            p256(vec![uri(ID)]),
            policy(None),
            Expect::Ok(KeyKind::EcdsaP256, 24 * HOUR),
        ),
        (
            "P-256 DER, requested ttl",
            csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(ID)]),
            policy(Some(HOUR)),
            Expect::Ok(KeyKind::EcdsaP256, HOUR),
        ),
        (
            "P-384",
            csr_pem(&rcgen::PKCS_ECDSA_P384_SHA384, vec![uri(ID)]),
            policy(Some(48 * HOUR)),
            Expect::Ok(KeyKind::EcdsaP384, 48 * HOUR),
        ),
        (
            "Ed25519",
            csr_pem(&rcgen::PKCS_ED25519, vec![uri(ID)]),
            policy(None),
            Expect::Ok(KeyKind::Ed25519, 24 * HOUR),
        ),
        (
            "default over max is capped",
            p256(vec![uri(ID)]),
            CsrPolicy {
                default_ttl: 100 * HOUR,
                ..policy(None)
            },
            Expect::Ok(KeyKind::EcdsaP256, 48 * HOUR),
        ),
        (
            "garbage",
            b"hello, I am not a CSR".to_vec(),
            policy(None),
            Expect::Err("Unparsable", &["PKCS#10"]),
        ),
        (
            "empty",
            Vec::new(),
            policy(None),
            Expect::Err("Unparsable", &["empty"]),
        ),
        (
            "PEM of a certificate",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            policy(None),
            Expect::Err("Unparsable", &["`CERTIFICATE`", "CERTIFICATE REQUEST"]),
        ),
        (
            "two PEM blocks",
            [p256(vec![uri(ID)]), p256(vec![uri(ID)])].concat(),
            policy(None),
            Expect::Err("Unparsable", &["more than one PEM block"]),
        ),
        (
            "trailing bytes after DER",
            [
                csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(ID)]),
                vec![0],
            ]
            .concat(),
            policy(None),
            Expect::Err("Unparsable", &["1 unexpected bytes"]),
        ),
        (
            "bad signature",
            bad_signature(),
            policy(None),
            Expect::Err("BadSignature", &["generate a new key"]),
        ),
        (
            "RSA key",
            RSA_CSR.as_bytes().to_vec(),
            policy(None),
            Expect::Err("UnsupportedKey", &["RSA (2048 bits)", "P-256", "Ed25519"]),
        ),
        (
            "secp256k1 key",
            SECP256K1_CSR.as_bytes().to_vec(),
            policy(None),
            Expect::Err("UnsupportedKey", &["secp256k1", "other curves"]),
        ),
        (
            "no SAN at all",
            p256(vec![]),
            policy(None),
            Expect::Err("NoUriSan", &["no SAN", ID]),
        ),
        (
            "DNS SAN only",
            p256(vec![dns("web.default.svc")]),
            policy(None),
            Expect::Err("NoUriSan", &["DNS:web.default.svc", ID]),
        ),
        (
            "other workload's identity",
            p256(vec![uri("spiffe://example.org/ns/default/sa/db")]),
            policy(None),
            Expect::Err("WrongIdentity", &["sa/db", ID]),
        ),
        (
            "foreign trust domain",
            p256(vec![uri("spiffe://evil.org/ns/default/sa/web")]),
            policy(None),
            Expect::Err("WrongIdentity", &["evil.org", ID]),
        ),
        (
            "case differs",
            p256(vec![uri("spiffe://example.org/ns/default/sa/WEB")]),
            policy(None),
            Expect::Err("WrongIdentity", &["sa/WEB"]),
        ),
        (
            "URI plus DNS",
            p256(vec![uri(ID), dns("web")]),
            policy(None),
            Expect::Err("ExtraSans", &["DNS:web", ID]),
        ),
        (
            "URI plus IP",
            p256(vec![uri(ID), SanType::IpAddress(ip)]),
            policy(None),
            Expect::Err("ExtraSans", &["IP:10.0.0.1"]),
        ),
        (
            "URI plus email",
            p256(vec![
                uri(ID),
                SanType::Rfc822Name(Ia5String::try_from("a@example.org").unwrap()),
            ]),
            policy(None),
            Expect::Err("ExtraSans", &["email:a@example.org"]),
        ),
        (
            "two URIs, one of them right",
            p256(vec![
                uri(ID),
                uri("spiffe://example.org/ns/kube-system/sa/admin"),
            ]),
            policy(None),
            Expect::Err("ExtraSans", &["sa/admin"]),
        ),
        (
            "same URI twice",
            p256(vec![uri(ID), uri(ID)]),
            policy(None),
            Expect::Err("ExtraSans", &[ID]),
        ),
        (
            "ttl over max",
            p256(vec![uri(ID)]),
            policy(Some(72 * HOUR)),
            Expect::Err("TtlTooLong", &["72h", "48h"]),
        ),
        (
            "zero ttl",
            p256(vec![uri(ID)]),
            policy(Some(Duration::ZERO)),
            Expect::Err("ZeroTtl", &["48h"]),
        ),
        (
            "sub-second ttl",
            p256(vec![uri(ID)]),
            policy(Some(Duration::from_millis(500))),
            Expect::Err("ZeroTtl", &[]),
        ),
        (
            "zero default",
            p256(vec![uri(ID)]),
            CsrPolicy {
                default_ttl: Duration::ZERO,
                ..policy(None)
            },
            Expect::Err("ZeroTtl", &[]),
        ),
    ];

    for (name, input, policy, expect) in cases {
        let got = check_csr(&input, &policy);
        match (expect, got) {
            (Expect::Ok(kind, ttl), Ok(c)) => {
                assert_eq!(c.key_kind, kind, "{name}");
                assert_eq!(c.ttl, ttl, "{name}");
                // The returned SPKI is the CSR's own key, reusable for signing.
                rcgen::SubjectPublicKeyInfo::from_der(&c.public_key_der)
                    .unwrap_or_else(|e| panic!("{name}: SPKI unusable: {e}"));
                assert!(!c.csr_der.is_empty());
            }
            (Expect::Err(want, fragments), Err(e)) => {
                assert_eq!(variant(&e), want, "{name}: {e}");
                let msg = e.to_string();
                for f in fragments {
                    assert!(msg.contains(f), "{name}: {msg:?} lacks {f:?}");
                }
            }
            (Expect::Ok(..), Err(e)) => panic!("{name}: refused: {e}"),
            (Expect::Err(want, _), Ok(_)) => panic!("{name}: accepted, wanted {want}"),
        }
    }
}

#[test]
fn untrusted_text_is_escaped_in_messages() {
    let evil = "spiffe://example.org/ns/x/sa/y\u{1b}[2J";
    let err = check_csr(&p256(vec![uri(evil)]), &policy(None)).unwrap_err();
    assert_eq!(variant(&err), "WrongIdentity");
    assert!(!err.to_string().contains('\u{1b}'), "{err}");
}

#[test]
fn durations_are_printed_like_ttls() {
    assert_eq!(fmt_duration(24 * HOUR), "24h");
    assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h30m");
    assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(fmt_duration(Duration::from_millis(500)), "500ms");
}

/// Tiny deterministic generator so failures reproduce.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn garbage_bytes_never_panic() {
    let good_der = csr_der(&rcgen::PKCS_ECDSA_P256_SHA256, vec![uri(ID)]);
    let good_pem = p256(vec![uri(ID)]);
    let policy = policy(None);
    // Every truncation of the DER is refused.
    for len in 0..good_der.len() {
        assert!(check_csr(&good_der[..len], &policy).is_err(), "len {len}");
    }
    // Every single-bit flip of the DER is refused, for each key type: it is
    // unparsable, not DER, or no longer matches its signature.
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let der = csr_der(alg, vec![uri(ID)]);
        assert!(check_csr(&der, &policy).is_ok());
        for i in 0..der.len() {
            for bit in 0..8 {
                let mut m = der.clone();
                m[i] ^= 1 << bit;
                assert!(
                    check_csr(&m, &policy).is_err(),
                    "{alg:?} byte {i} bit {bit}"
                );
            }
        }
    }
    // PEM text: truncations and flips must not panic (some flips in
    // whitespace are harmless, so only the absence of panics is asserted).
    for len in 0..good_pem.len() {
        let _ = check_csr(&good_pem[..len], &policy);
    }
    for i in 0..good_pem.len() {
        let mut m = good_pem.clone();
        m[i] ^= 0x20;
        let _ = check_csr(&m, &policy);
    }
    // Random bytes, and random bytes behind a DER SEQUENCE header or a PEM header.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for round in 0..2000 {
        let len = (xorshift(&mut state) % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
        match round % 3 {
            0 => {}
            1 => {
                let mut v = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
                v.append(&mut bytes);
                bytes = v;
            }
            _ => {
                let mut v = b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec();
                v.append(&mut bytes);
                v.extend_from_slice(b"\n-----END CERTIFICATE REQUEST-----\n");
                bytes = v;
            }
        }
        assert!(check_csr(&bytes, &policy).is_err(), "round {round}");
    }
}
