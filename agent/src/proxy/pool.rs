//! Pooled HTTP/2 connections to other agents: one mTLS connection per
//! (peer address, SNI, expected identity), shared by every request to that
//! peer and reopened when it breaks.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use trellis_identity::SpiffeId;

use super::body::Body;
use super::connect::{self, ConnectError, ConnectOpts};
use crate::tls::{MeshTls, ALPN_H2};

/// Where a pooled connection goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub addr: SocketAddr,
    pub sni: String,
    pub identity: SpiffeId,
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
    /// The request was sent (or may have been) and the peer reset it or the
    /// connection broke: Envoy's `reset`.
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// HTTP/2 connections to peers.
pub struct Pool {
    tls: Arc<MeshTls>,
    opts: ConnectOpts,
    conns: Mutex<HashMap<PeerKey, http2::SendRequest<Body>>>,
}

impl Pool {
    pub fn new(tls: Arc<MeshTls>, opts: ConnectOpts) -> Self {
        Self {
            tls,
            opts,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Sends `req` to the peer, on a pooled connection or a new one.
    pub async fn send(
        &self,
        key: &PeerKey,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PoolError> {
        let mut sender = self.sender(key).await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| PoolError::Request {
                addr: key.addr,
                source,
            })
    }

    /// Number of open connections (for `/clusters` and tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn sender(&self, key: &PeerKey) -> Result<http2::SendRequest<Body>, PoolError> {
        let existing = self.lock().get(key).cloned();
        if let Some(mut s) = existing {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
            self.lock().remove(key);
        }
        let tls = connect::mtls(
            &self.tls,
            key.addr,
            &key.sni,
            &key.identity,
            ALPN_H2,
            &self.opts,
        )
        .await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| PoolError::Handshake {
                addr: key.addr,
                source,
            })?;
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection to peer agent closed");
            }
        });
        self.lock().insert(key.clone(), sender.clone());
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerKey, http2::SendRequest<Body>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}
