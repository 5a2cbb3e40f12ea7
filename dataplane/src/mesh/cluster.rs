//! A cluster: the endpoints of one service port (or of one subset of it),
//! how to choose among them, and what is known of their health.
//!
//! Choosing is pure given its inputs (the endpoints' state, a random
//! number, the hash of the request); the counters it reads are updated by
//! the proxy as requests start and end.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use trellis_api::topology::Locality;
use trellis_identity::SpiffeId;
use trellis_transport::connect::{ConnectOpts, Keepalive};
use trellis_transport::sni::Sni;
use trellis_transport::splice::{self, DEFAULT_IDLE_TIMEOUT};

use super::locality::Plan;
use crate::telemetry::labels::Workload;

/// How a cluster picks an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    /// Consistent hash of what [`HashOn`] names, on a ring of virtual nodes.
    RingHash(HashOn),
}

/// What consistent hashing hashes.
#[derive(Clone, Debug, PartialEq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

/// The HTTP version the agent speaks to a cluster's endpoints that have no
/// agent (plaintext), as Istio picks it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlainHttp {
    /// HTTP/1.1: an `http` port.
    Http1,
    /// HTTP/2 with prior knowledge: an `http2` or `grpc` port, or an
    /// `http` one with `h2UpgradePolicy: UPGRADE`.
    Http2,
    /// The client's: `useClientProtocol`, or a port whose protocol is
    /// sniffed.
    #[default]
    Client,
}

/// Connection-pool settings (DestinationRule `connectionPool`): circuit
/// breaking and how connections to the endpoints are opened and reused.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Most requests in flight to the cluster at once; more get `503 UO`.
    pub max_active: u32,
    /// `http.maxRetries`: most retries outstanding to the cluster at once
    /// (besides the retry budget, which the agent's retry policy keeps).
    pub max_retries: u32,
    /// `tcp.connectTimeout`: how long a TCP connect (and the mTLS handshake
    /// after it) to an endpoint may take; `None`: the agent-wide
    /// `--connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// How long a pooled connection to an endpoint (to its agent, or
    /// plaintext) is reused: `maxRequestsPerConnection`, `idleTimeout`.
    pub reuse: Reuse,
    /// `tcp.tcpKeepalive` on connections to the cluster's endpoints.
    pub keepalive: Option<Keepalive>,
    /// `tcp.idleTimeout` and `tcp.maxConnectionDuration` of opaque TCP
    /// connections to the cluster.
    pub tcp: splice::Timeouts,
    /// HTTP to endpoints without an agent: from the port's protocol,
    /// `http.h2UpgradePolicy` and `http.useClientProtocol`.
    pub plain_http: PlainHttp,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_active: u32::MAX,
            max_retries: u32::MAX,
            connect_timeout: None,
            reuse: Reuse::default(),
            keepalive: None,
            tcp: Default::default(),
            plain_http: PlainHttp::default(),
        }
    }
}

impl Limits {
    /// How to open connections to the cluster's endpoints: `base` (the
    /// proxy's own settings) with the cluster's `connectTimeout`, if it
    /// has one, and its `tcpKeepalive`.
    pub fn connect_opts(&self, base: &ConnectOpts) -> ConnectOpts {
        ConnectOpts {
            timeout: self.connect_timeout.unwrap_or(base.timeout),
            mark: base.mark,
            keepalive: self.keepalive,
        }
    }
}

/// The agent in front of an endpoint: where to connect, the SNI that names
/// the service port, and the identity the agent must present. It keys the
/// pooled connections to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub addr: SocketAddr,
    pub sni: String,
    pub identity: SpiffeId,
}

/// How long a pooled connection may be reused (DestinationRule
/// `connectionPool`), to an endpoint's agent or to a plaintext endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reuse {
    /// `http.maxRequestsPerConnection`: requests a connection carries
    /// before it is retired; `None` (unset or 0): unlimited.
    pub max_requests: Option<NonZeroU32>,
    /// `http.idleTimeout`: a pooled connection with no request on it for
    /// this long is closed; `None` (0): never.
    pub idle_timeout: Option<Duration>,
    /// `http.maxConcurrentStreams`: streams open at once on one HTTP/2
    /// connection, past which another is opened; `None` (unset or 0): as
    /// many as the server allows. (HTTP/1.1 carries one at a time anyway.)
    pub max_streams: Option<NonZeroU32>,
}

