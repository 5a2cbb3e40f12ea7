//! Tests of the root and intermediate CAs through the public API: properties of what they sign, and
//! that issued chains verify to the root with webpki (and not to another root).

use std::time::Duration;

use base64::Engine as _;
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::*;

const TD: &str = "example.org";
const WEB: &str = "spiffe://example.org/ns/default/sa/web";
const HOUR: Duration = Duration::from_secs(3600);

fn der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents
}

fn with_cert<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let der = der(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    f(&cert)
}

fn uris(pem: &str) -> Vec<String> {
    with_cert(pem, |c| {
        c.subject_alternative_name()
            .unwrap()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

fn all_san_count(pem: &str) -> usize {
    with_cert(pem, |c| {
        c.subject_alternative_name()
            .unwrap()
            .map_or(0, |s| s.value.general_names.len())
    })
}

/// (ca, pathlen)
fn basic_constraints(pem: &str) -> (bool, Option<u32>) {
    with_cert(pem, |c| {
        let bc = c.basic_constraints().unwrap().unwrap().value;
        (bc.ca, bc.path_len_constraint)
    })
}

fn validity(pem: &str) -> (i64, i64) {
    with_cert(pem, |c| {
        (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        )
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn csr_for(alg: &'static rcgen::SignatureAlgorithm, sans: &[&str]) -> (String, KeyPair) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI(Ia5String::try_from(*s).unwrap()))
        .collect();
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key)
}

fn setup() -> (RootCa, IntermediateCa, String) {
    let root = RootCa::generate(TD).unwrap();
    let (csr, key) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    let int_pem = root
        .sign_intermediate(&csr, "cp-1", DEFAULT_INTERMEDIATE_LIFETIME)
        .unwrap();
    let int = IntermediateCa::from_pem(&int_pem, &key.serialize_pem(), root.cert_pem()).unwrap();
    (root, int, key.serialize_pem())
}

fn policy(uri: &str) -> CsrPolicy {
    CsrPolicy {
        expected_uri: uri.to_string(),
        requested_ttl: None,
        default_ttl: DEFAULT_LEAF_TTL,
        max_ttl: 48 * HOUR,
    }
}

/// Verifies `issued` to `root_pem` for the given usage, as a rustls peer would.
fn verify(
    root_pem: &str,
    issued: &IssuedCert,
    usage: webpki::KeyUsage,
) -> Result<(), webpki::Error> {
    let root = CertificateDer::from(der(root_pem));
    let anchor = webpki::anchor_from_trusted_cert(&root)?;
    let leaf = CertificateDer::from(der(&issued.chain_pem[0]));
    let inter = vec![CertificateDer::from(der(&issued.chain_pem[1]))];
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &inter,
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
}

#[test]
fn root_is_a_ten_year_spiffe_ca() {
    let root = RootCa::generate(TD).unwrap();
    assert_eq!(root.trust_domain(), TD);
    assert_eq!(basic_constraints(root.cert_pem()), (true, Some(1)));
    assert_eq!(uris(root.cert_pem()), vec!["spiffe://example.org"]);
    // What an agent given only the root (a pod's --roots) reads it as.
    let der = trellis_identity::pem::certs(root.cert_pem(), "root").unwrap();
    assert_eq!(
        trellis_identity::pem::root_trust_domain(&der[0]).unwrap(),
        TD
    );
    // Not an intermediate, whose URI SAN names its node.
    let (_, int, _) = setup();
    let der = trellis_identity::pem::certs(int.cert_pem(), "intermediate").unwrap();
    assert!(trellis_identity::pem::root_trust_domain(&der[0]).is_err());
    let (nb, na) = validity(root.cert_pem());
    assert!(nb <= now() - 240 && nb >= now() - 360, "backdated ~5 min");
    assert!((na - now() - ROOT_LIFETIME.as_secs() as i64).abs() < 60);
    assert_eq!(na, root.not_after_unix());
    with_cert(root.cert_pem(), |c| {
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(c.verify_signature(None).is_ok());
    });
    assert_eq!(
        root.fingerprint_sha256(),
        cert_fingerprint(root.cert_pem()).unwrap()
    );
}

#[test]
fn root_survives_sealing_and_reloading() {
    let root = RootCa::generate(TD).unwrap();
    let seal = SealKey::generate();
    let sealed = seal.seal(root.key_pem().as_bytes());
    let key_pem = String::from_utf8(seal.open(&sealed).unwrap()).unwrap();
    let again = RootCa::from_pem(root.cert_pem(), &key_pem).unwrap();
    assert_eq!(again.fingerprint_sha256(), root.fingerprint_sha256());
    assert_eq!(again.trust_domain(), TD);
    // The reloaded root still signs intermediates that chain to the original.
    let (csr, key) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    let int_pem = again.sign_intermediate(&csr, "cp-2", HOUR).unwrap();
    IntermediateCa::from_pem(&int_pem, &key.serialize_pem(), root.cert_pem()).unwrap();
}

#[test]
fn root_from_pem_refuses_bad_inputs() {
    let a = RootCa::generate(TD).unwrap();
    let b = RootCa::generate(TD).unwrap();
    let err = RootCa::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    let err = RootCa::from_pem("garbage", a.key_pem()).unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { .. }), "{err}");
    let err = RootCa::from_pem(a.cert_pem(), "garbage").unwrap_err();
    assert!(matches!(err, CaError::BadKey { .. }), "{err}");
    // A leaf is not a root.
    let (_, int, _) = setup();
    let (leaf, leaf_key) = int.issue_local(WEB, &[], HOUR).unwrap();
    let err = RootCa::from_pem(&leaf.cert_pem, &leaf_key).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
}

#[test]
fn trust_domain_and_node_names_are_validated() {
    for td in ["", "Example.org", "example.org/x", "exa mple"] {
        let err = RootCa::generate(td).unwrap_err();
        assert!(matches!(err, CaError::BadName { .. }), "{td}: {err}");
    }
    let root = RootCa::generate(TD).unwrap();
    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    for node in ["", "a/b", "..", "x y", &"n".repeat(64)] {
        let err = root.sign_intermediate(&csr, node, HOUR).unwrap_err();
        assert!(matches!(err, CaError::BadName { .. }), "{node}: {err}");
    }
    let err = root
        .sign_intermediate(&csr, "cp-1", Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CaError::BadLifetime { .. }), "{err}");
}

#[test]
fn intermediate_is_decided_by_the_root_not_the_csr() {
    let root = RootCa::generate(TD).unwrap();
    // The CSR asks for a workload identity; the root ignores it.
    let (csr, key) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[WEB]);
    let pem = root
        .sign_intermediate(&csr, "cp-1", 30 * 24 * HOUR)
        .unwrap();
    assert_eq!(
        uris(&pem),
        vec!["spiffe://example.org/trellis/controlplane/cp-1"]
    );
    assert_eq!(all_san_count(&pem), 1);
    assert_eq!(basic_constraints(&pem), (true, Some(0)));
    with_cert(&pem, |c| {
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        assert!(!ku.digital_signature());
        let cn: Vec<_> = c.subject().iter_common_name().collect();
        assert_eq!(cn[0].as_str().unwrap(), "Trellis intermediate CA cp-1");
        assert_eq!(c.public_key().raw, key.subject_public_key_info());
    });
    let (nb, na) = validity(&pem);
    assert!(nb <= now() - 240);
    assert!((na - now() - 30 * 24 * 3600).abs() < 60);

    let int = IntermediateCa::from_pem(&pem, &key.serialize_pem(), root.cert_pem()).unwrap();
    assert_eq!(int.trust_domain(), TD);
    assert_eq!(int.node_name(), "cp-1");
    assert_eq!(int.root_pem(), root.cert_pem());
}

#[test]
fn intermediate_never_outlives_the_root() {
    let root = RootCa::generate(TD).unwrap();
    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    let pem = root
        .sign_intermediate(&csr, "cp-1", Duration::from_secs(u64::MAX))
        .unwrap();
    assert_eq!(validity(&pem).1, root.not_after_unix());
}

#[test]
fn sign_intermediate_checks_the_csr() {
    let root = RootCa::generate(TD).unwrap();
    let err = root.sign_intermediate("garbage", "cp-1", HOUR).unwrap_err();
    assert!(
        matches!(err, CaError::Csr(CsrError::Unparsable { .. })),
        "{err}"
    );
    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    let mut bytes = der(&csr.replace("CERTIFICATE REQUEST", "CERTIFICATE"));
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    let err = root.sign_intermediate(&tampered, "cp-1", HOUR).unwrap_err();
    assert!(
        matches!(err, CaError::Csr(CsrError::BadSignature { .. })),
        "{err}"
    );
}

#[test]
fn issued_workload_chain_verifies_for_client_and_server() {
    let (root, int, _) = setup();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let (csr, key) = csr_for(alg, &[WEB]);
        let issued = int.issue(csr.as_bytes(), &policy(WEB)).unwrap();
        verify(root.cert_pem(), &issued, webpki::KeyUsage::client_auth()).unwrap();
        verify(root.cert_pem(), &issued, webpki::KeyUsage::server_auth()).unwrap();
        assert_eq!(
            issued.chain_pem,
            vec![issued.cert_pem.clone(), int.cert_pem().to_string()]
        );
        assert_eq!(uris(&issued.cert_pem), vec![WEB]);
        assert_eq!(all_san_count(&issued.cert_pem), 1);
        assert_eq!(basic_constraints(&issued.cert_pem), (false, None));
        with_cert(&issued.cert_pem, |c| {
            assert_eq!(c.public_key().raw, key.subject_public_key_info());
            let ku = c.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
        });
        let (nb, na) = validity(&issued.cert_pem);
        assert!(nb <= now() - 50 && nb >= now() - 70, "backdated ~1 min");
        assert_eq!(na, issued.not_after_unix);
        assert!((na - now() - DEFAULT_LEAF_TTL.as_secs() as i64).abs() < 60);
    }
}

