//! `TrafficPolicy` of a `DestinationRule`: load balancing, connection pool
//! limits, outlier detection and upstream TLS, for a host, a subset or a
//! port.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::validate::{
    check_min_duration, check_non_negative, check_one_of, check_percent, check_port, push, Validate,
};
use super::{ClientTlsSettings, Duration, FieldError, PortSelector};

/// Policies for traffic to a host or subset; `portLevelSettings` override
/// them per port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrafficPolicy {
    /// How an endpoint is picked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Overrides for single ports.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnel the connections through a proxy (HTTP CONNECT or POST);
    /// accepted, not acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
}

/// The same policies for one port.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortTrafficPolicy {
    /// The port these settings apply to. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    /// How an endpoint is picked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection and request limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Ejection of failing endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Validates the four policies a [`TrafficPolicy`] and a
/// [`PortTrafficPolicy`] share.
fn validate_policies(
    path: &str,
    errors: &mut Vec<FieldError>,
    load_balancer: &Option<LoadBalancerSettings>,
    connection_pool: &Option<ConnectionPoolSettings>,
    outlier_detection: &Option<OutlierDetection>,
    tls: &Option<ClientTlsSettings>,
) {
    load_balancer.validate_at(&format!("{path}.loadBalancer"), errors);
    connection_pool.validate_at(&format!("{path}.connectionPool"), errors);
    outlier_detection.validate_at(&format!("{path}.outlierDetection"), errors);
    tls.validate_at(&format!("{path}.tls"), errors);
}

/// `trafficPolicy.tunnel`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Host the tunnel proxy connects to. Required.
    pub target_host: String,
    /// Port the tunnel proxy connects to. Required.
    pub target_port: u32,
}

impl Validate for TunnelSettings {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(protocol) = self.protocol.as_deref() {
            if !matches!(protocol, "CONNECT" | "POST") {
                push(
                    errors,
                    &format!("{path}.protocol"),
                    format!("tunnel protocol `{protocol}` is not CONNECT or POST"),
                );
            }
        }
        if self.target_host.is_empty() {
            push(
                errors,
                &format!("{path}.targetHost"),
                "targetHost is required",
            );
        }
        check_port(errors, &format!("{path}.targetPort"), self.target_port);
    }
}

impl Validate for TrafficPolicy {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.tunnel.validate_at(&format!("{path}.tunnel"), errors);
        validate_policies(
            path,
            errors,
            &self.load_balancer,
            &self.connection_pool,
            &self.outlier_detection,
            &self.tls,
        );
        let settings_path = format!("{path}.portLevelSettings");
        self.port_level_settings.validate_at(&settings_path, errors);
        let mut seen = BTreeSet::new();
        for (i, setting) in self.port_level_settings.iter().enumerate() {
            if let Some(port) = setting.port {
                if !seen.insert(port.number) {
                    push(
                        errors,
                        &format!("{settings_path}[{i}].port.number"),
                        format!("port {} already has settings", port.number),
                    );
                }
            }
        }
    }
}

impl Validate for PortTrafficPolicy {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        match &self.port {
            Some(port) => port.validate_at(&format!("{path}.port"), errors),
            None => push(errors, &format!("{path}.port"), "port is required"),
        }
        validate_policies(
            path,
            errors,
            &self.load_balancer,
            &self.connection_pool,
            &self.outlier_detection,
            &self.tls,
        );
    }
}

/// Load balancing: a `simple` algorithm or a `consistentHash`, plus
/// locality preferences and warm-up of new endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadBalancerSettings {
    /// A standard algorithm; not with `consistentHash`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    /// Session affinity by hashing a request attribute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-aware distribution and failover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Ramp traffic up to new endpoints over this long (older form of
    /// `warmup`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup_duration_secs: Option<Duration>,
    /// Ramp traffic up to new endpoints; not with `warmupDurationSecs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
}

/// Standard load balancing algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    /// Proxy default (`LEAST_REQUEST`).
    Unspecified,
    /// Deprecated alias of `LEAST_REQUEST`.
    LeastConn,
    /// A random endpoint.
    Random,
    /// The original destination address, no balancing.
    Passthrough,
    /// Each endpoint in turn.
    RoundRobin,
    /// The less loaded of two random endpoints.
    LeastRequest,
}

