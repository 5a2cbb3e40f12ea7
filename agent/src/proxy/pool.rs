//! Pooled HTTP/2 connections: to other agents, by (peer address, SNI,
//! expected identity) ([`Peers`]); to h2c endpoints and the local
//! application, by address and [`ConnSettings`] ([`Plain`]). A key's requests
//! share one connection while it has room for another stream (fewer open
//! than `maxConcurrentStreams` and than the server allows); past that
//! another is opened beside it. Each is reopened when it breaks, retired
//! after `maxRequestsPerConnection` requests (streams), and closed when
//! idle (no stream open) for `idleTimeout`.
use std::future::Future;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use trellis_dataplane::mesh::cluster::{PeerKey, Reuse};
use trellis_dataplane::tls::{MeshTls, ALPN_H2};
use trellis_dataplane::FastMap;
use trellis_transport::connect::{self, ConnectError, ConnectOpts, Keepalive};
use trellis_transport::cork::Corked;

use super::body::Body;
use super::failure::Failure;
use super::h2_stream;

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: h2::Error },
    /// The request's stream failed: not opened, reset, or its response
    /// or its body broken.
    #[error("request to {addr} failed: {source}")]
    Request {
        addr: SocketAddr,
        source: h2_stream::SendError,
    },
    /// The connection this request waited for, being opened for a
    /// concurrent request to the same key, failed to open (why: `0`).
    #[error("{0} (a connection concurrent requests waited for)")]
    Shared(Arc<str>),
}

impl PoolError {
    /// Whether the request failed before it was sent: no connection could
    /// be opened for it (Envoy's `connect-failure`), rather than a reset.
    pub fn before_sent(&self) -> bool {
        match self {
            PoolError::Connect(_) | PoolError::Handshake { .. } | PoolError::Shared(_) => true,
            PoolError::Request { .. } => false,
        }
    }

    /// What the failure means for the request.
    pub fn failure(&self) -> Failure {
        match self {
            PoolError::Connect(_) | PoolError::Handshake { .. } | PoolError::Shared(_) => {
                Failure::Connect
            }
            PoolError::Request { source, .. } => source.failure(),
        }
    }
}

/// One pooled connection: its handle, an id telling it from the one that
/// may replace it, the streams opened on it so far, and those open now.
#[derive(Debug)]
struct Pooled<S> {
    conn: S,
    id: u64,
    started: u32,
    open: Arc<OpenStreams>,
}

/// The streams open on a pooled connection, and when the last one ended
/// (or the connection opened): shared with the [`Stream`] each request on
/// it holds until its response body is dropped (it has ended, or was
/// abandoned), so that a connection is idle only with nothing on it, as
/// in Envoy. A request body still uploading after its response is done
/// does not count.
#[derive(Debug)]
struct OpenStreams(Mutex<(u32, Instant)>);

impl OpenStreams {
    /// One stream, open at `now`.
    fn first(now: Instant) -> Arc<Self> {
        Arc::new(Self(Mutex::new((1, now))))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (u32, Instant)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> u32 {
        self.state().0
    }

    fn start(self: &Arc<Self>) -> Stream {
        self.state().0 += 1;
        Stream(Some(self.clone()))
    }

    fn end(&self, now: Instant) {
        let mut s = self.state();
        s.0 = s.0.saturating_sub(1);
        s.1 = s.1.max(now);
    }

    /// Since when the connection has had no stream open (`None`: it has one).
    fn idle_since(&self) -> Option<Instant> {
        let s = self.state();
        (s.0 == 0).then_some(s.1)
    }
}

/// A request's hold on its pooled connection, let go when it drops (with
/// the response body).
#[derive(Debug)]
pub(super) struct Stream(Option<Arc<OpenStreams>>);

impl Stream {
    /// Ends the stream at `now` (once: the first call counts).
    pub(super) fn end(&mut self, now: Instant) {
        if let Some(open) = self.0.take() {
            open.end(now);
        }
    }

    /// Ends the stream at `now` rather than when dropped.
    #[cfg(test)]
    fn end_at(mut self, now: Instant) {
        self.end(now);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.end(Instant::now());
    }
}

/// How many streams a connection's server lets it have open at once (its
/// `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub(super) trait Capacity {
    fn streams(&self) -> usize;
}

impl Capacity for SendRequest<Bytes> {
    fn streams(&self) -> usize {
        self.current_max_send_streams()
    }
}

/// The pooled connections by key, and the bookkeeping of their use; pure,
/// so that retirement is tested without sockets.
#[derive(Debug)]
pub(super) struct Conns<K, S> {
    by_key: FastMap<K, Vec<Pooled<S>>>,
}

