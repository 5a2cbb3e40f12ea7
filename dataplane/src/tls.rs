//! A workload's mTLS configurations: one server configuration for inbound
//! connections from other agents, and client configurations that expect one
//! exact SPIFFE identity of the server (the destination's service account).
//!
//! Both resolve the agent's certificate through a [`CertCell`], so a renewed
//! certificate is presented from the next handshake on without a restart.
//! Trust bundles can change too ([`MeshTls::set_roots`]); configurations are
//! cached and rebuilt when they do.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use trellis_identity::verify::{
    client_config, server_config_with, CertCell, ClientAuth, Expect, SpiffeServerVerifier,
};
use trellis_identity::{IdentityError, SpiffeId};
use trellis_transport::connect::{self, ConnectError, ConnectOpts};

/// ALPN of an HTTP connection between agents: HTTP/2, many requests.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of an HTTP/1.1 connection between agents, used for requests that
/// upgrade the connection (WebSocket and others): they need the connection
/// to themselves.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of an opaque TCP connection between agents: bytes both ways.
pub const ALPN_TCP: &[u8] = b"trellis-tcp";

/// Client configurations by expected server identity and ALPN.
type ClientCache = HashMap<(SpiffeId, &'static [u8]), Arc<rustls::ClientConfig>>;

/// The agent's certificate, the roots it trusts, and the TLS configurations
/// built from them.
pub struct MeshTls {
    cert: Arc<CertCell>,
    me: SpiffeId,
    state: RwLock<Roots>,
    clients: Mutex<ClientCache>,
}

struct Roots {
    roots: Vec<CertificateDer<'static>>,
    server: Arc<rustls::ServerConfig>,
}

impl MeshTls {
    /// `me` is the identity in `cert`; `roots` the mesh trust bundle.
    pub fn new(
        cert: Arc<CertCell>,
        me: SpiffeId,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let server = Arc::new(server_config(cert.clone(), &roots)?);
        Ok(Self {
            cert,
            me,
            state: RwLock::new(Roots { roots, server }),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// This agent's identity.
    pub fn identity(&self) -> &SpiffeId {
        &self.me
    }

    /// The certificate cell (for renewal and `/certs`).
    pub fn cert(&self) -> &Arc<CertCell> {
        &self.cert
    }

    /// The roots trusted now.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        self.read().roots.clone()
    }

    /// Trusts `roots` from the next handshake on.
    pub fn set_roots(&self, roots: Vec<CertificateDer<'static>>) -> Result<(), IdentityError> {
        let server = Arc::new(server_config(self.cert.clone(), &roots)?);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Roots { roots, server };
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// The configuration inbound connections are accepted with: TLS 1.3,
    /// a client certificate from the mesh required.
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        self.read().server.clone()
    }

    /// A client configuration that accepts only a server presenting `expect`
    /// and offers `alpn`.
    pub fn client(
        &self,
        expect: &SpiffeId,
        alpn: &'static [u8],
    ) -> Result<Arc<rustls::ClientConfig>, IdentityError> {
        let key = (expect.clone(), alpn);
        if let Some(c) = self.lock_clients().get(&key) {
            return Ok(c.clone());
        }
        let verifier =
            SpiffeServerVerifier::new(&self.read().roots, Expect::Exact(expect.clone()))?;
        let mut config = client_config(Some(self.cert.clone()), Arc::new(verifier))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        let config = Arc::new(config);
        self.lock_clients().insert(key, config.clone());
        Ok(config)
    }

    /// An mTLS connection to the proxy at `addr`, which must present
    /// `expect`, offering `alpn`; `sni` tells the peer which service and
    /// port the connection is for.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        sni: &str,
        expect: &SpiffeId,
        alpn: &'static [u8],
        opts: &ConnectOpts,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let config = self
            .client(expect, alpn)
            .map_err(|e| ConnectError::Config {
                expect: expect.clone(),
                reason: e.to_string(),
            })?;
        connect::mtls(config, addr, sni, expect, opts).await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Roots> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, ClientCache> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn server_config(
    cert: Arc<CertCell>,
    roots: &[CertificateDer<'static>],
) -> Result<rustls::ServerConfig, IdentityError> {
    server_config_with(
        cert,
        roots,
        ClientAuth::Required,
        &[ALPN_H2, ALPN_TCP, ALPN_HTTP1],
    )
}
