//! Pooled HTTP/2 connections to other agents: one mTLS connection per
//! (peer address, SNI, expected identity), shared by every request to that
//! peer, reopened when it breaks and, with `maxRequestsPerConnection`,
//! retired after that many requests (streams).
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// One pooled connection: its handle, an id telling it from the one that
/// may replace it, and the streams opened on it so far.
#[derive(Debug)]
struct Pooled<S> {
    conn: S,
    id: u64,
    streams: u32,
}

/// The pooled connections by key, and the bookkeeping of their use; pure,
/// so that retirement is tested without sockets.
#[derive(Debug)]
struct Conns<K, S> {
    by_key: HashMap<K, Pooled<S>>,
}

impl<K: Eq + Hash, S: Clone> Conns<K, S> {
    fn new() -> Self {
        Self {
            by_key: HashMap::new(),
        }
    }

    /// The pooled connection to `key` for one more stream, and its id.
    /// The stream that reaches `max` retires the connection: it leaves the
    /// pool (it still carries the streams opened on it) and the next
    /// stream gets a new one.
    fn checkout(&mut self, key: &K, max: Option<NonZeroU32>) -> Option<(S, u64)> {
        let p = self.by_key.get_mut(key)?;
        p.streams += 1;
        let got = (p.conn.clone(), p.id);
        if max.is_some_and(|m| p.streams >= m.get()) {
            self.by_key.remove(key);
        }
        Some(got)
    }

    /// Pools `conn`, just opened for one stream, unless that one stream is
    /// all it may carry. Replaces whatever another request pooled for `key`
    /// meanwhile (that one is retired as above).
    fn insert(&mut self, key: K, conn: S, id: u64, max: Option<NonZeroU32>) {
        if max.is_some_and(|m| m.get() <= 1) {
            return;
        }
        self.by_key.insert(
            key,
            Pooled {
                conn,
                id,
                streams: 1,
            },
        );
    }

    /// Drops connection `id` for `key` (it broke), not its replacement.
    fn remove(&mut self, key: &K, id: u64) {
        if self.by_key.get(key).is_some_and(|p| p.id == id) {
            self.by_key.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }
}

/// HTTP/2 connections to peers.
pub struct Pool {
    tls: Arc<MeshTls>,
    conns: Mutex<Conns<PeerKey, http2::SendRequest<Body>>>,
    next_id: AtomicU64,
}

impl Pool {
    pub fn new(tls: Arc<MeshTls>) -> Self {
        Self {
            tls,
            conns: Mutex::new(Conns::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Sends `req` to the peer, on a pooled connection or a new one opened
    /// with `opts`; a connection carries at most `max_requests` streams.
    pub async fn send(
        &self,
        key: &PeerKey,
        opts: &ConnectOpts,
        max_requests: Option<NonZeroU32>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, PoolError> {
        let mut sender = self.sender(key, opts, max_requests).await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| PoolError::Request {
                addr: key.addr,
                source,
            })
    }

    /// Number of pooled connections (for `/clusters` and tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is pooled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn sender(
        &self,
        key: &PeerKey,
        opts: &ConnectOpts,
        max_requests: Option<NonZeroU32>,
    ) -> Result<http2::SendRequest<Body>, PoolError> {
        let existing = self.lock().checkout(key, max_requests);
        if let Some((mut s, id)) = existing {
            if s.ready().await.is_ok() {
                return Ok(s);
            }
            self.lock().remove(key, id);
        }
        let tls =
            connect::mtls(&self.tls, key.addr, &key.sni, &key.identity, ALPN_H2, opts).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| PoolError::Handshake {
                addr: key.addr,
                source,
            })?;
        // Once every handle is dropped (the connection left the pool and
        // its last request ended), hyper closes it.
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "connection to peer agent closed");
            }
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(key.clone(), sender.clone(), id, max_requests);
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns<PeerKey, http2::SendRequest<Body>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    /// Which connection each of `requests` sequential requests gets, with
    /// a new connection (numbered in order) whenever the pool has none.
    fn run(requests: usize, limit: Option<NonZeroU32>) -> Vec<u64> {
        let mut pool: Conns<&str, u64> = Conns::new();
        let mut next = 0;
        (0..requests)
            .map(|_| match pool.checkout(&"peer", limit) {
                Some((conn, _)) => conn,
                None => {
                    let conn = next;
                    next += 1;
                    pool.insert("peer", conn, conn, limit);
                    conn
                }
            })
            .collect()
    }

    #[test]
    fn a_connection_carries_at_most_max_requests() {
        assert_eq!(run(7, max(3)), [0, 0, 0, 1, 1, 1, 2]);
        assert_eq!(run(3, max(2)), [0, 0, 1]);
        assert_eq!(run(3, max(1)), [0, 1, 2], "1: a connection per request");
        assert_eq!(run(5, None), [0; 5], "unset or 0: unlimited");
    }

    #[test]
    fn the_stream_that_reaches_the_limit_retires_the_connection() {
        let mut pool: Conns<&str, u64> = Conns::new();
        pool.insert("peer", 7, 7, max(2));
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.checkout(&"peer", max(2)), Some((7, 7)));
        assert_eq!(pool.len(), 0, "retired at once, not at the next request");
        assert_eq!(pool.checkout(&"peer", max(2)), None);
        pool.insert("peer", 8, 8, max(1));
        assert_eq!(pool.len(), 0, "a one-request connection is never pooled");
    }

    #[test]
    fn a_broken_connection_is_removed_but_not_its_replacement() {
        let mut pool: Conns<&str, u64> = Conns::new();
        pool.insert("peer", 1, 1, None);
        pool.insert("other", 2, 2, None);
        pool.insert("peer", 3, 3, None);
        pool.remove(&"peer", 1);
        assert_eq!(pool.checkout(&"peer", None), Some((3, 3)));
        pool.remove(&"peer", 3);
        assert_eq!(pool.checkout(&"peer", None), None);
        assert_eq!(pool.checkout(&"other", None), Some((2, 2)));
    }
}
