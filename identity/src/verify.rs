//! rustls verifiers that check SPIFFE identities instead of DNS names, and
//! the builders of client and server configurations that use them.
//!
//! Peers are verified against the mesh's roots with webpki, then the URI SAN
//! of the leaf is compared with what the caller expects. On first contact a
//! joining node has no roots yet; [`PinnedRootVerifier`] accepts the server's
//! chain only if it contains a certificate whose SHA-256 equals the pin from
//! the join token, and verifies the chain against that certificate.
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::{pem, IdentityError, SpiffeId};

/// What a client expects of the server's identity.
#[derive(Clone, Debug)]
pub enum Expect {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any control-plane node of this trust domain.
    AnyControlPlane { trust_domain: String },
    /// Any control-plane node in any trust domain (first contact, where the
    /// pin is what establishes trust).
    AnyControlPlaneAnyDomain,
}

impl Expect {
    fn check(&self, id: &SpiffeId) -> bool {
        match self {
            Expect::Exact(want) => want == id,
            Expect::AnyControlPlane { trust_domain } => {
                id.trust_domain() == trust_domain && id.controlplane_node().is_some()
            }
            Expect::AnyControlPlaneAnyDomain => id.controlplane_node().is_some(),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Exact(id) => write!(f, "{id}"),
            Expect::AnyControlPlane { trust_domain } => {
                write!(f, "spiffe://{trust_domain}/trellis/controlplane/*")
            }
            Expect::AnyControlPlaneAnyDomain => write!(f, "spiffe://*/trellis/controlplane/*"),
        }
    }
}

/// A certificate chain and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM: the chain (leaf first) and the key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        Ok(Self {
            chain: pem::certs(chain_pem, "certificate chain")?,
            key: pem::private_key(key_pem, "private key")?,
        })
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    crate::provider().signature_verification_algorithms
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    let ce = match e {
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidYet { .. } => CertificateError::NotValidYet,
        webpki::Error::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

fn identity_error(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        IdentityError::BadCertificate(msg),
    ))))
}

/// Verifies a chain to `anchors` for `usage` and checks the leaf's SPIFFE ID.
fn verify_chain(
    anchors: &[rustls::pki_types::TrustAnchor<'_>],
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
    expect: &Expect,
) -> Result<(), rustls::Error> {
    let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
    cert.verify_for_usage(
        algorithms().all,
        anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(webpki_error)?;
    let id = pem::spiffe_id(end_entity).map_err(|e| identity_error(e.to_string()))?;
    if !expect.check(&id) {
        return Err(identity_error(format!(
            "peer identity {id} is not the expected {expect}"
        )));
    }
    Ok(())
}

fn anchors_of(
    roots: &[CertificateDer<'static>],
) -> Result<Vec<rustls::pki_types::TrustAnchor<'static>>, IdentityError> {
    roots
        .iter()
        .map(|r| {
            webpki::anchor_from_trusted_cert(r)
                .map(|a| a.to_owned())
                .map_err(|e| IdentityError::BadCertificate(format!("trust bundle: {e}")))
        })
        .collect()
}

/// Verifies a server's chain to the mesh roots and its SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    expect: Expect,
}

impl SpiffeServerVerifier {
    pub fn new(roots: &[CertificateDer<'static>], expect: Expect) -> Result<Self, IdentityError> {
        Ok(Self {
            anchors: anchors_of(roots)?,
            expect,
        })
    }
}

macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            algorithms().supported_schemes()
        }
    };
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_chain(
            &self.anchors,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &self.expect,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// First contact: trusts the server only if its chain holds the root whose
/// SHA-256 is `pin`, and verifies the chain to that root.
#[derive(Debug)]
pub struct PinnedRootVerifier {
    pin: [u8; 32],
}

impl PinnedRootVerifier {
    pub fn new(pin: [u8; 32]) -> Self {
        Self { pin }
    }
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(root) = intermediates.iter().find(|c| crate::sha256(c) == self.pin) else {
            let sent = intermediates
                .last()
                .map(|c| pem::fingerprint_hex(c))
                .unwrap_or_else(|| "no root".into());
            return Err(identity_error(format!(
                "the control plane's root certificate does not match the join token's pin \
                 (token pins sha256:{}, server sent sha256:{sent}); the token is for another mesh \
                 or the server is not who it claims",
                hex::encode(self.pin)
            )));
        };
        let anchor = webpki::anchor_from_trusted_cert(root).map_err(webpki_error)?;
        verify_chain(
            &[anchor],
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            &Expect::AnyControlPlaneAnyDomain,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!();
}

/// The certificate a node presents, replaceable while it runs: both its
/// server and its client configurations resolve their certificate here, so
/// renewing it is one [`CertCell::set`] and no connection is disturbed.
#[derive(Debug)]
pub struct CertCell(RwLock<Arc<CertifiedKey>>);

impl CertCell {
    pub fn new(identity: &Identity) -> Result<Arc<Self>, IdentityError> {
        Ok(Arc::new(Self(RwLock::new(Arc::new(certified(identity)?)))))
    }

    /// Presents `identity` from the next handshake on.
    pub fn set(&self, identity: &Identity) -> Result<(), IdentityError> {
        let ck = Arc::new(certified(identity)?);
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = ck;
        Ok(())
    }

    /// The certificate presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn certified(identity: &Identity) -> Result<CertifiedKey, IdentityError> {
    Ok(CertifiedKey::from_der(
        identity.chain.clone(),
        identity.key.clone_key(),
        &crate::provider(),
    )?)
}

impl ResolvesServerCert for CertCell {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertCell {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

const ALPN_H2: &[u8] = b"h2";

/// A client configuration: our certificate (if any) and a server verifier.
pub fn client_config(
    cert: Option<Arc<CertCell>>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, IdentityError> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(cell) => builder.with_client_cert_resolver(cell),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Whether a server asks for client certificates or insists on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients without a certificate are let through the handshake; each
    /// request then decides, from the verified identity or its absence,
    /// what the caller may do (the control plane: tokens come without one).
    Optional,
    /// Only clients with a certificate from the mesh get through (agents).
    Required,
}

/// A server configuration that presents the certificate in `cert` and
/// verifies client certificates against `roots` when a client offers one.
/// Clients without a certificate are let through the handshake; each RPC
/// then decides, from the verified identity or its absence, what the
/// caller may do.
pub fn server_config(
    cert: Arc<CertCell>,
    roots: &[CertificateDer<'static>],
) -> Result<rustls::ServerConfig, IdentityError> {
    server_config_with(cert, roots, ClientAuth::Optional, &[ALPN_H2])
}

/// A TLS 1.3 server configuration presenting `cert`, verifying clients
/// against `roots` as `auth` says, offering `alpn`.
pub fn server_config_with(
    cert: Arc<CertCell>,
    roots: &[CertificateDer<'static>],
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, IdentityError> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone())?;
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        crate::provider(),
    );
    let verifier = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated().build()?,
        ClientAuth::Required => builder.build()?,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Ok(config)
}