#[test]
fn requested_ttl_is_used_and_serials_differ() {
    let (_, int, _) = setup();
    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[WEB]);
    let p = CsrPolicy {
        requested_ttl: Some(2 * HOUR),
        ..policy(WEB)
    };
    let a = int.issue(csr.as_bytes(), &p).unwrap();
    let b = int.issue(csr.as_bytes(), &p).unwrap();
    assert!((a.not_after_unix - now() - 7200).abs() < 60);
    let serial = |pem: &str| with_cert(pem, |c| c.raw_serial().to_vec());
    assert_ne!(serial(&a.cert_pem), serial(&b.cert_pem));
}

#[test]
fn never_signs_a_mismatched_identity() {
    let (_, int, _) = setup();
    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[WEB]);
    let err = int
        .issue(
            csr.as_bytes(),
            &policy("spiffe://example.org/ns/default/sa/db"),
        )
        .unwrap_err();
    assert!(
        matches!(err, CaError::Csr(CsrError::WrongIdentity { .. })),
        "{err}"
    );

    // Even when CSR and policy agree, an identity outside the CA's trust
    // domain is refused.
    let foreign = "spiffe://other.org/ns/default/sa/web";
    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[foreign]);
    let err = int.issue(csr.as_bytes(), &policy(foreign)).unwrap_err();
    assert!(matches!(err, CaError::BadName { .. }), "{err}");
    let err = int.issue_local(foreign, &[], HOUR).unwrap_err();
    assert!(matches!(err, CaError::BadName { .. }), "{err}");
    let err = int
        .issue_local("spiffe://example.org/ns/../sa/x", &[], HOUR)
        .unwrap_err();
    assert!(matches!(err, CaError::BadName { .. }), "{err}");
}