impl Default for Reuse {
    fn default() -> Self {
        Self {
            max_requests: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_streams: None,
        }
    }
}

/// Outlier detection settings (DestinationRule `outlierDetection`).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive 5xx responses (including connect failures) that eject an
    /// endpoint; `None` disables this check.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 responses and connect failures that eject.
    pub consecutive_gateway: Option<u32>,
    /// An endpoint is out for this long times its ejection multiplier, at
    /// most [`MAX_EJECTION_TIME`] (or this long, if longer).
    pub base_ejection: Duration,
    /// Time between Envoy's sweeps (`interval`): an endpoint is ejected as
    /// soon as it trips a check, but returns only at the first sweep after
    /// its ejection time is up, and each sweep that finds it in service
    /// takes one off its multiplier.
    pub interval: Duration,
    pub max_ejection_percent: u32,
    /// `minHealthPercent`, Envoy's panic threshold: while fewer than this
    /// percent of the endpoints are in service, ejections are ignored and
    /// every endpoint takes requests. 0 (Istio's default): never.
    pub min_health_percent: u32,
}

/// Envoy's default `max_ejection_time`, which Istio leaves as it is: an
/// ejection lasts at most this long, or `baseEjectionTime` if that is
/// longer, however often the endpoint was ejected.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// Health bookkeeping of one endpoint.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Envoy's ejection-time multiplier: one more at each ejection, one
    /// less at each sweep that finds the endpoint in service.
    ejections: u32,
    /// Set while ejected: when the ejection time is up (the endpoint
    /// returns at the first sweep from then on).
    ejected_until: Option<Instant>,
    /// How many of the cluster's sweeps have been applied to this state.
    swept: u64,
}

impl OutlierState {
    /// Applies the sweeps up to the `n`th, those at `epoch + k × interval`
    /// for `k` in `swept + 1..=n`. Sweeps are applied lazily, when the
    /// state is next looked at: between two looks nothing else changes it,
    /// so the outcome is the same as a timer's.
    fn sweep(&mut self, epoch: Instant, interval: Duration, n: u64) {
        if n <= self.swept {
            return;
        }
        let mut first = self.swept + 1;
        if let Some(until) = self.ejected_until {
            // The first sweep at or after `until`.
            let due = until
                .saturating_duration_since(epoch)
                .as_nanos()
                .div_ceil(interval_nanos(interval));
            let back = u64::try_from(due).unwrap_or(u64::MAX).max(first);
            if back > n {
                self.swept = n;
                return;
            }
            self.ejected_until = None;
            // As Envoy does, so that a few new errors do not eject it
            // again at once.
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
            first = back + 1;
        }
        let in_service = (n + 1).saturating_sub(first);
        self.ejections = self
            .ejections
            .saturating_sub(u32::try_from(in_service).unwrap_or(u32::MAX));
        self.swept = n;
    }
}

fn interval_nanos(interval: Duration) -> u128 {
    interval.as_nanos().max(1)
}

/// How many sweeps of `interval` from `epoch` have happened by `now`.
fn sweeps_by(epoch: Instant, interval: Duration, now: Instant) -> u64 {
    let n = now.saturating_duration_since(epoch).as_nanos() / interval_nanos(interval);
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// One endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// Where to connect: the peer agent's inbound port (mTLS), or the
    /// workload itself when it has no agent.
    pub addr: SocketAddr,
    /// The service's port on the workload (told to the peer in the SNI).
    pub target_port: u16,
    /// The identity the peer must present; `None`: plaintext, no agent.
    pub identity: Option<SpiffeId>,
    /// Where the pooled mTLS connection to the peer goes (address, SNI,
    /// identity), made once with the cluster rather than per request;
    /// `None` with `identity`.
    pub peer: Option<PeerKey>,
    pub labels: BTreeMap<String, String>,
    pub workload: Arc<Workload>,
    pub weight: u32,
    /// The network the endpoint is on; empty: not said, which Istio takes
    /// as every caller's own network.
    pub network: Arc<str>,
    /// Its failure domain; empty parts are unknown.
    pub locality: Locality,
    /// Runtime state that outlives config updates (see [`Cluster::adopt`]).
    pub state: Arc<EndpointState>,
}

