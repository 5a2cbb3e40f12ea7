//! The proxy's paths on real sockets on loopback, in one process: an
//! application server, and agents whose listeners run as in `start`
//! (certificates from a throwaway CA, config from Istio YAML). The
//! outbound HTTP pipeline step by step ([`outbound_http`]), opaque TCP
//! ([`tcp`]), the inbound side ([`inbound_mtls`]), draining
//! ([`draining`]), what the agent takes and refuses ([`limits`]), how
//! long clients may take and stay ([`timeouts`]), its local replies to
//! gRPC clients ([`grpc`]), `CONNECT` in HTTP proxy mode ([`tunnel`]),
//! and locality-aware balancing and failover ([`locality`]).
mod draining;
mod grpc;
mod inbound_mtls;
mod limits;
mod locality;
mod outbound_http;
mod tcp;
mod timeouts;
mod tunnel;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use trellis_api::config::parse_documents;
use trellis_dataplane::mesh::{self, Settings};
use trellis_dataplane::telemetry::Telemetry;
use trellis_dataplane::tls::MeshTls;
use trellis_dataplane::Shared;
use trellis_identity::testing::TestCa;
use trellis_identity::verify::CertCell;
use trellis_identity::SpiffeId;
use trellis_transport::connect::ConnectOpts;
use trellis_transport::drain;

use super::app::AppClient;
use super::outbound::Listener;
use super::{inbound, outbound, pool, Proxy};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An agent: its shared state and where its listeners are.
struct Agent {
    px: Arc<Proxy>,
    inbound: SocketAddr,
    /// Ends the listeners' accept loops when dropped (its drain is never
    /// started, so they run until the test's runtime ends).
    signal: Option<drain::Signal>,
    watch: drain::Watch,
}

/// How a test agent differs from the others.
struct Setup {
    /// Its own labels (`--label`).
    labels: BTreeMap<String, String>,
    /// The WorkloadGroup it registered in.
    group: Option<String>,
    /// What its clients may send, and how long they may take.
    downstream: super::Downstream,
    max_connections: usize,
    /// Where it is (`--locality`).
    locality: trellis_api::topology::Locality,
}

impl Default for Setup {
    /// The agent's defaults: no labels, no group.
    fn default() -> Self {
        Setup {
            labels: BTreeMap::new(),
            group: None,
            downstream: super::Downstream {
                max_header_bytes: super::DEFAULT_MAX_HEADERS_KB * 1024,
                timeouts: super::downstream::Timeouts {
                    request_headers: Some(Duration::from_secs(10)),
                    idle: Some(Duration::from_secs(3600)),
                },
            },
            max_connections: 10_000,
            locality: Default::default(),
        }
    }
}

/// Config for the agents, with `{APP}` (the application's port) filled in.
fn yaml(template: &str, app: u16) -> String {
    template.replace("{APP}", &app.to_string())
}

impl Agent {
    /// An agent for `default/SA` with the resources in `config`, its
    /// inbound listener started; peers' inbound listeners are on
    /// `peer_inbound_port`.
    async fn start(ca: &TestCa, sa: &str, config: &str, peer_inbound_port: u16) -> Agent {
        let labels = BTreeMap::from([("app".into(), sa.into()), ("version".into(), "v1".into())]);
        let setup = Setup {
            labels,
            ..Setup::default()
        };
        Agent::start_with(ca, sa, config, peer_inbound_port, setup).await
    }

    /// [`Agent::start`] as `setup` says.
    async fn start_with(
        ca: &TestCa,
        sa: &str,
        config: &str,
        peer_inbound_port: u16,
        setup: Setup,
    ) -> Agent {
        let Setup {
            labels,
            group,
            downstream,
            max_connections,
            locality,
        } = setup;
        let id = SpiffeId::parse(&format!("spiffe://td/ns/default/sa/{sa}")).unwrap();
        let cert = CertCell::new(&ca.issue(&id.to_string())).unwrap();
        let tls = Arc::new(MeshTls::new(cert, id.clone(), vec![ca.root.clone()]).unwrap());
        let settings = Settings {
            trust_domain: "td".into(),
            domain: "cluster.local".into(),
            namespace: "default".into(),
            labels,
            addresses: vec![LOCALHOST],
            peer_inbound_port,
            cluster: String::new(),
            network: String::new(),
            locality,
            principal: id.to_string(),
            workload_name: None,
            workload_group: group,
        };
        let resources = parse_documents(config).unwrap();
        let opts = ConnectOpts {
            timeout: Duration::from_secs(5),
            mark: None,
            keepalive: None,
        };
        let limit = downstream.max_header_bytes;
        let px = Arc::new(Proxy {
            pool: pool::Pool::new(
                pool::Peers(tls.clone()),
                limit + super::PEER_HEADER_ALLOWANCE,
            ),
            app: AppClient::new(LOCALHOST, opts.clone(), limit),
            downstream,
            conn_limit: trellis_transport::listen::ConnLimit::new(max_connections),
            tls,
            telemetry: Arc::new(Telemetry::new(false)),
            mesh: Arc::new(Shared::new(mesh::build(resources, &settings, None))),
            opts,
            peer_inbound_port,
        });
        let (signal, watch) = drain::channel();
        let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let inbound = l.local_addr().unwrap();
        tokio::spawn(inbound::serve(l, px.clone(), watch.clone()));
        Agent {
            px,
            inbound,
            signal: Some(signal),
            watch,
        }
    }

