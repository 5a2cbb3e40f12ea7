//! The agent's Prometheus metrics, under Istio's names, kept as plain
//! counters and histograms keyed by label set and rendered on scrape.
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::labels::{push_label, ConnLabels};
use super::Flag;

/// Istio's bucket bounds for `istio_request_duration_milliseconds`.
const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's bucket bounds for request and response sizes (1 B to 10 MB).
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

/// The labels of one HTTP request series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub conn: ConnLabels,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub response_code: u16,
    /// The `grpc-status` of a gRPC response, when there was one.
    pub grpc_status: Option<u16>,
    pub flag: Option<Flag>,
}

#[derive(Clone, Debug)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: usize) -> Self {
        Self {
            counts: vec![0; buckets],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, bounds: &[f64], v: f64) {
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, bounds: &[f64], labels: &str) {
        let mut cum = 0;
        for (b, c) in bounds.iter().zip(&self.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Clone, Debug)]
struct RequestSeries {
    total: u64,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Clone, Debug, Default)]
struct TcpSeries {
    sent: u64,
    received: u64,
    opened: u64,
    closed: u64,
}

/// Series by label set. Every request looks its series up, hashing all its
/// labels.
type Series<K, V> = crate::FastMap<K, V>;

/// All series of this agent.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Series<RequestKey, RequestSeries>>,
    tcp: Mutex<Series<ConnLabels, TcpSeries>>,
    /// Downstream connections closed before they were proxied, by reason.
    refused: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Upstream connects tried again with another endpoint.
    connect_retries: AtomicU64,
}

impl Metrics {
    /// One finished HTTP request.
    pub fn request(
        &self,
        key: RequestKey,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry(key).or_insert_with(|| RequestSeries {
            total: 0,
            duration: Histogram::new(DURATION_BUCKETS_MS.len()),
            request_bytes: Histogram::new(SIZE_BUCKETS.len()),
            response_bytes: Histogram::new(SIZE_BUCKETS.len()),
        });
        s.total += 1;
        s.duration
            .observe(&DURATION_BUCKETS_MS, duration.as_secs_f64() * 1000.0);
        s.request_bytes.observe(&SIZE_BUCKETS, request_bytes as f64);
        s.response_bytes
            .observe(&SIZE_BUCKETS, response_bytes as f64);
    }

    /// A TCP connection opened.
    pub fn tcp_opened(&self, labels: &ConnLabels) {
        self.tcp_entry(labels, |s| s.opened += 1);
    }

    /// A TCP connection closed after moving these bytes.
    pub fn tcp_closed(&self, labels: &ConnLabels, sent: u64, received: u64) {
        self.tcp_entry(labels, |s| {
            s.closed += 1;
            s.sent += sent;
            s.received += received;
        });
    }

