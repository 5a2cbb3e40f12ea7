//! The verifiers and the certificate cell against certificates from a
//! throwaway CA.
use rustls::client::danger::ServerCertVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use trellis_identity::testing::TestCa;
use trellis_identity::verify::{
    CertCell, Expect, Identity, PinnedRootVerifier, SpiffeServerVerifier,
};
use trellis_identity::SpiffeId;

struct Pki {
    root: CertificateDer<'static>,
    leaf: Identity,
}

fn pki(uri: &str) -> Pki {
    let ca = TestCa::new();
    Pki {
        leaf: ca.issue(uri),
        root: ca.root,
    }
}

fn name() -> ServerName<'static> {
    ServerName::try_from("trellis.invalid").unwrap()
}

#[test]
fn spiffe_verifier_checks_chain_and_identity() {
    let p = pki("spiffe://td/trellis/controlplane/node-1");
    let other = pki("spiffe://td/trellis/controlplane/node-1");
    let check = |roots: &[CertificateDer<'static>], expect: Expect| {
        SpiffeServerVerifier::new(roots, expect)
            .unwrap()
            .verify_server_cert(&p.leaf.chain[0], &[], &name(), &[], UnixTime::now())
    };
    let id = SpiffeId::parse("spiffe://td/trellis/controlplane/node-1").unwrap();
    assert!(check(std::slice::from_ref(&p.root), Expect::Exact(id)).is_ok());
    assert!(check(
        std::slice::from_ref(&p.root),
        Expect::AnyControlPlane {
            trust_domain: "td".into()
        }
    )
    .is_ok());
    let wrong = SpiffeId::parse("spiffe://td/trellis/controlplane/node-2").unwrap();
    assert!(check(std::slice::from_ref(&p.root), Expect::Exact(wrong)).is_err());
    assert!(check(
        std::slice::from_ref(&p.root),
        Expect::AnyControlPlane {
            trust_domain: "other".into()
        }
    )
    .is_err());
    // Same identity, another root: refused.
    assert!(check(
        std::slice::from_ref(&other.root),
        Expect::AnyControlPlaneAnyDomain
    )
    .is_err());
}

#[test]
fn pinned_verifier_needs_the_pinned_root_in_the_chain() {
    let p = pki("spiffe://td/trellis/controlplane/node-1");
    let verify = |pin: [u8; 32], intermediates: &[CertificateDer<'static>]| {
        PinnedRootVerifier::new(pin).verify_server_cert(
            &p.leaf.chain[0],
            intermediates,
            &name(),
            &[],
            UnixTime::now(),
        )
    };
    let pin = trellis_identity::sha256(&p.root);
    assert!(verify(pin, std::slice::from_ref(&p.root)).is_ok());
    let e = verify([0; 32], std::slice::from_ref(&p.root))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match the join token's pin"), "{e}");
    assert!(
        verify(pin, &[]).is_err(),
        "accepted a chain without the root"
    );
    // A workload identity is not a control-plane node.
    let w = pki("spiffe://td/ns/default/sa/web");
    let r = PinnedRootVerifier::new(trellis_identity::sha256(&w.root)).verify_server_cert(
        &w.leaf.chain[0],
        std::slice::from_ref(&w.root),
        &name(),
        &[],
        UnixTime::now(),
    );
    assert!(r.is_err());
}

#[test]
fn cert_cell_presents_the_latest_certificate() {
    let a = pki("spiffe://td/trellis/controlplane/node-1");
    let b = pki("spiffe://td/trellis/controlplane/node-1");
    let cell = CertCell::new(&a.leaf).unwrap();
    assert_eq!(cell.current().cert[0], a.leaf.chain[0]);
    cell.set(&b.leaf).unwrap();
    let client = ResolvesClientCert::resolve(&*cell, &[], &[]).unwrap();
    assert_eq!(client.cert[0], b.leaf.chain[0]);
    // A key that does not match its certificate is refused, and the
    // cell keeps presenting the previous one.
    let mismatched = Identity {
        chain: a.leaf.chain.clone(),
        key: b.leaf.key.clone_key(),
    };
    assert!(cell.set(&mismatched).is_err());
    assert_eq!(cell.current().cert[0], b.leaf.chain[0]);
}
