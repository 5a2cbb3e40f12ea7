//! Starting the agent in named steps, and stopping it.
//!
//! [`run`]: the config file (refused before anything else happens) →
//! the workload certificate ([`certificate`]) → the proxy's shared state
//! ([`proxy_state`]) → every socket bound ([`Sockets::bind`]) → capture
//! installed → the listeners served ([`serve`]) → the config source
//! ([`config_source`]: the file, watched, or the control plane's stream)
//! → READY=1 to systemd once a config is served (the first one the
//! control plane sent, or the cached one) → SIGINT or SIGTERM → a drain: listeners stop accepting, in-flight
//! requests and connections get up to `--drain-timeout` to finish →
//! capture removed. Or SIGHUP → a hot restart ([`crate::restart`]): a new
//! agent process takes the sockets, and this one drains and leaves capture
//! to it. An agent started so takes its sockets from its predecessor
//! rather than binding them, and tells it once it serves.
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use trellis_api::config::{parse_documents, ConfigError, Resource};
use trellis_dataplane::identity::{self, Loaded, Source};
use trellis_dataplane::mesh::{self, Settings};
use trellis_dataplane::telemetry::Telemetry;
use trellis_dataplane::tls::MeshTls;
use trellis_dataplane::{admin, discovery, Shared};
use trellis_identity::verify::CertCell;
use trellis_transport::connect::{ConnectOpts, CAPTURE_MARK};
use trellis_transport::handoff::{HandoffError, Received};
use trellis_transport::{drain, listen};

use crate::options::{Options, OptionsError};
use crate::proxy::outbound::Listener;
use crate::proxy::{self, app::AppClient, pool, Proxy};
use crate::{capture, dns, restart};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    BadConfig { path: PathBuf, source: ConfigError },
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error("no workload certificate: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("the workload certificate cannot be used for TLS: {0}")]
    Tls(#[from] trellis_identity::IdentityError),
    #[error("binding {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "no config source: give --config-file, or --control-plane ADDR (a token gives the addresses by itself)"
    )]
    NoConfigSource,
    #[error("installing capture: {0}")]
    Capture(#[from] capture::CaptureError),
    #[error("--install-capture needs --capture iptables or --capture nftables")]
    NothingToInstall,
    #[error("taking over from the agent that ran before: {0}")]
    Handoff(#[from] HandoffError),
}

/// Reads and validates a config file: all of it or nothing.
pub fn load_config(path: &Path) -> Result<Vec<Resource>, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    parse_documents(&text).map_err(|source| StartError::BadConfig {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the agent until SIGINT or SIGTERM, then drains it; or until a
/// SIGHUP's hot restart has handed over to a successor, then drains
/// leaving capture in place. `handoff`: the sockets of the agent this one
/// succeeds, if any.
pub async fn run(
    opts: Options,
    set_log_level: admin::SetLogLevel,
    mut handoff: Option<Received>,
) -> Result<(), StartError> {
    // At once: SIGHUP's default action would end the process.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let shutdown = drain::shutdown_signal();
    tokio::pin!(shutdown);
    let resources = match &opts.config_file {
        Some(p) => load_config(p)?,
        None => Vec::new(),
    };
    // With capture, the agent's own sockets are marked, those to the
    // control plane included, so the rules let them out.
    let mark = opts.capture.backend().map(|_| CAPTURE_MARK);
    let source = opts.identity_source();
    let (loaded, tls) = certificate(&source, mark).await?;
    let group = opts.workload_group.clone().or(loaded.group.clone());
    let mut settings = opts.mesh_settings(&loaded.id)?;
    // Its labels are this workload's, once the control plane pushes it.
    settings.workload_group.clone_from(&group);
    let px = proxy_state(&opts, tls, &settings, resources, mark)?;

    // With capture on a host with IPv6, each listener capture redirects to
    // gets an IPv6 twin, where the IPv6 rules send what they catch.
    let ipv6 = opts.capture.backend().is_some() && listen::host_has_ipv6();
    if opts.capture.backend().is_some() && !ipv6 {
        tracing::warn!("the host has no IPv6 (::1 cannot be bound): capturing IPv4 only");
    }
    let sockets = Sockets::bind(&opts, ipv6, handoff.as_mut()).await?;
    // Copies kept for a successor.
    let kept = sockets.copies().map_err(|source| StartError::Bind {
        addr: opts.inbound,
        what: "copies of the listening sockets",
        source,
    })?;
    let control_plane = if opts.control_plane.is_empty() {
        loaded.control_plane.clone()
    } else {
        opts.control_plane.clone()
    };
    // Refused before capture is installed, which an early exit would leave.
    if opts.config_file.is_none() && control_plane.is_empty() {
        return Err(StartError::NoConfigSource);
    }
    let capture = install_capture(&opts, ipv6)?;

    let admin = Arc::new(admin::Admin {
        telemetry: px.telemetry.clone(),
        mesh: px.mesh.clone(),
        tls: px.tls.clone(),
        ready: AtomicBool::new(false),
        set_log_level,
    });
    let ready = Arc::new(admin::Readiness::new(admin.clone()));
    let (signal, watch) = drain::channel();
    let mut tasks = serve(&opts, sockets, &px, &admin, watch);
    let served = config_source(
        &opts,
        &px,
        settings,
        control_plane,
        group,
        ready.clone(),
        &mut tasks,
    );
    tracing::info!(
        inbound = %opts.inbound, outbound = %opts.outbound, admin = %opts.admin, metrics = %opts.metrics,
        "trellis-agent started"
    );
    match handoff {
        // The predecessor owns capture until it confirms: an error here
        // returns without removing it.
        Some(h) => {
            tokio::select! {
                () = served => {}
                () = &mut shutdown => return Ok(()),
            }
            h.ready().await?;
            tracing::info!("took over from the agent that ran before");
        }
        None => {
            tasks.spawn(served);
        }
    }

    let successor = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            Some(()) = async { hangup.as_mut()?.recv().await } => {
                let outcome = restart::hand_over(&kept, &ready).await;
                restart::record(&opts.data_dir, &outcome);
                match outcome {
                    Ok(pid) => break Some(pid),
                    Err(e) => tracing::error!(error = %e, "hot restart failed: this agent serves on"),
                }
            }
        }
    };
    drop(kept);
    match successor {
        Some(pid) => {
            tracing::info!(successor = pid, deadline = ?opts.drain_timeout, "handed over: draining; capture stays, the new agent's")
        }
        None => {
            tracing::info!(deadline = ?opts.drain_timeout, "draining: no new connections; in-flight requests may finish");
            ready.draining();
        }
    }
    if signal.drain(opts.drain_timeout).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(deadline = ?opts.drain_timeout, "connections still open after the drain deadline are closed");
    }
    if let (Some(c), None) = (&capture, successor) {
        c.remove();
    }
    tasks.abort_all();
    Ok(())
}