/// Counters of one endpoint, kept across config updates.
#[derive(Debug, Default)]
pub struct EndpointState {
    pub active: AtomicU32,
    pub outlier: Mutex<OutlierState>,
}

/// Endpoints of a service port or subset, and how to use them.
#[derive(Debug)]
pub struct Cluster {
    /// Envoy-style name: `outbound|PORT|SUBSET|HOST` (shared with the
    /// access log of each request, as is the host with its metric labels).
    pub name: Arc<str>,
    pub host: Arc<str>,
    pub port: u16,
    pub subset: String,
    pub endpoints: Vec<Endpoint>,
    pub lb: LbPolicy,
    pub limits: Limits,
    pub outlier: Option<OutlierConfig>,
    /// Locality-aware balancing: the endpoints by priority and locality
    /// weight for this workload; `None`: all alike.
    pub locality: Option<Plan>,
    pub state: Arc<ClusterState>,
    ring: Vec<(u64, usize)>,
    /// `0..endpoints.len()`: the candidates of a pick when none can be
    /// ejected or excluded, without building the list per request.
    every: Vec<usize>,
}

/// Counters of one cluster, kept across config updates.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub active: AtomicU32,
    pub active_retries: AtomicU32,
    rr: AtomicUsize,
    /// When outlier detection's sweeps start: the first outcome recorded
    /// (before it no endpoint has anything for a sweep to undo).
    sweep_epoch: OnceLock<Instant>,
}

/// Virtual nodes per endpoint on the hash ring (Envoy's minimum ring size is
/// 1024 for the whole ring; this keeps the spread even for small clusters).
const VNODES: usize = 128;

impl Cluster {
    pub fn new(
        host: &str,
        port: u16,
        subset: &str,
        endpoints: Vec<Endpoint>,
        lb: LbPolicy,
        limits: Limits,
        outlier: Option<OutlierConfig>,
    ) -> Self {
        let mut endpoints = endpoints;
        for e in &mut endpoints {
            e.peer = e.identity.clone().map(|identity| PeerKey {
                addr: e.addr,
                sni: Sni::encode(e.target_port, subset, host),
                identity,
            });
        }
        let mut ring = Vec::new();
        if matches!(lb, LbPolicy::RingHash(_)) {
            for (i, e) in endpoints.iter().enumerate() {
                for v in 0..VNODES * e.weight.max(1) as usize {
                    ring.push((fnv1a(format!("{}#{v}", e.addr).as_bytes()), i));
                }
            }
            ring.sort_unstable();
        }
        let every = (0..endpoints.len()).collect();
        Self {
            name: format!("outbound|{port}|{subset}|{host}").into(),
            host: host.into(),
            port,
            subset: subset.into(),
            endpoints,
            lb,
            limits,
            outlier,
            locality: None,
            state: Arc::default(),
            ring,
            every,
        }
    }

    /// The cluster with locality-aware balancing arranged by `plan` (over
    /// the same endpoints, in the same order).
    pub fn with_locality(mut self, plan: Option<Plan>) -> Self {
        self.locality = plan;
        self
    }

    /// Takes over the counters of `prev` (the same cluster in the previous
    /// config), so a config update does not forget ejections and load.
    pub fn adopt(&mut self, prev: &Cluster) {
        self.state = prev.state.clone();
        for e in &mut self.endpoints {
            if let Some(p) = prev.endpoints.iter().find(|p| p.addr == e.addr) {
                e.state = p.state.clone();
            }
        }
    }

