//! Starting the gateway in named steps, and stopping it.
//!
//! [`run`]: the gateway's certificate, from its token ([`certificate`]:
//! the network it serves is the one its identity names) → every socket
//! bound → the config stream from the control plane, which registers the
//! gateway at its advertised addresses and sends its network's endpoints
//! → the listeners served → SIGINT or SIGTERM → a drain: the listener
//! stops accepting, open connections get up to `--drain-timeout`.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use trellis_api::topology;
use trellis_dataplane::identity::{self, Source};
use trellis_dataplane::mesh::{self, Settings};
use trellis_dataplane::telemetry::labels::Workload;
use trellis_dataplane::telemetry::Telemetry;
use trellis_dataplane::tls::MeshTls;
use trellis_dataplane::{admin, discovery, Shared};
use trellis_identity::spiffe::GATEWAY_NAMESPACE;
use trellis_identity::verify::CertCell;
use trellis_identity::SpiffeId;
use trellis_transport::connect::ConnectOpts;
use trellis_transport::listen::{self, ConnLimit};
use trellis_transport::{drain, splice};

use crate::options::Options;
use crate::proxy::{self, Gateway};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no certificate: {0}")]
    Identity(#[from] identity::IdentityError),
    #[error("the certificate cannot be used for TLS: {0}")]
    Tls(#[from] trellis_identity::IdentityError),
    #[error(
        "the certificate names {0}, not an east-west gateway; create the token with \
         `trellis token create --kind gateway --network NET`"
    )]
    NotAGateway(SpiffeId),
    #[error(
        "no advertised address: --listen {0} is a wildcard address; say where other networks \
         reach the gateway with --advertise IP:PORT"
    )]
    NoAdvertise(SocketAddr),
    #[error("no control plane: give --token (it carries the addresses) or --control-plane ADDR")]
    NoControlPlane,
    #[error("binding {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Runs the gateway until SIGINT or SIGTERM, then drains it.
pub async fn run(opts: Options, set_log_level: admin::SetLogLevel) -> Result<(), StartError> {
    let advertise = opts.advertised();
    if advertise.is_empty() {
        return Err(StartError::NoAdvertise(opts.listen));
    }
    // Six descriptors per connection: two sockets, two pipes.
    let files = listen::raise_open_files(u64::from(opts.max_connections) * 6 + 1024);
    tracing::debug!(files, "open-files limit");
    let (loaded, tls, network) = certificate(&opts).await?;
    let control_plane = if opts.control_plane.is_empty() {
        loaded.control_plane.clone()
    } else {
        opts.control_plane.clone()
    };
    if control_plane.is_empty() {
        return Err(StartError::NoControlPlane);
    }
    let settings = Settings {
        trust_domain: loaded.id.trust_domain().to_string(),
        domain: topology::DEFAULT_DOMAIN.to_string(),
        namespace: GATEWAY_NAMESPACE.to_string(),
        labels: Default::default(),
        // Nothing is this gateway's inbound.
        addresses: Vec::new(),
        peer_inbound_port: opts.peer_inbound_port,
        cluster: opts.cluster.clone().unwrap_or_default(),
        network: network.clone(),
        locality: Default::default(),
        principal: loaded.id.to_string(),
        workload_name: Some(format!("eastwest-gateway-{network}")),
        workload_group: None,
    };
    let telemetry = Arc::new(Telemetry::new(opts.access_log));
    let view = Arc::new(Shared::new(mesh::build(Vec::new(), &settings, None)));
    let gw = Arc::new(Gateway {
        mesh: view.clone(),
        telemetry: telemetry.clone(),
        network: network.clone(),
        me: Arc::new(Workload::new(
            &settings.principal,
            GATEWAY_NAMESPACE,
            settings.workload_name.as_deref(),
            &settings.labels,
        )),
        connect: ConnectOpts {
            timeout: opts.connect_timeout,
            mark: None,
            keepalive: None,
        },
        attempts: opts.connect_attempts as usize,
        timeouts: splice::Timeouts {
            idle: Some(opts.idle_timeout).filter(|d| !d.is_zero()),
            max_duration: None,
        },
        hello_timeout: opts.hello_timeout,
        limit: ConnLimit::new(opts.max_connections as usize),
        turn: AtomicUsize::new(0),
    });
    let listener = bind(opts.listen, "east-west").await?;
    let health = bind(opts.health, "health").await?;
    let metrics = bind(opts.metrics, "metrics").await?;
    let admin_listener = bind(opts.admin, "admin").await?;
    let admin = Arc::new(admin::Admin {
        telemetry,
        mesh: view,
        tls,
        ready: AtomicBool::new(false),
        set_log_level,
    });

    let ready = Arc::new(admin::Readiness::new(admin.clone()));
    let (signal, watch) = drain::channel();
    let mut tasks = JoinSet::new();
    tasks.spawn(proxy::serve(listener, gw, watch.clone()));
    for (l, which) in [
        (health, admin::Endpoints::Metrics),
        (metrics, admin::Endpoints::Metrics),
        (admin_listener, admin::Endpoints::Admin),
    ] {
        tasks.spawn(admin::serve(l, admin.clone(), which, watch.clone()));
    }
    drop(watch);
    stream_config(
        &opts,
        settings,
        control_plane,
        &advertise,
        ready.clone(),
        &mut tasks,
    );
    tracing::info!(listen = %opts.listen, advertise = ?advertise, %network, "trellis-eastwest ready");

    drain::shutdown_signal().await;
    tracing::info!(deadline = ?opts.drain_timeout, "draining: no new connections; open ones may finish");
    ready.draining();
    if signal.drain(opts.drain_timeout).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(deadline = ?opts.drain_timeout, "connections still open after the drain deadline are closed");
    }
    tasks.abort_all();
    Ok(())
}

