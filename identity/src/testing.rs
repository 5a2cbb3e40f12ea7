//! A throwaway CA for tests: a root, and leaf identities it issues with a
//! SPIFFE ID as their URI SAN. For tests of this crate and of the crates
//! above it (the `test-util` feature); never for real certificates.
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::verify::Identity;

/// A root certificate and its key.
pub struct TestCa {
    pub root: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed root.
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("an ECDSA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("a self-signed root");
        Self {
            root: root.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `uri` (a SPIFFE ID), its chain ending with the root.
    pub fn issue(&self, uri: &str) -> Identity {
        let key = KeyPair::generate().expect("an ECDSA key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("an IA5 URI"))];
        let leaf = params
            .signed_by(&key, &self.issuer)
            .expect("a leaf signed by the root");
        Identity {
            chain: vec![leaf.der().clone(), self.root.clone()],
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("a PKCS#8 key"),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
