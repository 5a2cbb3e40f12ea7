//! `trellis-agent`: the proxy that runs beside every workload.
//!
//! One process per workload or host: the mTLS proxy ([`proxy`]: inbound on
//! 15006, outbound on 15001 and per-upstream ports), its view of the mesh
//! ([`mesh`], compiled from Istio resources pushed by the control plane,
//! [`discovery`], or read from a file), route selection ([`route`]),
//! the DNS proxy ([`dns`], 15053), the certificate client ([`identity`]),
//! iptables or nftables capture ([`capture`]), telemetry ([`telemetry`]) and the admin
//! and metrics endpoints ([`admin`]). [`run`] wires them together from
//! [`Options`].
/// The agent's hash map for what every request looks up (services,
/// routes, clusters, pooled connections, metric series): foldhash hashes
/// several times faster than the default SipHash, and is seeded per process
/// as SipHash is.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub mod admin;
pub mod capture;
pub mod discovery;
pub mod dns;
pub mod identity;
pub mod mesh;
pub mod options;
pub mod proxy;
pub mod route;
pub mod state;
pub mod telemetry;
pub mod tls;

use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::TcpListener;
use trellis_api::config::{parse_documents, Resource};

pub use options::Options;
use proxy::outbound::Listener;

/// Reads and validates a config file: all of it or nothing.
pub fn load_config(path: &Path) -> anyhow::Result<Vec<Resource>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_documents(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: Options, set_log_level: admin::SetLogLevel) -> anyhow::Result<()> {
    // The config first: a bad file is refused before anything else happens.
    let resources = match &opts.config_file {
        Some(p) => load_config(p)?,
        None => Vec::new(),
    };
    let source = opts.identity_source()?;
    // With capture, the agent's own sockets are marked, those to the
    // control plane included, so the rules let them out.
    let mark = opts.capture.backend().map(|_| proxy::connect::CAPTURE_MARK);
    let loaded = identity::load(&source, mark).await?;
    tracing::info!(identity = %loaded.id, "workload certificate loaded");
    let cert = trellis_identity::verify::CertCell::new(&loaded.identity)?;
    let tls = Arc::new(tls::MeshTls::new(
        cert,
        loaded.id.clone(),
        loaded.roots.clone(),
    )?);
    if let identity::Source::Token { data_dir, .. } = &source {
        tokio::spawn(identity::renew_forever(
            tls.clone(),
            loaded.not_after,
            loaded.control_plane.clone(),
            data_dir.clone(),
            mark,
        ));
    }

    let settings = opts.mesh_settings(&loaded.id)?;
    let mesh = mesh::build(resources, &settings, None);
    let control_plane = if opts.control_plane.is_empty() {
        loaded.control_plane.clone()
    } else {
        opts.control_plane.clone()
    };
    let group = opts.workload_group.clone().or(loaded.group.clone());
    let me = Arc::new(opts.workload(&loaded.id, &settings));
    let connect = proxy::connect::ConnectOpts {
        timeout: opts.connect_timeout,
        mark,
        keepalive: None,
    };
    let px = Arc::new(proxy::Proxy {
        pool: proxy::pool::Pool::new(proxy::pool::Peers(tls.clone())),
        app: proxy::app::AppClient::new(opts.app_host, connect.clone()),
        peer_metadata: http::HeaderValue::from_str(&serde_json::to_string(me.as_ref())?)?,
        labels: settings.labels.clone(),
        tls,
        telemetry: Arc::new(telemetry::Telemetry::new(opts.access_log)),
        mesh: state::Shared::new(mesh),
        me,
        opts: connect,
        peer_inbound_port: opts.peer_inbound_port,
    });

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    // With capture on a host with IPv6, each listener capture redirects to
    // gets an IPv6 twin, where the IPv6 rules send what they catch.
    let ipv6 = opts.capture.backend().is_some() && host_has_ipv6();
    if opts.capture.backend().is_some() && !ipv6 {
        tracing::warn!("the host has no IPv6 (::1 cannot be bound): capturing IPv4 only");
    }
    let twin = |addr: SocketAddr, local: bool| ipv6_twin(addr, local).filter(|_| ipv6);
    let mut inbound = vec![bind(opts.inbound).await?];
    let mut outbound = vec![bind(opts.outbound).await?];
    for (listeners, twin) in [
        (&mut inbound, twin(opts.inbound, false)),
        (&mut outbound, twin(opts.outbound, true)),
    ] {
        if let Some(a) = twin {
            listeners.push(bind_ipv6_only(a).with_context(|| format!("binding {a}"))?);
        }
    }
    let mut upstreams = Vec::new();
    for u in &opts.upstreams {
        upstreams.push((bind(u.listen).await?, u.clone()));
    }
    let admin_l = bind(opts.admin).await?;
    let metrics_l = bind(opts.metrics).await?;
    let mut dns_l = Vec::new();
    for a in opts
        .dns
        .into_iter()
        .chain(opts.dns.and_then(|a| twin(a, true)))
    {
        dns_l.push(
            dns::Listeners::bind(a)
                .await
                .with_context(|| format!("binding {a} (DNS, UDP and TCP)"))?,
        );
    }

    // Refused before capture is installed, which an early exit would leave.
    if opts.config_file.is_none() && control_plane.is_empty() {
        anyhow::bail!(
            "no config source: give --config-file, or --control-plane ADDR (a token gives the addresses by itself)"
        );
    }
    let capture = opts.capture.backend().map(|backend| capture::Capture {
        backend,
        inbound_port: opts.inbound.port(),
        outbound_port: opts.outbound.port(),
        dns_port: opts.dns.map(|a| a.port()),
        exclude_inbound: opts.capture_exclude_ports(),
        ipv6,
    });
    if let Some(c) = &capture {
        c.install()?;
        tracing::info!(backend = ?c.backend, "capture installed");
    }

    let admin = Arc::new(admin::Admin {
        px: px.clone(),
        ready: AtomicBool::new(false),
        set_log_level,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for l in inbound {
        tasks.spawn(proxy::inbound::serve(l, px.clone()));
    }
    for l in outbound {
        tasks.spawn(proxy::outbound::serve(l, Listener::Capture, px.clone()));
    }
    for (l, u) in upstreams {
        tasks.spawn(proxy::outbound::serve(
            l,
            Listener::Upstream {
                host: Arc::from(u.host.as_str()),
                port: u.port,
            },
            px.clone(),
        ));
    }
    tasks.spawn(admin::serve(
        admin_l,
        admin.clone(),
        admin::Endpoints::Admin,
    ));
    tasks.spawn(admin::serve(
        metrics_l,
        admin.clone(),
        admin::Endpoints::Metrics,
    ));
    if !dns_l.is_empty() {
        let server = dns_server(&opts, &px);
        for l in dns_l {
            tasks.spawn(dns::serve(l, server.clone()));
        }
    }
    match opts.config_file.clone() {
        Some(path) => {
            tasks.spawn(watch_config(path, settings, px.clone()));
            admin
                .ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        None => {
            let node = opts.proxy_node(&settings, &px.me, group.as_deref());
            let cache = opts.data_dir.join(discovery::CACHE_FILE);
            let cached = discovery::load_cache(&cache);
            let (applied, mut first) = tokio::sync::watch::channel(0u64);
            let client = discovery::Client {
                px: px.clone(),
                settings: settings.clone(),
                node,
                addresses: control_plane,
                cache,
                held: Arc::new(state::Shared::new(cached.clone().unwrap_or_default())),
                applied,
            };
            // Serve from the cache at once; the control plane may be away.
            if let Some(c) = &cached {
                client.install(c);
                tracing::info!(version = c.version, "serving the cached config");
            }
            let (health_tx, health_rx) = tokio::sync::watch::channel(None);
            if let Some(g) = group {
                tasks.spawn(discovery::probe::run(
                    client.held.clone(),
                    settings.namespace.clone(),
                    g,
                    opts.app_host,
                    health_tx,
                ));
            }
            tasks.spawn(client.run(health_rx));
            let admin = admin.clone();
            tasks.spawn(async move {
                if cached.is_none() {
                    let _ = first.changed().await;
                }
                admin
                    .ready
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            });
        }
    }
    tracing::info!(
        inbound = %opts.inbound, outbound = %opts.outbound, admin = %opts.admin, metrics = %opts.metrics,
        "trellis-agent ready"
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(c) = &capture {
        c.remove();
    }
    tasks.abort_all();
    Ok(())
}

/// Whether the host has IPv6: its loopback address can be bound.
fn host_has_ipv6() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// Where IPv6 capture sends what would have gone to IPv4 listener `addr`:
/// REDIRECT takes locally made packets (outbound, DNS: `local`) to `::1`
/// and incoming ones to the first address of the interface they arrived
/// on, so the inbound twin listens on all (`::`). `None` for a listener on
/// IPv6 (which capture refuses, [`options::check`]).
fn ipv6_twin(addr: SocketAddr, local: bool) -> Option<SocketAddr> {
    let ip = if local {
        Ipv6Addr::LOCALHOST
    } else {
        Ipv6Addr::UNSPECIFIED
    };
    addr.is_ipv4()
        .then(|| SocketAddr::new(ip.into(), addr.port()))
}

/// A TCP listener on an IPv6 address that takes IPv6 only: on `::` a
/// dual-stack socket would clash with the IPv4 listener on the same port.
fn bind_ipv6_only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// The DNS proxy: names from the mesh view in force, the rest to the
/// upstreams, from sockets marked as the proxy's are.
fn dns_server(opts: &Options, px: &Arc<proxy::Proxy>) -> Arc<dns::Server> {
    let forwarder = opts.dns_forwarder(px.opts.mark);
    tracing::info!(listen = ?opts.dns, upstreams = ?forwarder.upstreams(), "DNS proxy");
    let px = px.clone();
    Arc::new(dns::Server::new(
        Arc::new(move || px.mesh.load()),
        forwarder,
    ))
}

/// Reloads the config file when it changes; a file that does not parse or
/// validate is refused with its errors and the previous config stays.
async fn watch_config(path: std::path::PathBuf, settings: mesh::Settings, px: Arc<proxy::Proxy>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = modified(&path);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = modified(&path);
        if now == last {
            continue;
        }
        last = now;
        match load_config(&path) {
            Ok(resources) => {
                let prev = px.mesh.load();
                px.mesh
                    .store(mesh::build(resources, &settings, Some(&prev)));
                tracing::info!(file = %path.display(), "config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "config update refused; the previous config stays in force")
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_twins_are_where_redirect_delivers() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            ipv6_twin(at("127.0.0.1:15001"), true),
            Some(at("[::1]:15001"))
        );
        assert_eq!(
            ipv6_twin(at("0.0.0.0:15006"), false),
            Some(at("[::]:15006"))
        );
        assert_eq!(ipv6_twin(at("[::1]:15001"), true), None);
    }
}