impl<K: Eq + Hash, S: Clone + Capacity> Conns<K, S> {
    pub(super) fn new() -> Self {
        Self {
            by_key: FastMap::default(),
        }
    }

    /// A pooled connection to `key` with room for one more stream at
    /// `now` (the first, in the order they were opened), its id, and the
    /// stream's hold on it; `None`: every one is full, or there is none.
    /// The stream that reaches `max_requests` retires its connection: it
    /// leaves the pool (it still carries the streams opened on it) and
    /// later streams go to the others or a new one. Connections idle past
    /// `idle_timeout` are dropped instead (their watchers may not have run
    /// yet).
    pub(super) fn checkout(
        &mut self,
        key: &K,
        reuse: &Reuse,
        now: Instant,
    ) -> Option<(S, u64, Stream)> {
        let conns = self.by_key.get_mut(key)?;
        if let Some(t) = reuse.idle_timeout {
            conns.retain(|p| {
                p.open
                    .idle_since()
                    .is_none_or(|since| now.saturating_duration_since(since) < t)
            });
        }
        let most = reuse.max_streams.map_or(usize::MAX, |m| m.get() as usize);
        let found = conns
            .iter()
            .position(|p| (p.open.open() as usize) < most.min(p.conn.streams()));
        let got = found.map(|i| {
            let p = &mut conns[i];
            p.started += 1;
            let got = (p.conn.clone(), p.id, p.open.start());
            if reuse.max_requests.is_some_and(|m| p.started >= m.get()) {
                conns.remove(i);
            }
            got
        });
        if conns.is_empty() {
            self.by_key.remove(key);
        }
        got
    }

    /// Pools `conn`, just opened at `now` for one stream, unless that one
    /// stream is all it may carry; the stream's hold on it if pooled. It
    /// goes beside the connections already pooled for `key`.
    fn insert(&mut self, key: K, conn: S, id: u64, reuse: &Reuse, now: Instant) -> Option<Stream> {
        if reuse.max_requests.is_some_and(|m| m.get() <= 1) {
            return None;
        }
        let open = OpenStreams::first(now);
        let stream = Stream(Some(open.clone()));
        self.by_key.entry(key).or_default().push(Pooled {
            conn,
            id,
            started: 1,
            open,
        });
        Some(stream)
    }

    /// Drops connection `id` for `key` (it broke, or is idle), not the
    /// others.
    pub(super) fn remove(&mut self, key: &K, id: u64) {
        if let Some(conns) = self.by_key.get_mut(key) {
            conns.retain(|p| p.id != id);
            if conns.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// Drops connection `id` for `key` if it has had no stream open for
    /// `idle` by `now`. `Some(t)`: look again at `t` (while a stream is
    /// open, `idle` from now: it cannot be idle for `idle` before then);
    /// `None`: it is gone (dropped now, or earlier: retired, broken or
    /// replaced).
    fn expire_idle(&mut self, key: &K, id: u64, idle: Duration, now: Instant) -> Option<Instant> {
        let p = self.by_key.get(key)?.iter().find(|p| p.id == id)?;
        let at = p.open.idle_since().unwrap_or(now) + idle;
        if now < at {
            return Some(at);
        }
        self.remove(key, id);
        None
    }

    pub(super) fn len(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }
}

/// How a [`Pool`] opens its connections, and what it keys them by.
pub trait Dial: Send + Sync {
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Whether its connections are PINGed (every 30 s, see `keep_alive`).
    const PINGS: bool;

    fn addr(key: &Self::Key) -> SocketAddr;

    /// A new connection to `key`, ready for HTTP/2.
    fn dial(
        &self,
        key: &Self::Key,
        opts: &ConnectOpts,
    ) -> impl Future<Output = Result<Self::Io, ConnectError>> + Send;
}

/// mTLS to other agents, ALPN `h2`, the peer's SPIFFE identity verified.
pub struct Peers(pub Arc<MeshTls>);

impl Dial for Peers {
    type Key = PeerKey;
    type Io = TlsStream<TcpStream>;
    const PINGS: bool = true;

    fn addr(key: &PeerKey) -> SocketAddr {
        key.addr
    }

    async fn dial(&self, key: &PeerKey, opts: &ConnectOpts) -> Result<Self::Io, ConnectError> {
        self.0
            .connect(key.addr, &key.sni, &key.identity, ALPN_H2, opts)
            .await
    }
}

/// Plaintext HTTP/2 with prior knowledge (h2c), to an address. Not
/// PINGed: gRPC servers take a client's PINGs while no data flows as
/// abuse (grpc-go allows one per 5 minutes, then closes the connection
/// with `too_many_pings`), and hyper's client, used before, sent none.
pub struct Plain;

/// What a cluster's plaintext connections differ by, beyond their
/// address: connect timeout, keepalive, idle timeout. Each combination in
/// use gets connections of its own, over HTTP/1.1 ([`super::app`]) and h2c.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnSettings {
    timeout: Duration,
    keepalive: Option<Keepalive>,
    idle: Option<Duration>,
}

impl ConnSettings {
    /// Connections opened with `opts` and closed after `idle` idle.
    pub fn new(opts: &ConnectOpts, idle: Option<Duration>) -> Self {
        Self {
            timeout: opts.timeout,
            keepalive: opts.keepalive,
            idle,
        }
    }
}

/// Where an h2c connection goes, and the settings it was opened with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlainKey {
    pub addr: SocketAddr,
    pub settings: ConnSettings,
}

