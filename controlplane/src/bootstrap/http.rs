//! The node's plain HTTP port (`--http-listen`, 15014 like istiod's):
//! `GET /ready` for probes (200 once the node serves, 503 before) and
//! `GET /metrics` in Prometheus' text format, from what the node already
//! keeps (its Raft metrics, its open agent streams, Kubernetes discovery's
//! writes). Nothing else: no state is changed through it.
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::BootstrapError;
use crate::node::{HttpListen, Node};

/// How long a client has to send its request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head read: a probe's or a scraper's is far smaller.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Binds `listen` and serves there. A port the operator gave must bind;
/// the default one may be taken (several nodes on one host): a warning.
pub(super) async fn start(node: Arc<Node>, listen: HttpListen) -> Result<(), BootstrapError> {
    let listener = match TcpListener::bind(listen.addr).await {
        Ok(l) => l,
        Err(source) if listen.required => {
            return Err(BootstrapError::Bind {
                addr: listen.addr.to_string(),
                source,
            })
        }
        Err(e) => {
            tracing::warn!(listen = %listen.addr, error = %e, "cannot bind the default HTTP port; /ready and /metrics are not served (choose a port with --http-listen, or `off`)");
            return Ok(());
        }
    };
    tracing::info!(listen = %listen.addr, "serving /ready and /metrics");
    tokio::spawn(serve(listener, node));
    Ok(())
}

/// Serves `/ready` and `/metrics` of `node` on `listener` until the task
/// is dropped.
async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "http listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let node = node.clone();
                async move { Ok::<_, Infallible>(respond(&req, &node)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "http: connection failed");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, node: &Node) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/ready" && path != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found; there are /ready and /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let serving = node.stats.serving.load(Ordering::Relaxed);
    if path == "/ready" {
        return match serving {
            true => text(StatusCode::OK, "ready\n".into()),
            false => text(StatusCode::SERVICE_UNAVAILABLE, "not serving yet\n".into()),
        };
    }
    let m = node.raft.metrics().borrow().clone();
    let facts = Facts {
        node: node.id,
        serving,
        term: m.current_term,
        leader: m.current_leader,
        last_applied: m.last_applied.map_or(0, |l| l.index),
        last_log: m.last_log_index.unwrap_or(0),
        agents: node.push.streams.count() as u64,
        kube_writes: node.stats.kube_writes.load(Ordering::Relaxed),
        kube_records: node.stats.kube_records_written.load(Ordering::Relaxed),
    };
    let mut r = text(StatusCode::OK, render(&facts));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// What `/metrics` reports.
#[derive(Debug, Default)]
struct Facts {
    node: u64,
    serving: bool,
    term: u64,
    leader: Option<u64>,
    last_applied: u64,
    last_log: u64,
    agents: u64,
    kube_writes: u64,
    kube_records: u64,
}

/// Prometheus' text format of `f`.
fn render(f: &Facts) -> String {
    let leader = f.leader.unwrap_or(0);
    let metrics: [(&str, &str, &str, u64); 9] = [
        (
            "ready",
            "gauge",
            "1 once this node serves, else 0.",
            f.serving.into(),
        ),
        (
            "raft_term",
            "gauge",
            "This node's current Raft term.",
            f.term,
        ),
        (
            "raft_leader",
            "gauge",
            "The Raft leader's node id as this node knows it (0: none known).",
            leader,
        ),
        (
            "raft_is_leader",
            "gauge",
            "1 when this node is the Raft leader.",
            u64::from(f.leader == Some(f.node)),
        ),
        (
            "raft_last_applied_index",
            "gauge",
            "The last log index this node's replica applied.",
            f.last_applied,
        ),
        (
            "raft_last_log_index",
            "gauge",
            "The last index in this node's Raft log.",
            f.last_log,
        ),
        (
            "connected_agents",
            "gauge",
            "Agents and gateways streaming configuration from this node.",
            f.agents,
        ),
        (
            "kubernetes_discovery_writes_total",
            "counter",
            "Writes of Kubernetes discovery by this node.",
            f.kube_writes,
        ),
        (
            "kubernetes_discovery_records_written_total",
            "counter",
            "Records those writes upserted or deleted.",
            f.kube_records,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in metrics {
        let name = format!("trellis_controlplane_{name}");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{node=\"{}\"}} {value}", f.node);
    }
    out
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_one_sample_each() {
        let out = render(&Facts {
            node: 2,
            serving: true,
            term: 7,
            leader: Some(2),
            last_applied: 41,
            last_log: 42,
            agents: 3,
            kube_writes: 5,
            kube_records: 12,
        });
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "trellis_controlplane_ready{node=\"2\"} 1",
                "trellis_controlplane_raft_term{node=\"2\"} 7",
                "trellis_controlplane_raft_leader{node=\"2\"} 2",
                "trellis_controlplane_raft_is_leader{node=\"2\"} 1",
                "trellis_controlplane_raft_last_applied_index{node=\"2\"} 41",
                "trellis_controlplane_raft_last_log_index{node=\"2\"} 42",
                "trellis_controlplane_connected_agents{node=\"2\"} 3",
                "trellis_controlplane_kubernetes_discovery_writes_total{node=\"2\"} 5",
                "trellis_controlplane_kubernetes_discovery_records_written_total{node=\"2\"} 12",
            ]
        );
        // Each metric is introduced by its HELP and TYPE lines.
        assert!(
            out.contains("# TYPE trellis_controlplane_kubernetes_discovery_writes_total counter\n")
        );
        // No leader known yet: 0, and not this node.
        let out = render(&Facts::default());
        assert!(out.contains("trellis_controlplane_raft_leader{node=\"0\"} 0\n"));
        assert!(out.contains("trellis_controlplane_raft_is_leader{node=\"0\"} 0\n"));
    }
}