impl Validate for LoadBalancerSettings {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("simple", self.simple.is_some()),
                ("consistentHash", self.consistent_hash.is_some()),
            ],
            false,
        );
        check_one_of(
            errors,
            path,
            &[
                ("warmupDurationSecs", self.warmup_duration_secs.is_some()),
                ("warmup", self.warmup.is_some()),
            ],
            false,
        );
        self.consistent_hash
            .validate_at(&format!("{path}.consistentHash"), errors);
        self.locality_lb_setting
            .validate_at(&format!("{path}.localityLbSetting"), errors);
        self.warmup.validate_at(&format!("{path}.warmup"), errors);
    }
}

/// Consistent hashing on exactly one request attribute, with a ring-hash
/// or Maglev table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsistentHashLb {
    /// Hash on this header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    /// Hash on this cookie, generated when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the client IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Use a ring hash table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Use a Maglev table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
    /// Deprecated: `ringHash.minimumRingSize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

impl Validate for ConsistentHashLb {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("httpHeaderName", self.http_header_name.is_some()),
                ("httpCookie", self.http_cookie.is_some()),
                ("useSourceIp", self.use_source_ip.is_some()),
                (
                    "httpQueryParameterName",
                    self.http_query_parameter_name.is_some(),
                ),
            ],
            true,
        );
        check_one_of(
            errors,
            path,
            &[
                ("ringHash", self.ring_hash.is_some()),
                ("maglev", self.maglev.is_some()),
                ("minimumRingSize", self.minimum_ring_size.is_some()),
            ],
            false,
        );
        if let Some(cookie) = &self.http_cookie {
            if cookie.name.is_empty() {
                push(
                    errors,
                    &format!("{path}.httpCookie.name"),
                    "cookie name is required",
                );
            }
        }
    }
}

/// The cookie consistent hashing reads, or sets when absent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Lifetime of a generated cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// Ring-hash table settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RingHash {
    /// Minimum number of virtual nodes on the ring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Maglev table settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Maglev {
    /// Table size; a prime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

/// Locality preferences: explicit weights (`distribute`) or an order to fail
/// over in (`failover`, `failoverPriority`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalityLbSetting {
    /// Share of traffic from a locality to others; not with `failover`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Region to fail over to when a region has no healthy endpoint.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Labels whose equality with the client's ranks endpoints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover_priority: Vec<String>,
    /// Turns locality load balancing on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Traffic from `from` (`region/zone/subzone`, `*` wildcards) split over
/// `to` localities by weight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalityDistribute {
    /// Origin locality.
    pub from: String,
    /// Destination localities and their weights, summing to 100.
    pub to: BTreeMap<String, u32>,
}

/// Fail over from one region to another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalityFailover {
    /// Origin region.
    pub from: String,
    /// Region to use when `from` has no healthy endpoint.
    pub to: String,
}

impl Validate for LocalityLbSetting {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("distribute", !self.distribute.is_empty()),
                ("failover", !self.failover.is_empty()),
            ],
            false,
        );
        for (i, distribute) in self.distribute.iter().enumerate() {
            let sum: u64 = distribute.to.values().map(|w| u64::from(*w)).sum();
            if sum != 100 {
                push(
                    errors,
                    &format!("{path}.distribute[{i}].to"),
                    format!("weights sum to {sum}, they must sum to 100"),
                );
            }
        }
        for (i, label) in self.failover_priority.iter().enumerate() {
            if label
                .split_once('=')
                .map_or(label.as_str(), |(k, _)| k)
                .is_empty()
            {
                push(
                    errors,
                    &format!("{path}.failoverPriority[{i}]"),
                    format!("`{label}` names no label; write a label name, or NAME=VALUE"),
                );
            }
        }
        for (i, failover) in self.failover.iter().enumerate() {
            if failover.from == failover.to {
                push(
                    errors,
                    &format!("{path}.failover[{i}]"),
                    "`from` and `to` must be different regions",
                );
            }
        }
    }
}

/// Slow start of new endpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Warmup {
    /// How long an endpoint is warming up.
    pub duration: Duration,
    /// Share of its full weight an endpoint starts with, 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_percent: Option<f64>,
    /// Curve of the ramp; 1 is linear, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
}

impl Validate for Warmup {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(percent) = self.minimum_percent {
            check_percent(errors, &format!("{path}.minimumPercent"), percent);
        }
        if let Some(aggression) = self.aggression.filter(|a| a.is_nan() || *a < 1.0) {
            push(
                errors,
                &format!("{path}.aggression"),
                format!("{aggression} is less than 1"),
            );
        }
    }
}

/// Connection and request limits per endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionPoolSettings {
    /// TCP limits (all protocols).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