/// The workload certificate (from files, or from the control plane with
/// a join token or a pod's token), renewed in the background unless from
/// files.
async fn certificate(
    source: &Source,
    mark: Option<u32>,
) -> Result<(Loaded, Arc<MeshTls>), StartError> {
    let loaded = identity::load(source, mark).await?;
    tracing::info!(identity = %loaded.id, "workload certificate loaded");
    let cert = CertCell::new(&loaded.identity)?;
    let tls = Arc::new(MeshTls::new(cert, loaded.id.clone(), loaded.roots.clone())?);
    if source.data_dir().is_some() {
        tokio::spawn(identity::renew_forever(
            tls.clone(),
            source.clone(),
            loaded.not_after,
            loaded.control_plane.clone(),
            mark,
        ));
    }
    Ok((loaded, tls))
}

/// What the proxy's listeners share: the view of the mesh built from the
/// config file's resources (empty until the control plane pushes), this
/// workload, the connection pools and telemetry.
fn proxy_state(
    opts: &Options,
    tls: Arc<MeshTls>,
    settings: &Settings,
    resources: Vec<Resource>,
    mark: Option<u32>,
) -> Result<Arc<Proxy>, StartError> {
    let connect = ConnectOpts {
        timeout: opts.connect_timeout,
        mark,
        keepalive: None,
    };
    let max_response_headers = opts.max_response_headers_kb * 1024;
    Ok(Arc::new(Proxy {
        // Peer agents enforced the limit on what their applications
        // answered; allowance for what they add.
        pool: pool::Pool::new(
            pool::Peers(tls.clone()),
            max_response_headers.saturating_add(proxy::PEER_HEADER_ALLOWANCE),
        ),
        app: AppClient::new(opts.app_host, connect.clone(), max_response_headers),
        downstream: proxy::Downstream {
            max_header_bytes: opts.max_request_headers_kb * 1024,
            timeouts: proxy::downstream::Timeouts {
                request_headers: Some(opts.request_headers_timeout).filter(|d| !d.is_zero()),
                idle: Some(opts.downstream_idle_timeout).filter(|d| !d.is_zero()),
            },
        },
        conn_limit: listen::ConnLimit::new(opts.max_downstream_connections as usize),
        tls,
        telemetry: Arc::new(Telemetry::new(opts.access_log)),
        mesh: Arc::new(Shared::new(mesh::build(resources, settings, None))),
        opts: connect,
        peer_inbound_port: opts.peer_inbound_port,
    }))
}