impl Dial for Plain {
    type Key = PlainKey;
    type Io = TcpStream;
    const PINGS: bool = false;

    fn addr(key: &PlainKey) -> SocketAddr {
        key.addr
    }

    async fn dial(&self, key: &PlainKey, opts: &ConnectOpts) -> Result<TcpStream, ConnectError> {
        connect::tcp(key.addr, opts).await
    }
}

/// A pool's connections, shared with the tasks that watch them.
pub(super) type Shared<K, S> = Arc<Mutex<Conns<K, S>>>;

/// How a connection being opened ended, for the requests waiting for it:
/// `None` while it is being opened; `Some(Ok)` opened and pooled;
/// `Some(Err)` failed, and why.
type Opened = Option<Result<(), Arc<str>>>;

/// HTTP/2 connections, opened by `D`.
pub struct Pool<D: Dial> {
    dial: D,
    /// The largest response head taken (HTTP/2's count): past it the
    /// stream is reset and the request fails as an upstream protocol error.
    max_response_headers: u32,
    conns: Shared<D::Key, SendRequest<Bytes>>,
    /// The connections being opened, by key: a request that finds none
    /// pooled waits for the one being opened rather than opening its own,
    /// so a burst of requests to a new endpoint opens one connection.
    opening: Mutex<FastMap<D::Key, watch::Receiver<Opened>>>,
    next_id: AtomicU64,
}

/// What a request that found no pooled connection does.
enum Turn {
    /// Waits for the connection being opened.
    Wait(watch::Receiver<Opened>),
    /// Opens one, and tells those who wait for it how that went.
    Open(watch::Sender<Opened>),
}

/// The request opening a connection for its key: when it is done, or
/// dropped on the way (its request given up), the key is free to open
/// again and the waiting requests are told.
struct Opener<'a, K: Eq + Hash> {
    opening: &'a Mutex<FastMap<K, watch::Receiver<Opened>>>,
    key: &'a K,
    tx: watch::Sender<Opened>,
}

impl<K: Eq + Hash> Opener<'_, K> {
    /// Takes the connection off the list of those being opened (`outcome`
    /// `None`: given up) and tells the requests waiting for it, under one
    /// lock, so that no request finds it listed once it is done.
    fn finish(&self, outcome: Opened) {
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if opening
            .get(self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            opening.remove(self.key);
        }
        if outcome.is_some() {
            self.tx.send_replace(outcome);
        }
    }
}

impl<K: Eq + Hash> Drop for Opener<'_, K> {
    fn drop(&mut self) {
        // Given up: the waiters see the channel close and try again. (Or
        // done: the entry is gone, or another opener's, which stays.)
        self.finish(None);
    }
}