impl Validate for ConnectionPoolSettings {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.tcp.validate_at(&format!("{path}.tcp"), errors);
        self.http.validate_at(&format!("{path}.http"), errors);
    }
}

/// TCP connection limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpSettings {
    /// Maximum connections to an endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    /// Connect timeout, at least 1ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Close connections older than this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Close connections idle for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

impl Validate for TcpSettings {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_non_negative(
            errors,
            &format!("{path}.maxConnections"),
            self.max_connections,
        );
        for (field, value) in [
            ("connectTimeout", self.connect_timeout),
            // `0s` is "off", as in Istio.
            (
                "idleTimeout",
                self.idle_timeout.filter(|d| !d.as_std().is_zero()),
            ),
            // 0s is "none"; a positive duration under 1ms is a mistake.
            (
                "maxConnectionDuration",
                self.max_connection_duration
                    .filter(|d| !d.as_std().is_zero()),
            ),
        ] {
            if let Some(value) = value {
                check_min_duration(errors, &format!("{path}.{field}"), value);
            }
        }
        if let Some(k) = &self.tcp_keepalive {
            // The kernel counts keepalive time in whole seconds.
            for (field, d) in [("time", k.time), ("interval", k.interval)] {
                if let Some(d) = d.filter(|d| d.as_std() < std::time::Duration::from_secs(1)) {
                    push(
                        errors,
                        &format!("{path}.tcpKeepalive.{field}"),
                        format!("{d} is shorter than 1s (keepalive is counted in whole seconds)"),
                    );
                }
            }
        }
    }
}

/// TCP keepalive settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Idle time before the first probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    /// Time between probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

/// HTTP request limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpSettings {
    /// Maximum requests queued waiting for a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<i32>,
    /// Maximum active requests to an endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<i32>,
    /// Requests per connection before it is closed; 1 disables keepalive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<i32>,
    /// Maximum concurrent retries to the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    /// Close upstream connections idle for this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Whether to upgrade HTTP/1.1 connections to HTTP/2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Speak to the endpoint in the client's HTTP version.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub use_client_protocol: bool,
    /// Maximum concurrent streams per HTTP/2 connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<i32>,
}

/// Upgrade of HTTP/1.1 upstream connections to HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// The mesh-wide default.
    Default,
    /// Keep HTTP/1.1.
    DoNotUpgrade,
    /// Upgrade.
    Upgrade,
}

impl Validate for HttpSettings {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        for (field, value) in [
            ("http1MaxPendingRequests", self.http1_max_pending_requests),
            ("http2MaxRequests", self.http2_max_requests),
            ("maxRequestsPerConnection", self.max_requests_per_connection),
            ("maxRetries", self.max_retries),
            ("maxConcurrentStreams", self.max_concurrent_streams),
        ] {
            check_non_negative(errors, &format!("{path}.{field}"), value);
        }
        // `0s` is "never" (Istio refuses it here; Trellis documents it).
        if let Some(idle) = self.idle_timeout.filter(|d| !d.as_std().is_zero()) {
            check_min_duration(errors, &format!("{path}.idleTimeout"), idle);
        }
    }
}

/// Ejection of endpoints that keep failing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OutlierDetection {
    /// Deprecated: `consecutive5xxErrors` and `consecutiveGatewayErrors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<i32>,
    /// Consecutive 5xx (or TCP connect failures) before ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504 before ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// Consecutive locally seen failures (connect, reset) before ejection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local failures apart from upstream errors.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub split_external_local_origin_errors: bool,
    /// Time between ejection sweeps, at least 1ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Minimum ejection time, multiplied by the times ejected; at least 1ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Maximum share of endpoints ejected, 0..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<i32>,
    /// Below this share of healthy endpoints, detection stops, 0..=100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<i32>,
}

impl Validate for OutlierDetection {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_non_negative(
            errors,
            &format!("{path}.consecutiveErrors"),
            self.consecutive_errors,
        );
        for (field, value) in [
            ("interval", self.interval),
            ("baseEjectionTime", self.base_ejection_time),
        ] {
            if let Some(value) = value {
                check_min_duration(errors, &format!("{path}.{field}"), value);
            }
        }
        for (field, value) in [
            ("maxEjectionPercent", self.max_ejection_percent),
            ("minHealthPercent", self.min_health_percent),
        ] {
            if let Some(value) = value {
                check_percent(errors, &format!("{path}.{field}"), f64::from(value));
            }
        }
    }
}