    /// Picks an endpoint not ejected at `now`; `hash` is the request's hash
    /// for ring hashing; `exclude` an endpoint to avoid if another is healthy
    /// (the one a retry failed on). `None`: no healthy endpoint (`UH`).
    pub fn pick(&self, now: Instant, hash: Option<u64>, exclude: Option<usize>) -> Option<usize> {
        let listed;
        let candidates: &[usize] =
            if self.outlier.is_none() && exclude.is_none() && self.locality.is_none() {
                &self.every
            } else {
                listed = self.candidates(now, exclude);
                &listed
            };
        if candidates.is_empty() {
            return None;
        }
        let pick = match &self.lb {
            LbPolicy::RoundRobin => {
                let n = self.state.rr.fetch_add(1, Ordering::Relaxed);
                candidates[n % candidates.len()]
            }
            LbPolicy::Random => candidates[fastrand::usize(..candidates.len())],
            LbPolicy::LeastRequest => {
                // Power of two choices, as Envoy's least request does.
                let a = candidates[fastrand::usize(..candidates.len())];
                let b = candidates[fastrand::usize(..candidates.len())];
                let load = |i: usize| self.endpoints[i].state.active.load(Ordering::Relaxed);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            LbPolicy::RingHash(_) => {
                let h = hash.unwrap_or_else(|| fastrand::u64(..));
                let start = self.ring.partition_point(|(k, _)| *k < h);
                (0..self.ring.len())
                    .map(|o| self.ring[(start + o) % self.ring.len()].1)
                    .find(|i| candidates.contains(i))
                    .unwrap_or(candidates[0])
            }
        };
        Some(pick)
    }

    /// Endpoint `i`'s outlier state, with the sweeps due by `now` applied.
    fn outlier_state(&self, i: usize, now: Instant) -> MutexGuard<'_, OutlierState> {
        let mut st = self.endpoints[i]
            .state
            .outlier
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let (Some(cfg), Some(&epoch)) = (&self.outlier, self.state.sweep_epoch.get()) {
            st.sweep(epoch, cfg.interval, sweeps_by(epoch, cfg.interval, now));
        }
        st
    }

    /// The endpoints a pick chooses from: those not ejected (all of them in
    /// Envoy's panic mode: below `minHealthPercent` in service, or none at
    /// all), narrowed by locality to those of one priority level and
    /// locality, less `exclude` (the one a retry avoids) unless it is the
    /// only healthy one.
    fn candidates(&self, now: Instant, exclude: Option<usize>) -> Vec<usize> {
        let healthy: Vec<bool> = (0..self.endpoints.len())
            .map(|i| !self.is_ejected(i, now))
            .collect();
        let up = healthy.iter().filter(|h| **h).count();
        let min = self.outlier.as_ref().map_or(0, |o| o.min_health_percent);
        let panic = up == 0 || up * 100 < self.endpoints.len() * min as usize;
        let every: &[usize] = match &self.locality {
            Some(plan) => plan.all(),
            None => &self.every,
        };
        let chosen = match &self.locality {
            _ if panic => None,
            Some(plan) => plan.choose(&healthy, fastrand::u32(..100), fastrand::u64(..)),
            None => Some(every.iter().copied().filter(|&i| healthy[i]).collect()),
        };
        // Envoy's panic mode: too few left to carry the load. With every
        // endpoint ejected, trying them beats a certain 503.
        let chosen = chosen.unwrap_or_else(|| every.to_vec());
        match exclude {
            Some(x) if chosen.contains(&x) => {
                if chosen.len() > 1 {
                    chosen.into_iter().filter(|&i| i != x).collect()
                } else {
                    // The retry's level has no other endpoint: the
                    // nearest one that has.
                    self.locality
                        .as_ref()
                        .map(|plan| plan.instead_of(&healthy, x))
                        .filter(|other| !other.is_empty())
                        .unwrap_or(chosen)
                }
            }
            _ => chosen,
        }
    }

