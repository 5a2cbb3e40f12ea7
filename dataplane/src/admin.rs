//! A proxy's HTTP endpoints: admin on 127.0.0.1:15000 (`/config_dump`,
//! `/clusters`, `/certs`, `/stats`, `/ready`, `/logging`) and metrics and
//! health on 15020 (`/stats/prometheus`, `/healthz/ready`), named as in
//! Envoy and Istio so the usual scripts and scrapers work. [`Readiness`]
//! tells them, and systemd, when the proxy serves a config.
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use trellis_transport::notify::Notifier;
use trellis_transport::{drain, listen};

use crate::mesh::cluster::Cluster;
use crate::mesh::Mesh;
use crate::telemetry::Telemetry;
use crate::tls::MeshTls;
use crate::Shared;

type Body = Full<Bytes>;

/// Changes the log filter at run time (`/logging?level=debug`).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the endpoints read.
pub struct Admin {
    pub telemetry: Arc<Telemetry>,
    pub mesh: Arc<Shared<Mesh>>,
    pub tls: Arc<MeshTls>,
    pub ready: AtomicBool,
    pub set_log_level: SetLogLevel,
}

/// Who hears whether a proxy serves: `/ready` and `/healthz/ready`, and
/// systemd (`READY=1`, `STOPPING=1`, the watchdog fed from the runtime)
/// when it started the process.
pub struct Readiness {
    pub admin: Arc<Admin>,
    notifier: Option<Arc<Notifier>>,
}

impl Readiness {
    /// Not ready yet; the watchdog is fed from now on if systemd set one.
    pub fn new(admin: Arc<Admin>) -> Readiness {
        let notifier = Notifier::from_env().map(Arc::new);
        if let Some(n) = &notifier {
            n.feed_watchdog();
        }
        Readiness { admin, notifier }
    }

    /// Ready: a config is served (`status` says which).
    pub fn serving(&self, status: &str) {
        self.admin.ready.store(true, Ordering::Relaxed);
        if let Some(n) = &self.notifier {
            n.ready(status);
        }
        tracing::info!("ready: {status}");
    }

    /// Ready once the config streamed from the control plane is first
    /// applied (`first` changes), or at once when a cached one is served.
    pub async fn once_config_served(
        &self,
        cached: bool,
        mut first: tokio::sync::watch::Receiver<u64>,
    ) {
        if cached {
            self.serving("serving the cached config");
        } else if first.changed().await.is_ok() {
            self.serving("serving the control plane's config");
        }
    }

    /// Tells systemd that process `pid` is now the service's main process
    /// (`MAINPID=`): a successor took over (or, if it failed at the last
    /// step, this process again). Not ready any more once another took
    /// over; no `STOPPING=1`, which would stop the whole service.
    pub fn main_pid(&self, pid: u32) {
        if pid != std::process::id() {
            self.admin.ready.store(false, Ordering::Relaxed);
        }
        if let Some(n) = &self.notifier {
            n.send(&format!("MAINPID={pid}\nSTATUS=process {pid} serves"));
        }
    }

    /// Not ready any more: a drain has started.
    pub fn draining(&self) {
        self.admin.ready.store(false, Ordering::Relaxed);
        if let Some(n) = &self.notifier {
            n.stopping();
        }
    }
}

/// Which set of endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    Admin,
    Metrics,
}

/// Connections one admin or metrics listener holds at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Serves `which` on `listener` until a drain starts. (Scrapes are short:
/// a drain does not wait for them.)
///
/// At most [`MAX_CONNECTIONS`] connections at once on each: its clients
/// are operators and scrapers, and the metrics port listens on every
/// address.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    which: Endpoints,
    drain: drain::Watch,
) {
    let name = match which {
        Endpoints::Admin => "admin",
        Endpoints::Metrics => "metrics",
    };
    let limit = listen::ConnLimit::new(MAX_CONNECTIONS);
    listen::serve(listener, name, limit, drain, move |tcp, _, held, slot| {
        drop(held);
        let admin = admin.clone();
        let svc = service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&admin, which, req)) }
        });
        async move {
            let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(slot);
            served
        }
    })
    .await
}