    /// A downstream connection closed before it was proxied, for `reason`
    /// (`trellis_connections_refused_total{reason}`).
    pub fn refused(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// A connect to an upstream endpoint failed and another one is tried
    /// (`trellis_connect_retries_total`).
    pub fn connect_retry(&self) {
        self.connect_retries.fetch_add(1, Ordering::Relaxed);
    }

    fn tcp_entry(&self, labels: &ConnLabels, f: impl FnOnce(&mut TcpSeries)) {
        let mut map = self.tcp.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(labels) {
            Some(s) => f(s),
            None => f(map.entry(labels.clone()).or_default()),
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let rendered: Vec<(String, RequestSeries)> = requests
            .into_iter()
            .map(|(k, s)| (request_labels(&k), s))
            .collect();
        out.push_str("# TYPE istio_requests_total counter\n");
        for (l, s) in &rendered {
            let _ = writeln!(out, "istio_requests_total{{{l}}} {}", s.total);
        }
        for (name, pick, bounds) in [
            (
                "istio_request_duration_milliseconds",
                (|s: &RequestSeries| &s.duration) as fn(&RequestSeries) -> &Histogram,
                &DURATION_BUCKETS_MS[..],
            ),
            (
                "istio_request_bytes",
                |s| &s.request_bytes,
                &SIZE_BUCKETS[..],
            ),
            (
                "istio_response_bytes",
                |s| &s.response_bytes,
                &SIZE_BUCKETS[..],
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (l, s) in &rendered {
                pick(s).render(&mut out, name, bounds, l);
            }
        }
        let tcp = self.tcp.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let tcp: Vec<(String, TcpSeries)> = tcp
            .into_iter()
            .map(|(k, s)| {
                let mut l = String::new();
                k.render(&mut l);
                (l, s)
            })
            .collect();
        for (name, pick) in [
            (
                "istio_tcp_sent_bytes_total",
                (|s: &TcpSeries| s.sent) as fn(&TcpSeries) -> u64,
            ),
            ("istio_tcp_received_bytes_total", |s| s.received),
            ("istio_tcp_connections_opened_total", |s| s.opened),
            ("istio_tcp_connections_closed_total", |s| s.closed),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (l, s) in &tcp {
                let _ = writeln!(out, "{name}{{{l}}} {}", pick(s));
            }
        }
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if !refused.is_empty() {
            out.push_str("# TYPE trellis_connections_refused_total counter\n");
            for (reason, n) in refused.iter() {
                let _ = writeln!(
                    out,
                    "trellis_connections_refused_total{{reason=\"{reason}\"}} {n}"
                );
            }
        }
        let retries = self.connect_retries.load(Ordering::Relaxed);
        if retries > 0 {
            out.push_str("# TYPE trellis_connect_retries_total counter\n");
            let _ = writeln!(out, "trellis_connect_retries_total {retries}");
        }
        out
    }
}

fn request_labels(k: &RequestKey) -> String {
    let mut l = String::new();
    k.conn.render(&mut l);
    l.push(',');
    push_label(&mut l, "request_protocol", k.protocol);
    l.push(',');
    push_label(&mut l, "response_code", &k.response_code.to_string());
    l.push(',');
    let grpc = k.grpc_status.map(|g| g.to_string());
    push_label(
        &mut l,
        "grpc_response_status",
        grpc.as_deref().unwrap_or(""),
    );
    l.push(',');
    push_label(&mut l, "response_flags", k.flag.map_or("-", Flag::code));
    l
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::telemetry::labels::{Reporter, Workload};

    fn conn() -> ConnLabels {
        ConnLabels {
            reporter: Reporter::Source,
            source: Arc::new(Workload {
                workload: "productpage".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            destination: Arc::new(Workload::default()),
            destination_service: "reviews.default.svc.cluster.local".into(),
            mtls: true,
        }
    }

    #[test]
    fn renders_istio_names_labels_and_cumulative_buckets() {
        let m = Metrics::default();
        let key = RequestKey {
            conn: conn(),
            protocol: "http",
            response_code: 503,
            grpc_status: None,
            flag: Some(Flag::NoHealthyUpstream),
        };
        m.request(key.clone(), Duration::from_millis(3), 10, 2000);
        m.request(key, Duration::from_millis(30), 0, 0);
        m.tcp_opened(&conn());
        m.tcp_closed(&conn(), 5, 7);
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        assert!(line.ends_with(" 2"), "{line}");
        for want in [
            "reporter=\"source\"",
            "source_workload=\"productpage\"",
            "destination_workload=\"unknown\"",
            "destination_service_name=\"reviews\"",
            "destination_service_namespace=\"default\"",
            "response_code=\"503\"",
            "response_flags=\"UH\"",
            "connection_security_policy=\"mutual_tls\"",
        ] {
            assert!(line.contains(want), "{want} missing in {line}");
        }
        assert!(text.contains("le=\"5\"} 1\n"), "{text}");
        assert!(text.contains("le=\"50\"} 2\n"), "{text}");
        assert!(text.contains("istio_request_duration_milliseconds_count{"));
        assert!(text
            .lines()
            .any(|l| l.starts_with("istio_tcp_received_bytes_total{") && l.ends_with(" 7")));
        assert!(!text.contains("trellis_connections_refused_total"));
        m.refused("no_sni");
        m.refused("no_sni");
        m.refused("bad_sni");
        let text = m.render();
        assert!(text.contains("trellis_connections_refused_total{reason=\"no_sni\"} 2\n"));
        assert!(text.contains("trellis_connections_refused_total{reason=\"bad_sni\"} 1\n"));
        assert!(!text.contains("trellis_connect_retries_total"));
        m.connect_retry();
        m.connect_retry();
        assert!(m.render().contains("\ntrellis_connect_retries_total 2\n"));
    }
}