/// Every socket the agent listens on, bound before anything is served so
/// that a port in use is refused at start.
struct Sockets {
    inbound: Vec<TcpListener>,
    outbound: Vec<TcpListener>,
    upstreams: Vec<(TcpListener, Listener)>,
    admin: TcpListener,
    metrics: TcpListener,
    dns: Vec<dns::Listeners>,
}

impl Sockets {
    /// Binds them, or takes those `handoff` has on the same addresses
    /// (what it has besides is closed: listeners the agent no longer has).
    async fn bind(
        opts: &Options,
        ipv6: bool,
        mut handoff: Option<&mut Received>,
    ) -> Result<Self, StartError> {
        let twin = |addr: SocketAddr, local: bool| listen::ipv6_twin(addr, local).filter(|_| ipv6);
        let mut inbound = vec![bind(opts.inbound, "inbound", handoff.as_deref_mut()).await?];
        let mut outbound = vec![bind(opts.outbound, "outbound", handoff.as_deref_mut()).await?];
        for (listeners, twin, what) in [
            (&mut inbound, twin(opts.inbound, false), "inbound, IPv6"),
            (&mut outbound, twin(opts.outbound, true), "outbound, IPv6"),
        ] {
            if let Some(addr) = twin {
                let err = |source| StartError::Bind { addr, what, source };
                let l = match handoff.as_deref_mut().and_then(|h| h.take_tcp(addr)) {
                    Some(l) => from_std(l).map_err(err)?,
                    None => listen::bind_ipv6_only(addr).map_err(err)?,
                };
                listeners.push(l);
            }
        }
        let mut upstreams = Vec::new();
        for u in &opts.upstreams {
            let kind = Listener::Upstream {
                host: Arc::from(u.host.as_str()),
                port: u.port,
            };
            let l = bind(u.listen, "upstream", handoff.as_deref_mut()).await?;
            upstreams.push((l, kind));
        }
        let mut dns = Vec::new();
        for addr in opts
            .dns
            .into_iter()
            .chain(opts.dns.and_then(|a| twin(a, true)))
        {
            let err = |source| StartError::Bind {
                addr,
                what: "DNS, UDP and TCP",
                source,
            };
            let taken = handoff
                .as_deref_mut()
                .and_then(|h| Some((h.take_udp(addr)?, h.take_tcp(addr)?)));
            let l = match taken {
                Some((udp, tcp)) => dns::Listeners::from_std(udp, tcp).map_err(err)?,
                None => dns::Listeners::bind(addr).await.map_err(err)?,
            };
            dns.push(l);
        }
        Ok(Self {
            inbound,
            outbound,
            upstreams,
            admin: bind(opts.admin, "admin", handoff.as_deref_mut()).await?,
            metrics: bind(opts.metrics, "metrics", handoff).await?,
            dns,
        })
    }

    /// A copy of every socket, for a successor.
    fn copies(&self) -> std::io::Result<Vec<OwnedFd>> {
        let tcp = self
            .inbound
            .iter()
            .chain(&self.outbound)
            .chain(self.upstreams.iter().map(|(l, _)| l))
            .chain([&self.admin, &self.metrics]);
        let mut fds = tcp
            .map(|l| l.as_fd().try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()?;
        for d in &self.dns {
            fds.extend(d.sockets()?);
        }
        Ok(fds)
    }
}

/// A TCP listener on `addr`: the one `handoff` has there, or a new one.
async fn bind(
    addr: SocketAddr,
    what: &'static str,
    handoff: Option<&mut Received>,
) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, what, source };
    match handoff.and_then(|h| h.take_tcp(addr)) {
        Some(l) => from_std(l).map_err(err),
        None => listen::bind(addr).await.map_err(err),
    }
}