fn handle(admin: &Admin, which: Endpoints, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (which, path) {
        (_, "/stats/prometheus") => text(StatusCode::OK, admin.telemetry.metrics.render()),
        (Endpoints::Metrics, "/healthz/ready") | (Endpoints::Admin, "/ready") => {
            if admin.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "LIVE\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n".into())
            }
        }
        (Endpoints::Admin, "/stats") => text(StatusCode::OK, admin.telemetry.metrics.render()),
        (Endpoints::Admin, "/config_dump") => json(config_dump(admin)),
        (Endpoints::Admin, "/clusters") => text(StatusCode::OK, clusters(admin)),
        (Endpoints::Admin, "/certs") => json(certs(admin)),
        (Endpoints::Admin, "/logging") if req.method() == Method::POST || !query.is_empty() => {
            let level = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("level="))
                .unwrap_or("");
            match (admin.set_log_level)(level) {
                Ok(()) => text(StatusCode::OK, format!("log level set to {level}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Endpoints::Admin, "/logging") => text(
            StatusCode::OK,
            "POST /logging?level=LEVEL (trace, debug, info, warn, error, or a tracing filter)\n"
                .into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Full::from(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::from(
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    ));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn config_dump(admin: &Admin) -> serde_json::Value {
    let mesh = admin.mesh.load();
    let mut services: Vec<_> = mesh.services().map(|s| s.as_ref().clone()).collect();
    services.sort_by(|a, b| a.host.cmp(&b.host));
    serde_json::json!({
        "identity": admin.tls.identity().to_string(),
        "workload": mesh.me().as_ref(),
        "services": services,
        "dns": mesh.dns().as_ref(),
        "resources": mesh.resources,
    })
}

/// Envoy's `/clusters` text: one line per cluster, endpoint and fact.
fn clusters(admin: &Admin) -> String {
    let mesh = admin.mesh.load();
    let mut cs: Vec<_> = mesh.clusters().collect();
    cs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for c in cs {
        write_cluster(&mut out, c, std::time::Instant::now());
    }
    out
}

/// One cluster's lines of `/clusters` at `now`: each endpoint's health,
/// load, identity, locality and priority level (and its locality's weight
/// under a `distribute` rule, 0 for one that takes no traffic), and, under
/// locality balancing, the percent of requests each level takes.
fn write_cluster(out: &mut String, c: &Cluster, now: std::time::Instant) {
    if let Some(loads) = c.priority_loads(now) {
        let loads: Vec<String> = loads.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "{}::priority_load::{}", c.name, loads.join(","));
    }
    for (i, e) in c.endpoints.iter().enumerate() {
        let prefix = format!("{}::{}", c.name, e.addr);
        let health = if c.ejected(i) {
            "/failed_outlier_check"
        } else {
            "healthy"
        };
        let _ = writeln!(out, "{prefix}::health_flags::{health}");
        let _ = writeln!(
            out,
            "{prefix}::rq_active::{}",
            e.state.active.load(Ordering::Relaxed)
        );
        if let Some(id) = &e.identity {
            let _ = writeln!(out, "{prefix}::identity::{id}");
        }
        let l = &e.locality;
        let _ = writeln!(out, "{prefix}::region::{}", l.region);
        let _ = writeln!(out, "{prefix}::zone::{}", l.zone);
        let _ = writeln!(out, "{prefix}::sub_zone::{}", l.subzone);
        match c.placement(i) {
            Some((priority, weight)) => {
                let _ = writeln!(out, "{prefix}::priority::{priority}");
                if let Some(w) = weight {
                    let _ = writeln!(out, "{prefix}::locality_weight::{w}");
                }
            }
            None => {
                let _ = writeln!(out, "{prefix}::locality_weight::0");
            }
        }
    }
}

fn certs(admin: &Admin) -> serde_json::Value {
    let ck = admin.tls.cert().current();
    let chain: Vec<serde_json::Value> = ck
        .cert
        .iter()
        .map(|c| {
            let (nb, na) = trellis_identity::pem::validity(c).unwrap_or((0, 0));
            serde_json::json!({
                "sha256": trellis_identity::pem::fingerprint_hex(c),
                "uri_sans": trellis_identity::pem::uri_sans(c).unwrap_or_default(),
                "valid_from": trellis_identity::rfc3339::format_rfc3339(nb.max(0) as u64),
                "expiration_time": trellis_identity::rfc3339::format_rfc3339(na.max(0) as u64),
            })
        })
        .collect();
    let roots: Vec<String> = admin
        .tls
        .roots()
        .iter()
        .map(|r| trellis_identity::pem::fingerprint_hex(r))
        .collect();
    serde_json::json!({ "identity": admin.tls.identity().to_string(), "cert_chain": chain, "roots_sha256": roots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::{build, Settings};
    use trellis_api::config::parse_documents;
    use trellis_api::topology::Locality;

    /// reviews with endpoints in three localities, seen from `us/us-1`.
    fn clusters_text(rule: &str) -> String {
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  endpoints:
  - {{address: 10.0.0.2, locality: us/us-1/rack-1}}
  - {{address: 10.0.0.3, locality: us/us-2}}
  - {{address: 10.0.0.4, locality: eu/eu-1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  trafficPolicy:
{rule}
"#
        );
        let settings = Settings {
            trust_domain: "td".into(),
            domain: "cluster.local".into(),
            namespace: "default".into(),
            labels: Default::default(),
            addresses: vec![],
            peer_inbound_port: 15006,
            cluster: String::new(),
            network: String::new(),
            locality: Locality::parse("us/us-1/rack-1").unwrap(),
            principal: "spiffe://td/ns/default/sa/me".into(),
            workload_name: None,
            workload_group: None,
        };
        let mesh = build(parse_documents(&yaml).unwrap(), &settings, None);
        let c = mesh
            .cluster("reviews.default.svc.cluster.local", 9080, "")
            .unwrap();
        let mut out = String::new();
        write_cluster(&mut out, &c, std::time::Instant::now());
        out
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines()
            .any(|l| l == format!("outbound|9080||reviews.default.svc.cluster.local::{line}"))
    }

    #[test]
    fn clusters_shows_each_endpoints_locality_priority_and_the_levels_load() {
        let text = clusters_text("    outlierDetection: {consecutive5xxErrors: 1}");
        for line in [
            "priority_load::100,0,0",
            "10.0.0.2:15006::region::us",
            "10.0.0.2:15006::zone::us-1",
            "10.0.0.2:15006::sub_zone::rack-1",
            "10.0.0.2:15006::priority::0",
            "10.0.0.3:15006::priority::1",
            "10.0.0.4:15006::region::eu",
            "10.0.0.4:15006::priority::2",
        ] {
            assert!(has(&text, line), "{line} in\n{text}");
        }
        assert!(!text.contains("locality_weight"), "{text}");
    }

    #[test]
    fn clusters_shows_distribute_weights_and_localities_left_out() {
        let text = clusters_text(
            "    loadBalancer:\n      localityLbSetting:\n        distribute: [{from: 'us/*', to: {'us/us-1/*': 70, 'us/us-2/*': 30}}]",
        );
        for line in [
            "priority_load::100",
            "10.0.0.2:15006::locality_weight::70",
            "10.0.0.3:15006::locality_weight::30",
            "10.0.0.4:15006::locality_weight::0",
        ] {
            assert!(has(&text, line), "{line} in\n{text}");
        }
        assert!(!has(&text, "10.0.0.4:15006::priority::0"), "{text}");
    }
}