#[test]
fn issue_local_serves_node_and_admin() {
    let (root, int, _) = setup();
    let id = "spiffe://example.org/trellis/controlplane/cp-1";
    let sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "cp-1.example.org".to_string(),
    ];
    let (issued, key_pem) = int.issue_local(id, &sans, 12 * HOUR).unwrap();
    verify(root.cert_pem(), &issued, webpki::KeyUsage::server_auth()).unwrap();
    verify(root.cert_pem(), &issued, webpki::KeyUsage::client_auth()).unwrap();
    assert_eq!(uris(&issued.cert_pem), vec![id]);
    assert_eq!(all_san_count(&issued.cert_pem), 4);
    let leaf = CertificateDer::from(der(&issued.cert_pem));
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for name in ["localhost", "127.0.0.1", "cp-1.example.org"] {
        ee.verify_is_valid_for_subject_name(&ServerName::try_from(name).unwrap())
            .unwrap();
    }
    let key = KeyPair::from_pem(&key_pem).unwrap();
    with_cert(&issued.cert_pem, |c| {
        assert_eq!(c.public_key().raw, key.subject_public_key_info());
    });
    assert!((issued.not_after_unix - now() - 12 * 3600).abs() < 60);

    let (admin, _) = int
        .issue_local("spiffe://example.org/trellis/admin", &[], HOUR)
        .unwrap();
    verify(root.cert_pem(), &admin, webpki::KeyUsage::client_auth()).unwrap();

    for bad in ["", "bad name", "a..b", "x/y"] {
        let err = int.issue_local(id, &[bad.to_string()], HOUR).unwrap_err();
        assert!(matches!(err, CaError::BadName { .. }), "{bad:?}: {err}");
    }
    let err = int.issue_local(id, &[], Duration::ZERO).unwrap_err();
    assert!(matches!(err, CaError::BadLifetime { .. }), "{err}");
}