fn from_std(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// `--install-capture`: installs the rules `--capture` names for the
/// agent the other flags describe, as the agent itself would at start,
/// and returns; the rules stay. For an injected pod's init container, so
/// that capture is in place before the application starts, whenever the
/// agent does.
pub fn install_capture_only(opts: &Options) -> Result<(), StartError> {
    if opts.capture.backend().is_none() {
        return Err(StartError::NothingToInstall);
    }
    // The agent decides alike in the same network namespace.
    install_capture(opts, listen::host_has_ipv6())?;
    Ok(())
}

/// The capture rules, if the agent captures.
fn install_capture(opts: &Options, ipv6: bool) -> Result<Option<capture::Capture>, StartError> {
    let Some(backend) = opts.capture.backend() else {
        return Ok(None);
    };
    let c = capture::Capture {
        backend,
        inbound_port: opts.inbound.port(),
        outbound_port: opts.outbound.port(),
        dns_port: opts.dns.map(|a| a.port()),
        exclude_inbound: opts.capture_exclude_ports(),
        ipv6,
    };
    c.install()?;
    tracing::info!(backend = ?c.backend, "capture installed");
    Ok(Some(c))
}

/// Serves every listener, each a task of `tasks`. The proxy's and the
/// admin listeners stop accepting when `drain` fires; the DNS proxy
/// answers until the agent exits, since the application may still
/// resolve names while it finishes.
fn serve(
    opts: &Options,
    sockets: Sockets,
    px: &Arc<Proxy>,
    admin: &Arc<admin::Admin>,
    drain: drain::Watch,
) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for l in sockets.inbound {
        tasks.spawn(proxy::inbound::serve(l, px.clone(), drain.clone()));
    }
    for l in sockets.outbound {
        tasks.spawn(proxy::outbound::serve(
            l,
            Listener::Capture,
            px.clone(),
            drain.clone(),
        ));
    }
    for (l, kind) in sockets.upstreams {
        tasks.spawn(proxy::outbound::serve(l, kind, px.clone(), drain.clone()));
    }
    tasks.spawn(admin::serve(
        sockets.admin,
        admin.clone(),
        admin::Endpoints::Admin,
        drain.clone(),
    ));
    tasks.spawn(admin::serve(
        sockets.metrics,
        admin.clone(),
        admin::Endpoints::Metrics,
        drain,
    ));
    if !sockets.dns.is_empty() {
        let forwarder = opts.dns_forwarder(px.opts.mark);
        tracing::info!(listen = ?opts.dns, upstreams = ?forwarder.upstreams(), "DNS proxy");
        let mesh = px.mesh.clone();
        let names: dns::Names = Arc::new(move || mesh.load().dns().clone());
        let server = Arc::new(dns::Server::new(names, forwarder));
        for l in sockets.dns {
            tasks.spawn(dns::serve(l, server.clone()));
        }
    }
    tasks
}

/// Where the config comes from: the file, watched for changes (ready at
/// once), or the control plane's stream (ready once the first response
/// is applied, or at once from the cache it left), with the
/// WorkloadGroup's readiness probe. What it returns tells readiness and
/// returns once ready.
fn config_source(
    opts: &Options,
    px: &Arc<Proxy>,
    settings: Settings,
    control_plane: Vec<String>,
    group: Option<String>,
    ready: Arc<admin::Readiness>,
    tasks: &mut JoinSet<()>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    if let Some(path) = opts.config_file.clone() {
        tasks.spawn(watch_config(path, settings, px.mesh.clone()));
        return Box::pin(async move { ready.serving("serving the config file") });
    }
    let node = opts.proxy_node(&settings, &opts.workload(&settings), group.as_deref());
    let cache = opts.data_dir.join(discovery::CACHE_FILE);
    let cached = discovery::load_cache(&cache);
    let (applied, first) = tokio::sync::watch::channel(0u64);
    let client = discovery::Client {
        mesh: px.mesh.clone(),
        tls: px.tls.clone(),
        mark: px.opts.mark,
        settings: settings.clone(),
        given: opts.given(),
        node,
        addresses: control_plane,
        cache,
        held: Arc::new(Shared::new(cached.clone().unwrap_or_default())),
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
    Box::pin(async move { ready.once_config_served(cached.is_some(), first).await })
}

/// Reloads the config file when it changes; a file that does not parse or
/// validate is refused with its errors and the previous config stays.
async fn watch_config(path: PathBuf, settings: Settings, view: Arc<Shared<mesh::Mesh>>) {
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
                let prev = view.load();
                view.store(mesh::build(resources, &settings, Some(&prev)));
                tracing::info!(file = %path.display(), "config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "config update refused; the previous config stays in force")
            }
        }
    }
}