    fn is_ejected(&self, i: usize, now: Instant) -> bool {
        // A config update that turns detection off returns every endpoint,
        // as Envoy's rebuilt cluster would.
        self.outlier.is_some() && self.outlier_state(i, now).ejected_until.is_some()
    }

    /// Records the outcome of a request to endpoint `i` (`status` 0: the
    /// connection failed) for outlier detection; may eject it.
    pub fn record(&self, i: usize, status: u16, now: Instant) {
        let Some(cfg) = &self.outlier else { return };
        self.state.sweep_epoch.get_or_init(|| now);
        let gateway = matches!(status, 0 | 502..=504);
        let five = status == 0 || status >= 500;
        let eject = {
            let mut st = self.outlier_state(i, now);
            if five {
                st.consecutive_5xx += 1;
            } else {
                st.consecutive_5xx = 0;
            }
            if gateway {
                st.consecutive_gateway += 1;
            } else {
                st.consecutive_gateway = 0;
            }
            let tripped = cfg
                .consecutive_5xx
                .is_some_and(|n| n > 0 && st.consecutive_5xx >= n)
                || cfg
                    .consecutive_gateway
                    .is_some_and(|n| n > 0 && st.consecutive_gateway >= n);
            tripped && st.ejected_until.is_none()
        };
        if !eject {
            return;
        }
        let ejected = (0..self.endpoints.len())
            .filter(|&j| j != i && self.is_ejected(j, now))
            .count();
        // Envoy ejects at least one endpoint whatever the percentage.
        let max = (self.endpoints.len() * cfg.max_ejection_percent as usize / 100).max(1);
        if ejected >= max {
            return;
        }
        let mut st = self.outlier_state(i, now);
        if st.ejected_until.is_some() {
            // Another request's outcome ejected it meanwhile.
            return;
        }
        st.ejections += 1;
        let time = (cfg.base_ejection * st.ejections).min(cfg.base_ejection.max(MAX_EJECTION_TIME));
        st.ejected_until = Some(now + time);
        st.consecutive_5xx = 0;
        st.consecutive_gateway = 0;
        tracing::info!(cluster = %self.name, endpoint = %self.endpoints[i].addr, for_ = ?time, "outlier detection ejected an endpoint");
    }

    /// Whether endpoint `i` is ejected now (for `/clusters`).
    pub fn ejected(&self, i: usize) -> bool {
        self.is_ejected(i, Instant::now())
    }

    /// Endpoint `i`'s priority level and, when a `distribute` rule weighs
    /// localities, its locality's weight (for `/clusters`); `None`: it
    /// takes no traffic.
    pub fn placement(&self, i: usize) -> Option<(usize, Option<u32>)> {
        let Some(plan) = &self.locality else {
            return Some((0, None));
        };
        let (level, weight) = plan.place_of(i)?;
        let weighted = plan.levels[level].len() > 1;
        Some((level, weighted.then_some(weight)))
    }

    /// The percent of requests each priority level takes at `now`, given
    /// the ejections (for `/clusters`); `None` without locality balancing,
    /// or in panic mode.
    pub fn priority_loads(&self, now: Instant) -> Option<Vec<u32>> {
        let plan = self.locality.as_ref()?;
        let healthy: Vec<bool> = (0..self.endpoints.len())
            .map(|i| !self.is_ejected(i, now))
            .collect();
        plan.loads(&healthy)
    }
}