    /// A local port standing for `host:port` (`--upstream`).
    async fn upstream(&self, host: &str, port: u16) -> SocketAddr {
        let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let kind = Listener::Upstream {
            host: Arc::from(host),
            port,
        };
        tokio::spawn(outbound::serve(
            l,
            kind,
            self.px.clone(),
            self.watch.clone(),
        ));
        addr
    }

    /// An outbound port taking connections that were not captured: an
    /// HTTP proxy (the application's `HTTP_PROXY`).
    async fn proxy(&self) -> SocketAddr {
        let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(outbound::serve(
            l,
            Listener::Capture,
            self.px.clone(),
            self.watch.clone(),
        ));
        addr
    }

    /// The agent's metrics, in Prometheus text.
    fn metrics(&self) -> String {
        self.px.telemetry.metrics.render()
    }
}

/// A client agent `client` and a server agent `reviews` in front of an
/// application, both with `config` (`{APP}` the application's port); the
/// client's upstream port for `reviews.default.svc.cluster.local:9080`.
struct Pair {
    client: Agent,
    server: Agent,
    /// The client agent's `--upstream` for reviews:9080.
    upstream: SocketAddr,
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

async fn pair(app: &App, config: &str) -> Pair {
    let ca = TestCa::new();
    let config = yaml(config, app.addr.port());
    // The server first: the client dials its inbound port.
    let server = Agent::start(&ca, "reviews", &config, 0).await;
    let client = Agent::start(&ca, "client", &config, server.inbound.port()).await;
    let upstream = client.upstream(REVIEWS, 9080).await;
    Pair {
        client,
        server,
        upstream,
    }
}

/// The reviews service: port 9080 (HTTP) served by one workload with an
/// agent, whose application listens on `{APP}`.
const REVIEWS_SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 127.0.0.1, labels: {app: reviews, version: v1}, serviceAccount: reviews, ports: {http: {APP}}}
"#;

/// What the application was asked.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: http::HeaderMap,
}

/// A request header that has the [`App`] answer with a header `x-big`
/// of that many bytes.
const HEADER_BYTES: &str = "x-app-header-bytes";

type Respond = dyn Fn(u64, &http::request::Parts) -> (u16, Duration) + Send + Sync;

/// An HTTP/1.1 and HTTP/2 application on loopback that records each
/// request and answers what `respond` says for the nth (from 0): a
/// status, after a delay. The body echoes the path; the head has a header
/// as large as the request's [`HEADER_BYTES`] asks.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicU64>,
}

impl App {
    async fn start(
        respond: impl Fn(u64, &http::request::Parts) -> (u16, Duration) + Send + Sync + 'static,
    ) -> App {
        let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let respond: Arc<Respond> = Arc::new(respond);
        let (s, c) = (seen.clone(), count.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (s, c, respond) = (s.clone(), c.clone(), respond.clone());
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (s, c, respond) = (s.clone(), c.clone(), respond.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        s.lock().unwrap().push(Seen {
                            path: parts.uri.path().to_string(),
                            headers: parts.headers.clone(),
                        });
                        let (status, delay) = respond(n, &parts);
                        tokio::time::sleep(delay).await;
                        let mut resp =
                            Response::new(Full::new(Bytes::from(parts.uri.path().to_string())));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        if let Some(n) = parts.headers.get(HEADER_BYTES) {
                            let n: usize = n.to_str().unwrap().parse().unwrap();
                            let big = http::HeaderValue::from_str(&"a".repeat(n)).unwrap();
                            resp.headers_mut().insert("x-big", big);
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .into_owned(),
                );
            }
        });
        App { addr, seen, count }
    }

    /// An application that answers 200 at once.
    async fn ok() -> App {
        App::start(|_, _| (200, Duration::ZERO)).await
    }

    fn requests(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// What a client got.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

/// Sends `req` over a new HTTP/1.1 connection to `addr`.
async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A GET of `path` with `Host: reviews:9080`.
fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(http::header::HOST, "reviews:9080")
        .body(Full::default())
        .unwrap()
}

/// The value of the series of `metric` whose labels include all of
/// `labels` (`name="value"` each), summed; 0 when there is none.
fn series(metrics: &str, metric: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