/// The gateway's certificate (renewed in the background), its TLS, and
/// the network its identity names.
async fn certificate(
    opts: &Options,
) -> Result<(identity::Loaded, Arc<MeshTls>, String), StartError> {
    let source = Source::Token {
        token: opts.token.clone(),
        data_dir: opts.data_dir.clone(),
    };
    let loaded = identity::load(&source, None).await?;
    let Some(network) = loaded.id.gateway_network().map(str::to_string) else {
        return Err(StartError::NotAGateway(loaded.id.clone()));
    };
    tracing::info!(identity = %loaded.id, %network, "gateway certificate loaded");
    let cert = CertCell::new(&loaded.identity)?;
    let tls = Arc::new(MeshTls::new(cert, loaded.id.clone(), loaded.roots.clone())?);
    tokio::spawn(identity::renew_forever(
        tls.clone(),
        source,
        loaded.not_after,
        loaded.control_plane.clone(),
        None,
    ));
    Ok((loaded, tls, network))
}

/// The config stream: ready once the first response is applied (or at
/// once from the cache a previous run left).
fn stream_config(
    opts: &Options,
    settings: Settings,
    control_plane: Vec<String>,
    advertise: &[SocketAddr],
    ready: Arc<admin::Readiness>,
    tasks: &mut JoinSet<()>,
) {
    let first = advertise[0].to_string().replace(['.', ':'], "-");
    let node = trellis_api::v1::ProxyNode {
        name: opts
            .name
            .clone()
            .unwrap_or_else(|| format!("eastwest-{}-{first}", settings.network)),
        namespace: GATEWAY_NAMESPACE.to_string(),
        addresses: advertise.iter().map(ToString::to_string).collect(),
        network: settings.network.clone(),
        cluster: settings.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    };
    let cache = opts.data_dir.join(discovery::CACHE_FILE);
    let cached = discovery::load_cache(&cache);
    let (applied, first_applied) = tokio::sync::watch::channel(0u64);
    let client = discovery::Client {
        mesh: ready.admin.mesh.clone(),
        tls: ready.admin.tls.clone(),
        mark: None,
        given: discovery::Given {
            domain: None,
            cluster: opts.cluster.clone(),
            network: Some(settings.network.clone()),
        },
        settings,
        node,
        addresses: control_plane,
        cache,
        held: Arc::new(Shared::new(cached.clone().unwrap_or_default())),
        applied,
    };
    if let Some(c) = &cached {
        client.install(c);
        tracing::info!(version = c.version, "serving the cached config");
    }
    // No probe (the sender is dropped): a gateway reports no workload's
    // health.
    let (_, no_health) = tokio::sync::watch::channel(None);
    tasks.spawn(client.run(no_health));
    tasks.spawn(async move {
        ready
            .once_config_served(cached.is_some(), first_applied)
            .await
    });
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    listen::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}