/// FNV-1a: a stable hash for the ring (the same on every agent and run).
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::locality::Place;

    #[test]
    fn a_clusters_connect_timeout_and_keepalive_replace_the_agents() {
        let agent = ConnectOpts {
            timeout: Duration::from_secs(30),
            mark: Some(1337),
            keepalive: None,
        };
        let same = Limits::default().connect_opts(&agent);
        assert_eq!(
            (same.timeout, same.mark, same.keepalive),
            (agent.timeout, agent.mark, None)
        );
        let keepalive = Keepalive {
            time: Some(Duration::from_secs(42)),
            ..Keepalive::default()
        };
        let own = Limits {
            connect_timeout: Some(Duration::from_millis(100)),
            keepalive: Some(keepalive),
            ..Limits::default()
        }
        .connect_opts(&agent);
        assert_eq!(
            (own.timeout, own.mark, own.keepalive),
            (Duration::from_millis(100), Some(1337), Some(keepalive))
        );
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            target_port: 80,
            identity: None,
            peer: None,
            labels: BTreeMap::new(),
            workload: Arc::default(),
            weight: 1,
            network: "".into(),
            locality: Locality::default(),
            state: Arc::default(),
        }
    }

    fn cluster(n: u16, lb: LbPolicy, outlier: Option<OutlierConfig>) -> Cluster {
        Cluster::new(
            "svc",
            80,
            "",
            (0..n).map(|i| ep(1000 + i)).collect(),
            lb,
            Limits::default(),
            outlier,
        )
    }

    #[test]
    fn round_robin_visits_each_endpoint_in_turn() {
        let c = cluster(3, LbPolicy::RoundRobin, None);
        let now = Instant::now();
        let picks: Vec<_> = (0..6).map(|_| c.pick(now, None, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_ne!(
            c.pick(now, None, Some(0)),
            Some(0),
            "a retry avoids the endpoint that failed"
        );
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let c = cluster(2, LbPolicy::LeastRequest, None);
        c.endpoints[0].state.active.store(10, Ordering::Relaxed);
        let now = Instant::now();
        let ones = (0..200)
            .filter(|_| c.pick(now, None, None) == Some(1))
            .count();
        // Two random choices: endpoint 1 loses only when both choices are 0.
        assert!(ones > 120, "{ones}");
    }

    #[test]
    fn ring_hash_is_sticky_and_spreads() {
        let c = cluster(4, LbPolicy::RingHash(HashOn::SourceIp), None);
        let now = Instant::now();
        let h = fnv1a(b"user-42");
        let first = c.pick(now, Some(h), None);
        assert!((0..20).all(|_| c.pick(now, Some(h), None) == first));
        let mut seen = std::collections::HashSet::new();
        for k in 0..200u32 {
            seen.insert(c.pick(now, Some(fnv1a(&k.to_le_bytes())), None));
        }
        assert_eq!(seen.len(), 4, "every endpoint gets some keys");
    }

    #[test]
    fn consecutive_errors_eject_within_the_percentage_and_then_return() {
        let cfg = OutlierConfig {
            consecutive_5xx: Some(3),
            consecutive_gateway: None,
            base_ejection: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            max_ejection_percent: 50,
            min_health_percent: 0,
        };
        let c = cluster(2, LbPolicy::RoundRobin, Some(cfg));
        let now = Instant::now();
        c.record(0, 500, now);
        c.record(0, 200, now);
        c.record(0, 500, now);
        c.record(0, 503, now);
        assert!(!c.is_ejected(0, now), "a success resets the count");
        c.record(0, 0, now);
        assert!(c.is_ejected(0, now));
        assert_eq!(c.pick(now, None, None), Some(1));
        for _ in 0..3 {
            c.record(1, 500, now);
        }
        assert!(
            !c.is_ejected(1, now),
            "50% of 2 endpoints: only one may be out"
        );
        assert!(
            !c.is_ejected(0, now + Duration::from_secs(31)),
            "ejection ends"
        );
        assert_eq!(c.pick(now, None, None), Some(1));
    }

    /// Ejected by one gateway error, 30s × the multiplier, sweeps every 10s.
    fn ejected_on_a_gateway_error(
        max_ejection_percent: u32,
        min_health_percent: u32,
    ) -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx: None,
            consecutive_gateway: Some(1),
            base_ejection: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            max_ejection_percent,
            min_health_percent,
        }
    }

    #[test]
    fn with_every_endpoint_ejected_every_endpoint_takes_requests() {
        let c = cluster(1, LbPolicy::Random, Some(ejected_on_a_gateway_error(10, 0)));
        let now = Instant::now();
        c.record(0, 502, now);
        assert!(c.is_ejected(0, now));
        assert_eq!(c.pick(now, None, None), Some(0));
    }

    #[test]
    fn an_ejection_lasts_at_most_300s_or_its_base_time() {
        for (base, capped) in [(100, 300), (400, 400)] {
            let mut cfg = ejected_on_a_gateway_error(100, 0);
            cfg.base_ejection = Duration::from_secs(base);
            let c = cluster(2, LbPolicy::RoundRobin, Some(cfg));
            let t0 = Instant::now();
            let at = |s: u64| t0 + Duration::from_secs(s);
            c.record(0, 200, t0);
            // Ejected again each time it returns (at a sweep, every 10s):
            // 1, 2, 3... times the base, until the cap.
            let mut back = 5;
            for n in 1..=4 {
                c.record(0, 503, at(back));
                let time = (base * n).min(capped);
                // Back at the first sweep at or after the time is up.
                let due = (back + time).div_ceil(10) * 10;
                assert!(c.is_ejected(0, at(due - 1)), "base {base}s, ejection {n}");
                assert!(!c.is_ejected(0, at(due)), "base {base}s, ejection {n}");
                back = due;
            }
        }
    }

    #[test]
    fn below_min_health_percent_every_endpoint_takes_requests() {
        for (min, panics) in [(0, false), (50, false), (60, true)] {
            let c = cluster(
                2,
                LbPolicy::RoundRobin,
                Some(ejected_on_a_gateway_error(100, min)),
            );
            let now = Instant::now();
            c.record(0, 502, now);
            assert!(c.is_ejected(0, now));
            let picks: std::collections::HashSet<_> =
                (0..10).map(|_| c.pick(now, None, None)).collect();
            let want = if panics {
                [Some(0), Some(1)].into()
            } else {
                [Some(1)].into()
            };
            assert_eq!(picks, want, "minHealthPercent {min}: 1 of 2 in service");
            // With every endpoint out, every endpoint takes requests.
            c.record(1, 502, now);
            assert!(c.pick(now, None, None).is_some(), "{min}");
        }
    }

    /// One endpoint, ejected by one gateway error, 30s × its multiplier,
    /// with sweeps every 10s.
    fn swept_cluster() -> Cluster {
        cluster(
            2,
            LbPolicy::RoundRobin,
            Some(ejected_on_a_gateway_error(100, 0)),
        )
    }

    #[test]
    fn an_ejection_ends_at_the_first_sweep_after_its_time_is_up() {
        let c = swept_cluster();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first outcome starts the sweeps: at t0+10s, +20s, ...
        c.record(0, 200, t0);
        c.record(0, 503, at(5));
        assert!(c.is_ejected(0, at(5)), "ejected at once, not at a sweep");
        assert!(c.is_ejected(0, at(35)), "its 30s are up, no sweep yet");
        assert!(c.is_ejected(0, at(39)));
        assert!(!c.is_ejected(0, at(40)), "back at the sweep after");
        assert_eq!(c.pick(at(40), None, Some(1)), Some(0));
    }

    #[test]
    fn the_multiplier_decays_by_one_per_sweep_in_service() {
        let c = swept_cluster();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        c.record(0, 200, t0);
        c.record(0, 503, at(5));
        assert!(!c.is_ejected(0, at(40)));
        // Ejected again before a sweep found it in service: 2 × 30s,
        // up at 105s, back at the sweep at 110s.
        c.record(0, 503, at(45));
        assert!(c.is_ejected(0, at(109)));
        assert!(!c.is_ejected(0, at(110)));
        // The sweeps at 120s and 130s find it in service: 2 → 0, so the
        // next ejection is 1 × 30s again (up at 165s, back at 170s).
        c.record(0, 503, at(135));
        assert!(c.is_ejected(0, at(169)));
        assert!(!c.is_ejected(0, at(170)));
        // Only the sweep at 180s before this one: 1 → 0 → 1 → back after
        // 30s, at the sweep at 220s.
        c.record(0, 503, at(185));
        assert!(c.is_ejected(0, at(215)));
        assert!(!c.is_ejected(0, at(220)));
        // No sweep in between (230s is the next): 1 → 2, 60s, back at 290s.
        c.record(0, 503, at(225));
        assert!(c.is_ejected(0, at(285)));
        assert!(!c.is_ejected(0, at(290)));
    }

    #[test]
    fn the_other_endpoint_is_counted_as_ejected_until_its_sweep() {
        // With 50%, one of two may be out: the first stays counted until
        // the sweep returns it, even though its time is up.
        let mut c = swept_cluster();
        if let Some(o) = &mut c.outlier {
            o.max_ejection_percent = 50;
        }
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        c.record(0, 200, t0);
        c.record(0, 503, at(5));
        c.record(1, 503, at(35));
        assert!(!c.is_ejected(1, at(35)), "0 is still out: 1 is not ejected");
        assert!(!c.is_ejected(0, at(40)));
        c.record(1, 503, at(41));
        assert!(c.is_ejected(1, at(41)));
    }

    /// Endpoints in the caller's zone, another zone of its region and
    /// another region, arranged for failover, each ejected by one gateway
    /// error.
    fn three_localities() -> Cluster {
        let mut eps: Vec<Endpoint> = (0..3).map(|i| ep(1000 + i)).collect();
        for (e, l) in eps.iter_mut().zip(["r1/z1", "r1/z2", "r2/z1"]) {
            e.locality = Locality::parse(l).unwrap();
        }
        let me = Locality::parse("r1/z1").unwrap();
        let labels = BTreeMap::new();
        let origin = Place {
            locality: &me,
            network: "",
            cluster: "",
            labels: &labels,
        };
        let places: Vec<Place<'_>> = eps
            .iter()
            .map(|e| Place {
                locality: &e.locality,
                network: "",
                cluster: "",
                labels: &e.labels,
            })
            .collect();
        let plan = Plan::new(None, true, &origin, &places);
        Cluster::new(
            "svc",
            80,
            "",
            eps,
            LbPolicy::RoundRobin,
            Limits::default(),
            Some(ejected_on_a_gateway_error(100, 0)),
        )
        .with_locality(plan)
    }

    #[test]
    fn picks_fail_over_zone_by_zone_region_by_region_and_back() {
        let c = three_localities();
        let t0 = Instant::now();
        let picks = |now| -> std::collections::HashSet<_> {
            (0..50).map(|_| c.pick(now, None, None)).collect()
        };
        assert_eq!(picks(t0), [Some(0)].into(), "the caller's zone first");
        assert_eq!(c.priority_loads(t0), Some(vec![100, 0, 0]));
        c.record(0, 503, t0);
        assert_eq!(picks(t0), [Some(1)].into(), "then the region's other zone");
        assert_eq!(c.priority_loads(t0), Some(vec![0, 100, 0]));
        c.record(1, 503, t0);
        assert_eq!(picks(t0), [Some(2)].into(), "then another region");
        c.record(2, 503, t0);
        assert_eq!(
            picks(t0),
            [Some(0), Some(1), Some(2)].into(),
            "all ejected: panic, every endpoint"
        );
        assert_eq!(c.priority_loads(t0), None);
        // Back at the first sweep after 30s: the nearest again.
        let later = t0 + Duration::from_secs(40);
        assert_eq!(picks(later), [Some(0)].into());
        assert_eq!(c.placement(2), Some((2, None)));
    }

    #[test]
    fn a_retry_goes_to_the_next_level_when_its_own_has_no_other_endpoint() {
        let c = three_localities();
        let now = Instant::now();
        assert_eq!(c.pick(now, None, Some(0)), Some(1));
        c.record(1, 503, now);
        assert_eq!(c.pick(now, None, Some(0)), Some(2));
    }

    #[test]
    fn turning_detection_off_returns_ejected_endpoints() {
        let c = swept_cluster();
        let now = Instant::now();
        c.record(0, 503, now);
        assert!(c.is_ejected(0, now));
        let mut off = cluster(2, LbPolicy::RoundRobin, None);
        off.adopt(&c);
        assert!(!off.is_ejected(0, now));
    }
}