impl<D: Dial> Pool<D> {
    /// Connections opened by `dial`, taking response heads of up to
    /// `max_response_headers` bytes.
    pub fn new(dial: D, max_response_headers: u32) -> Self {
        Self {
            dial,
            max_response_headers,
            conns: Arc::new(Mutex::new(Conns::new())),
            opening: Mutex::new(FastMap::default()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Sends `req` to `key`, on a pooled connection or a new one opened
    /// with `opts`, reused as `reuse` allows.
    pub async fn send(
        &self,
        key: &D::Key,
        opts: &ConnectOpts,
        reuse: &Reuse,
        req: Request<Body>,
    ) -> Result<Response<Body>, PoolError> {
        let (mut sender, stream) = self.sender(key, opts, reuse).await?;
        // The connection counts the stream open until the response ends.
        h2_stream::send(&mut sender, req, stream)
            .await
            .map_err(|source| PoolError::Request {
                addr: D::addr(key),
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
        key: &D::Key,
        opts: &ConnectOpts,
        reuse: &Reuse,
    ) -> Result<(SendRequest<Bytes>, Option<Stream>), PoolError> {
        if let Some(got) = self.pooled(key, reuse).await {
            return Ok(got);
        }
        // Boxed: the TLS and HTTP/2 handshakes are the rare path, and left
        // inline their state would make every request's future larger.
        Box::pin(self.opened(key, opts, reuse)).await
    }

    /// The pooled connection to `key`, ready for one more stream, if there
    /// is one that works.
    async fn pooled(
        &self,
        key: &D::Key,
        reuse: &Reuse,
    ) -> Option<(SendRequest<Bytes>, Option<Stream>)> {
        let (s, id, stream) = self.lock().checkout(key, reuse, Instant::now())?;
        match s.ready().await {
            Ok(s) => Some((s, Some(stream))),
            Err(_) => {
                self.lock().remove(key, id);
                None
            }
        }
    }

    /// A connection to `key` for a request that found none pooled: the one
    /// another request is opening, once it is open, or else a new one.
    async fn opened(
        &self,
        key: &D::Key,
        opts: &ConnectOpts,
        reuse: &Reuse,
    ) -> Result<(SendRequest<Bytes>, Option<Stream>), PoolError> {
        // With a limit on the requests a connection carries, the requests
        // that wait could outnumber what the one being opened may carry:
        // each opens its own, side by side.
        if reuse.max_requests.is_some() {
            return self.open(key, opts, reuse).await;
        }
        loop {
            let mut rx = match self.turn(key) {
                Turn::Wait(rx) => rx,
                Turn::Open(tx) => {
                    let opener = Opener {
                        opening: &self.opening,
                        key,
                        tx,
                    };
                    let opened = self.open(key, opts, reuse).await;
                    let outcome = opened.as_ref().map(drop).map_err(|e| e.to_string().into());
                    opener.finish(Some(outcome));
                    return opened;
                }
            };
            match rx.wait_for(Option::is_some).await.map(|o| o.clone()) {
                Ok(Some(Err(why))) => return Err(PoolError::Shared(why)),
                // Opened: take it from the pool (unless it broke at once:
                // then open or wait again).
                Ok(_) => {
                    if let Some(got) = self.pooled(key, reuse).await {
                        return Ok(got);
                    }
                }
                // The request opening it was given up: try again.
                Err(_) => {}
            }
        }
    }

    /// What a request to `key` that found no pooled connection does: waits
    /// for the one being opened, or opens one for others to wait for.
    fn turn(&self, key: &D::Key) -> Turn {
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = opening.get(key) {
            return Turn::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        opening.insert(key.clone(), rx);
        Turn::Open(tx)
    }

    /// A new connection to `key`, pooled (with the first stream's hold on
    /// it) when `reuse` allows.
    async fn open(
        &self,
        key: &D::Key,
        opts: &ConnectOpts,
        reuse: &Reuse,
    ) -> Result<(SendRequest<Bytes>, Option<Stream>), PoolError> {
        let io = self.dial.dial(key, opts).await?;
        let addr = D::addr(key);
        let handshake = h2_builder(self.max_response_headers)
            .handshake(Corked::client(io))
            .await;
        let (sender, conn) = handshake.map_err(|source| PoolError::Handshake { addr, source })?;
        // Once every handle is dropped (the connection left the pool and
        // its last request ended), h2 closes it.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let run = drive(conn, addr, D::PINGS);
        let stream = pool_and_watch(&self.conns, key, sender.clone(), id, reuse, addr, run);
        Ok((sender, stream))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns<D::Key, SendRequest<Bytes>>> {
        lock(&self.conns)
    }
}

pub(super) fn lock<K, S>(conns: &Shared<K, S>) -> std::sync::MutexGuard<'_, Conns<K, S>> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pools connection `id` to `key` (`conn`, to `addr`, just opened for one
/// stream) as `reuse` allows, and watches it: `run`, which drives the
/// connection, goes in a task of its own, and when it ends (the connection
/// closed by either side, or broke) the connection leaves the pool; pooled
/// with an idle timeout, another task closes it once idle that long. The
/// first stream's hold on it, if pooled (see [`Conns::insert`]).
pub(super) fn pool_and_watch<K, S>(
    conns: &Shared<K, S>,
    key: &K,
    conn: S,
    id: u64,
    reuse: &Reuse,
    addr: SocketAddr,
    run: impl Future<Output = ()> + Send + 'static,
) -> Option<Stream>
where
    K: Clone + Eq + Hash + Send + 'static,
    S: Clone + Capacity + Send + 'static,
{
    let stream = lock(conns).insert(key.clone(), conn, id, reuse, Instant::now());
    if let (Some(_), Some(idle)) = (&stream, reuse.idle_timeout) {
        tokio::spawn(close_when_idle(conns.clone(), key.clone(), addr, id, idle));
    }
    let (conns, key) = (conns.clone(), key.clone());
    tokio::spawn(async move {
        run.await;
        lock(&conns).remove(&key, id);
    });
    stream
}

/// A PING this often on each pooled connection tells a peer that vanished
/// (a host gone without a reset) from a quiet one.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING not answered in this long closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The client settings of a peer connection: hyper's defaults, which these
/// connections had while hyper's client drove them (windows larger than
/// the protocol's 64 KB, so one stream can fill a fast link), but the
/// agent's limit on response heads rather than hyper's 16 KiB.
fn h2_builder(max_response_headers: u32) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .initial_max_send_streams(100)
        .max_frame_size(16 * 1024)
        .max_header_list_size(max_response_headers)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false);
    b
}

/// Runs connection `conn` (to `addr`) until it closes: when every handle to
/// it is dropped (h2 then closes it), it breaks, or (if `ping`) a PING goes
/// unanswered.
async fn drive<T>(mut conn: h2::client::Connection<T, Bytes>, addr: SocketAddr, ping: bool)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let pings = if ping { conn.ping_pong() } else { None };
    let closed = tokio::select! {
        r = &mut conn => r.map_err(|e| e.to_string()),
        e = keep_alive(pings) => Err(e),
    };
    if let Err(e) = closed {
        tracing::debug!(%addr, error = %e, "pooled HTTP/2 connection closed");
    }
}

/// Pings the peer every [`KEEP_ALIVE_INTERVAL`]; returns why the
/// connection is dead (a PING unanswered in [`KEEP_ALIVE_TIMEOUT`]), or
/// never if there are no pings to send.
async fn keep_alive(pings: Option<h2::PingPong>) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("no answer to a PING in {KEEP_ALIVE_TIMEOUT:?}"),
        }
    }
}

/// Takes connection `id` out of the pool once it has had no stream open
/// for `idle`; dropping its last handle closes it.
/// Ends early if the connection leaves the pool another way.
async fn close_when_idle<K: Eq + Hash, S: Clone + Capacity>(
    conns: Shared<K, S>,
    key: K,
    addr: SocketAddr,
    id: u64,
    idle: Duration,
) {
    loop {
        let next = lock(&conns).expire_idle(&key, id, idle, Instant::now());
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => break,
        }
    }
    tracing::debug!(%addr, "pooled connection idle, closed");
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    /// The default limit on response heads.
    const LIMIT: u32 = crate::proxy::DEFAULT_MAX_HEADERS_KB * 1024;