#[test]
fn leaf_never_outlives_its_intermediate() {
    let root = RootCa::generate(TD).unwrap();
    let (csr, key) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    let int_pem = root.sign_intermediate(&csr, "cp-1", HOUR).unwrap();
    let int = IntermediateCa::from_pem(&int_pem, &key.serialize_pem(), root.cert_pem()).unwrap();
    let (issued, _) = int.issue_local(WEB, &[], 48 * HOUR).unwrap();
    assert_eq!(issued.not_after_unix, int.not_after_unix());
}

#[test]
fn intermediate_of_another_root_does_not_verify() {
    let (root, int, int_key) = setup();
    let other = RootCa::generate(TD).unwrap();

    let err = IntermediateCa::from_pem(int.cert_pem(), &int_key, other.cert_pem()).unwrap_err();
    assert!(matches!(err, CaError::NotIssuedByRoot { .. }), "{err}");

    let (csr, _) = csr_for(&rcgen::PKCS_ECDSA_P256_SHA256, &[WEB]);
    let issued = int.issue(csr.as_bytes(), &policy(WEB)).unwrap();
    verify(root.cert_pem(), &issued, webpki::KeyUsage::client_auth()).unwrap();
    assert!(verify(other.cert_pem(), &issued, webpki::KeyUsage::client_auth()).is_err());
    assert!(verify(other.cert_pem(), &issued, webpki::KeyUsage::server_auth()).is_err());
}

#[test]
fn intermediate_from_pem_refuses_bad_inputs() {
    let (root, int, _) = setup();
    let (_, _, other_key) = setup();
    let err = IntermediateCa::from_pem(int.cert_pem(), &other_key, root.cert_pem()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    // A leaf cannot act as an intermediate.
    let (leaf, leaf_key) = int.issue_local(WEB, &[], HOUR).unwrap();
    let err = IntermediateCa::from_pem(&leaf.cert_pem, &leaf_key, root.cert_pem()).unwrap_err();
    assert!(matches!(err, CaError::BadCertificate { .. }), "{err}");
}

#[test]
fn debug_never_shows_keys() {
    let (root, int, int_key) = setup();
    let body = |pem: &str| pem.lines().nth(1).unwrap().to_string();
    let dbg = format!("{root:?} {int:?}");
    assert!(!dbg.contains(&body(root.key_pem())), "{dbg}");
    assert!(!dbg.contains(&body(&int_key)), "{dbg}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    assert!(dbg.contains(&hex::encode(root.fingerprint_sha256())));
}

#[test]
fn cas_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<RootCa>();
    send_sync::<IntermediateCa>();
    send_sync::<SealKey>();
}