    fn max(n: u32) -> Reuse {
        Reuse {
            max_requests: NonZeroU32::new(n),
            idle_timeout: None,
            max_streams: None,
        }
    }

    /// A test connection: its number, and as many streams as it pleases.
    impl Capacity for u64 {
        fn streams(&self) -> usize {
            usize::MAX
        }
    }

    /// A test connection whose server allows `.1` streams.
    #[derive(Clone, Debug, PartialEq)]
    struct Limited(u64, usize);

    impl Capacity for Limited {
        fn streams(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn a_full_connection_gets_another_beside_it_and_is_used_again_when_a_stream_ends() {
        let mut pool: Conns<&str, Limited> = Conns::new();
        let now = Instant::now();
        let two = Reuse {
            max_streams: NonZeroU32::new(2),
            ..max(0)
        };
        let id = |c: Option<(Limited, u64, Stream)>| c.map(|(conn, _, s)| (conn.0, s));
        let _a = pool.insert("peer", Limited(1, 100), 1, &two, now).unwrap();
        let (n, b) = id(pool.checkout(&"peer", &two, now)).unwrap();
        assert_eq!(n, 1);
        assert!(
            pool.checkout(&"peer", &two, now).is_none(),
            "maxConcurrentStreams 2: full"
        );
        let _c = pool.insert("peer", Limited(2, 1), 2, &two, now).unwrap();
        assert_eq!(pool.len(), 2, "side by side");
        assert!(
            pool.checkout(&"peer", &two, now).is_none(),
            "the second's server allows one stream"
        );
        drop(b);
        let (n, _d) = id(pool.checkout(&"peer", &two, now)).unwrap();
        assert_eq!(n, 1, "room again on the first");
        // Without maxConcurrentStreams, the server's limit alone.
        let (n, _e) = id(pool.checkout(&"peer", &max(0), now)).unwrap();
        assert_eq!(n, 1);
        assert_eq!(pool.len(), 2);
    }

    fn unlimited() -> Reuse {
        max(0)
    }

    /// Which connection each of `requests` sequential requests gets, with
    /// a new connection (numbered in order) whenever the pool has none.
    fn run(requests: usize, limit: Reuse) -> Vec<u64> {
        let mut pool: Conns<&str, u64> = Conns::new();
        let mut next = 0;
        let now = Instant::now();
        (0..requests)
            .map(|_| match pool.checkout(&"peer", &limit, now) {
                Some((conn, _, _)) => conn,
                None => {
                    let conn = next;
                    next += 1;
                    pool.insert("peer", conn, conn, &limit, now);
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
        assert_eq!(run(5, unlimited()), [0; 5], "unset or 0: unlimited");
    }

    /// The connection and id a checkout got, its stream ended at once.
    fn got(c: Option<(u64, u64, Stream)>) -> Option<(u64, u64)> {
        c.map(|(conn, id, _)| (conn, id))
    }

    #[test]
    fn the_stream_that_reaches_the_limit_retires_the_connection() {
        let mut pool: Conns<&str, u64> = Conns::new();
        let now = Instant::now();
        assert!(pool.insert("peer", 7, 7, &max(2), now).is_some());
        assert_eq!(pool.len(), 1);
        assert_eq!(got(pool.checkout(&"peer", &max(2), now)), Some((7, 7)));
        assert_eq!(pool.len(), 0, "retired at once, not at the next request");
        assert_eq!(got(pool.checkout(&"peer", &max(2), now)), None);
        assert!(pool.insert("peer", 8, 8, &max(1), now).is_none());
        assert_eq!(pool.len(), 0, "a one-request connection is never pooled");
    }

    #[test]
    fn a_broken_connection_is_removed_but_not_its_replacement() {
        let mut pool: Conns<&str, u64> = Conns::new();
        let (u, now) = (unlimited(), Instant::now());
        pool.insert("peer", 1, 1, &u, now);
        pool.insert("other", 2, 2, &u, now);
        pool.insert("peer", 3, 3, &u, now);
        pool.remove(&"peer", 1);
        assert_eq!(got(pool.checkout(&"peer", &u, now)), Some((3, 3)));
        pool.remove(&"peer", 3);
        assert_eq!(got(pool.checkout(&"peer", &u, now)), None);
        assert_eq!(got(pool.checkout(&"other", &u, now)), Some((2, 2)));
    }

    #[test]
    fn a_connection_with_no_stream_open_for_the_idle_timeout_is_closed() {
        let mut pool: Conns<&str, u64> = Conns::new();
        let idle = Duration::from_secs(60);
        let reuse = Reuse {
            idle_timeout: Some(idle),
            ..max(0)
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let first = pool.insert("peer", 1, 1, &reuse, t0).unwrap();
        // Open: not idle; looked at again a timeout later.
        assert_eq!(pool.expire_idle(&"peer", 1, idle, at(30)), Some(at(90)));
        first.end_at(at(40));
        assert_eq!(pool.expire_idle(&"peer", 1, idle, at(50)), Some(at(100)));
        // A stream from 60s to 150s: idle again from its end.
        let (_, _, s) = pool.checkout(&"peer", &reuse, at(60)).unwrap();
        assert_eq!(pool.expire_idle(&"peer", 1, idle, at(100)), Some(at(160)));
        s.end_at(at(150));
        assert_eq!(pool.expire_idle(&"peer", 1, idle, at(160)), Some(at(210)));
        assert_eq!(pool.expire_idle(&"peer", 1, idle, at(210)), None);
        assert_eq!(pool.len(), 0, "closed when idle");
        assert_eq!(got(pool.checkout(&"peer", &reuse, at(211))), None);

        // A stream longer than the timeout keeps its connection in the
        // pool, and shared: new requests take it.
        let long = pool.insert("peer", 2, 2, &reuse, at(300)).unwrap();
        assert_eq!(got(pool.checkout(&"peer", &reuse, at(500))), Some((2, 2)));
        assert_eq!(pool.expire_idle(&"peer", 2, idle, at(500)), Some(at(560)));
        long.end_at(at(600));

        // Looked up after the timeout, before the watcher ran: not reused.
        assert_eq!(got(pool.checkout(&"peer", &reuse, at(660))), None);
        assert_eq!(pool.len(), 0);

        // The watcher of a connection that left the pool another way
        // ends, and leaves its replacement alone.
        pool.insert("peer", 3, 3, &reuse, at(700));
        assert_eq!(pool.expire_idle(&"peer", 2, idle, at(800)), None);
        assert_eq!(pool.len(), 1);
        let never = unlimited();
        assert_eq!(got(pool.checkout(&"peer", &never, at(9000))), Some((3, 3)));
    }

    use http_body_util::BodyExt;

    use crate::proxy::body;
    use trellis_testing::eventually;
    use trellis_transport::testing::{counting_server, Counting};

    fn plain(addr: SocketAddr) -> PlainKey {
        PlainKey {
            addr,
            settings: ConnSettings::new(&opts(), None),
        }
    }

    /// An h2c server on loopback with the protocol's default 64 KB windows,
    /// answering each request with its body.
    async fn echo_server() -> Counting {
        counting_server(|s| async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut recv = req.into_body();
                    let mut got = Vec::new();
                    while let Some(Ok(d)) = recv.data().await {
                        let _ = recv.flow_control().release_capacity(d.len());
                        got.extend_from_slice(&d);
                    }
                    let mut tx = respond.send_response(Response::new(()), false).unwrap();
                    tx.send_data(Bytes::from(got), true).unwrap();
                });
            }
        })
        .await
    }

    fn opts() -> ConnectOpts {
        ConnectOpts {
            timeout: Duration::from_secs(5),
            mark: None,
            keepalive: None,
        }
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_leaves_the_pool() {
        // Answers one request, then closes the connection.
        let server = counting_server(|s| async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            if let Some(Ok((_, mut respond))) = conn.accept().await {
                respond.send_response(Response::new(()), true).unwrap();
                conn.graceful_shutdown();
                let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
            }
        })
        .await;
        let pool = Pool::new(Plain, LIMIT);
        let req = Request::get("http://echo/").body(body::empty()).unwrap();
        let (key, reuse) = (plain(server.addr), unlimited());
        let resp = pool.send(&key, &opts(), &reuse, req).await;
        assert_eq!(resp.unwrap().status(), 200);
        eventually("the server closed it", || {
            server.open.load(std::sync::atomic::Ordering::SeqCst) == 0
        })
        .await;
        eventually("out of the pool", || pool.is_empty()).await;
    }

    #[tokio::test]
    async fn bodies_larger_than_the_windows_go_both_ways_and_a_spent_connection_closes() {
        let server = echo_server().await;
        let pool = Pool::new(Plain, LIMIT);
        let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let req = Request::post("http://echo/e")
            .body(body::full(big.clone()))
            .unwrap();
        let exchange = async {
            let resp = pool
                .send(&plain(server.addr), &opts(), &max(1), req)
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap().to_bytes()
        };
        let echoed = tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("stalled: a window not given back");
        assert!(
            echoed == big,
            "{} bytes back of {}",
            echoed.len(),
            big.len()
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        // Its one request done and not pooled, the connection is closed.
        assert!(pool.is_empty());
        eventually("the connection closed", || {
            server.open.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    /// A client connection over an in-memory pipe to a server that answers
    /// PINGs (`answers`) or stops reading after the handshake; the task
    /// driving it, PINGing if `ping`.
    async fn driven(
        answers: bool,
        ping: bool,
    ) -> (SendRequest<Bytes>, tokio::task::JoinHandle<()>) {
        let (c, s) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(s).await.unwrap();
            if answers {
                while conn.accept().await.is_some() {}
            } else {
                std::future::pending::<()>().await;
            }
            drop(conn);
        });
        let (sender, conn) = h2_builder(LIMIT).handshake(c).await.unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        (sender, tokio::spawn(drive(conn, addr, ping)))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_ping_closes_the_connection_and_an_answered_one_does_not() {
        let (healthy, healthy_conn) = driven(true, Peers::PINGS).await;
        let (silent, silent_conn) = driven(false, Peers::PINGS).await;
        // An h2c application is not PINGed: gRPC servers punish that.
        let (app, app_conn) = driven(false, Plain::PINGS).await;
        tokio::time::sleep(KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(!silent_conn.is_finished(), "not before the PING's timeout");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(silent_conn.is_finished(), "closed after the PING's timeout");
        assert!(silent.ready().await.is_err(), "and unusable");
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!healthy_conn.is_finished(), "pings answered: kept");
        assert!(healthy.ready().await.is_ok());
        assert!(!app_conn.is_finished(), "no PING, so no timeout");
        assert!(app.ready().await.is_ok());
    }

    /// Dials in-memory pipes to an h2 server answering 200, after `delay`
    /// (or fails after it, if `fails`), counting its dials: a stand-in for
    /// the network, so that requests are sure to overlap a dial in flight.
    struct SlowDial {
        delay: Duration,
        fails: bool,
        dials: AtomicU64,
        /// Dials in flight now, and at most.
        in_flight: AtomicU64,
        peak: AtomicU64,
    }

    impl SlowDial {
        fn new(delay: Duration, fails: bool) -> Arc<Pool<SlowDial>> {
            Arc::new(Pool::new(
                SlowDial {
                    delay,
                    fails,
                    dials: AtomicU64::new(0),
                    in_flight: AtomicU64::new(0),
                    peak: AtomicU64::new(0),
                },
                LIMIT,
            ))
        }
    }

    impl Dial for SlowDial {
        type Key = SocketAddr;
        type Io = tokio::io::DuplexStream;
        const PINGS: bool = false;

        fn addr(key: &SocketAddr) -> SocketAddr {
            *key
        }

        async fn dial(&self, key: &SocketAddr, _: &ConnectOpts) -> Result<Self::Io, ConnectError> {
            self.dials.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if self.fails {
                return Err(ConnectError::Timeout {
                    addr: *key,
                    after: self.delay,
                });
            }
            let (c, s) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(s).await.unwrap();
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    let _ = respond.send_response(Response::new(()), true);
                }
            });
            Ok(c)
        }
    }

    /// `n` requests at once through `pool` to one key, each given up after
    /// `within`.
    async fn burst(
        pool: &Arc<Pool<SlowDial>>,
        n: usize,
        reuse: Reuse,
        within: Duration,
    ) -> Vec<Option<Result<http::StatusCode, PoolError>>> {
        let key = SocketAddr::from(([127, 0, 0, 1], 9));
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (pool, reuse) = (pool.clone(), reuse.clone());
                tokio::spawn(async move {
                    let req = Request::get("http://echo/").body(body::empty()).unwrap();
                    let opts = opts();
                    let sent = pool.send(&key, &opts, &reuse, req);
                    let r = tokio::time::timeout(within, sent).await.ok()?;
                    Some(r.map(|resp| resp.status()))
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_find_no_connection_share_the_one_being_opened() {
        let long = Duration::from_secs(10);
        let pool = SlowDial::new(Duration::from_millis(50), false);
        let got = burst(&pool, 20, unlimited(), long).await;
        assert!(
            got.iter()
                .all(|r| matches!(r, Some(Ok(s)) if s.is_success())),
            "{got:?}"
        );
        assert_eq!(pool.dial.dials.load(Ordering::SeqCst), 1, "one connection");
        assert_eq!(pool.len(), 1);

        // With a limit on requests per connection, each request opens its
        // own, side by side (not one after another, waiting in turn).
        for limit in [1, 3] {
            let limited = SlowDial::new(Duration::from_millis(50), false);
            let got = burst(&limited, 7, max(limit), long).await;
            assert!(got.iter().all(|r| matches!(r, Some(Ok(_)))), "{got:?}");
            assert_eq!(limited.dial.peak.load(Ordering::SeqCst), 7, "{limit}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_for_a_connection_that_fails_fail_as_connect_failures() {
        let pool = SlowDial::new(Duration::from_millis(50), true);
        let got = burst(&pool, 10, unlimited(), Duration::from_secs(10)).await;
        assert_eq!(pool.dial.dials.load(Ordering::SeqCst), 1, "one attempt");
        let errors: Vec<_> = got
            .into_iter()
            .map(|r| r.expect("answered").expect_err("failed"))
            .collect();
        assert!(errors.iter().all(PoolError::before_sent), "{errors:?}");
        let shared = errors
            .iter()
            .filter(|e| matches!(e, PoolError::Shared(why) if why.contains("timed out")))
            .count();
        assert_eq!(shared, 9, "{errors:?}");
        // The failure is not remembered: the next request tries again.
        burst(&pool, 1, unlimited(), Duration::from_secs(10)).await;
        assert_eq!(pool.dial.dials.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_on_one_given_up_while_opening_opens_its_own() {
        let pool = SlowDial::new(Duration::from_millis(200), false);
        let key = SocketAddr::from(([127, 0, 0, 1], 9));
        // The first request opens the connection and is given up at 50 ms,
        // before the dial ends; the second, waiting for it, opens another.
        let first = burst(&pool, 1, unlimited(), Duration::from_millis(50));
        let second = async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let req = Request::get("http://echo/").body(body::empty()).unwrap();
            let (opts, reuse) = (opts(), unlimited());
            let sent = pool.send(&key, &opts, &reuse, req);
            let r = tokio::time::timeout(Duration::from_secs(10), sent).await;
            r.expect("still waiting").map(|r| r.status())
        };
        let (first, second) = tokio::join!(first, second);
        assert!(matches!(first[..], [None]), "given up: {first:?}");
        assert!(matches!(second, Ok(s) if s.is_success()), "{second:?}");
        assert_eq!(pool.dial.dials.load(Ordering::SeqCst), 2);
        assert_eq!(pool.len(), 1);
    }
}
