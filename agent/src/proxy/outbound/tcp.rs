//! Opaque TCP to a service: pick an endpoint, open mTLS to its agent (ALPN
//! `trellis-tcp`, the port in the SNI), and splice. Connections to addresses
//! the mesh does not know pass through unchanged (Istio's `ALLOW_ANY`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use trellis_dataplane::mesh::cluster::Cluster;
use trellis_dataplane::mesh::OutboundPolicy;
use trellis_dataplane::telemetry::{self, Flag, TcpLog};
use trellis_dataplane::tls::ALPN_TCP;
use trellis_transport::connect::{self, ConnectError};
use trellis_transport::splice::Timeouts;

use super::{BLACKHOLE, PASSTHROUGH};
use crate::proxy::{refuse, ConnError, Proxy};

/// Tries at most this many endpoints before giving up on a connection.
const CONNECT_TRIES: usize = 2;

/// Carries `tcp` (from `remote`) to the service `host:port`.
pub async fn forward<I>(
    px: &Arc<Proxy>,
    tcp: I,
    remote: SocketAddr,
    host: &str,
    port: u16,
) -> Result<(), ConnError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mesh = px.mesh.load();
    let subset = mesh.tcp_subset(host, port, fastrand::u32(..100));
    let cluster = mesh.cluster(host, port, &subset);
    let mut log = TcpLog::start(
        super::source_labels(&mesh, Arc::from(host)),
        remote,
        format!("outbound|{port}|{subset}|{host}"),
    );
    let Some(cluster) = cluster else {
        return Err(refuse(&px.telemetry, log, Flag::NoHealthyUpstream));
    };
    let mut exclude = None;
    for _ in 0..CONNECT_TRIES {
        let Some(i) = cluster.pick(Instant::now(), None, exclude) else {
            return Err(refuse(&px.telemetry, log, Flag::NoHealthyUpstream));
        };
        let ep = &cluster.endpoints[i];
        log.upstream = Some(ep.addr);
        log.conn.destination = ep.workload.clone();
        log.conn.mtls = ep.identity.is_some();
        match open(px, &cluster, i).await {
            Ok(Upstream::Tls(up)) => {
                cluster.record(i, 200, Instant::now());
                telemetry::splice(&px.telemetry, log, tcp, up, cluster.limits.tcp).await;
                return Ok(());
            }
            Ok(Upstream::Plain(up)) => {
                cluster.record(i, 200, Instant::now());
                telemetry::splice(&px.telemetry, log, tcp, up, cluster.limits.tcp).await;
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "TCP connect to endpoint failed");
                cluster.record(i, 0, Instant::now());
                exclude = Some(i);
            }
        }
    }
    Err(refuse(&px.telemetry, log, Flag::UpstreamConnectFailure))
}

enum Upstream {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

async fn open(px: &Proxy, cluster: &Cluster, i: usize) -> Result<Upstream, ConnectError> {
    let ep = &cluster.endpoints[i];
    let opts = cluster.limits.connect_opts(&px.opts);
    match &ep.peer {
        Some(peer) => px
            .tls
            .connect(peer.addr, &peer.sni, &peer.identity, ALPN_TCP, &opts)
            .await
            .map(|s| Upstream::Tls(Box::new(s))),
        None => connect::tcp(ep.addr, &opts).await.map(Upstream::Plain),
    }
}

/// A captured connection to an address outside the mesh: straight through
/// (Istio's PassthroughCluster), unless the outbound traffic policy is
/// REGISTRY_ONLY (then closed: its BlackHoleCluster).
pub async fn passthrough(
    px: &Arc<Proxy>,
    tcp: TcpStream,
    remote: SocketAddr,
    orig: SocketAddr,
) -> Result<(), ConnError> {
    let mesh = px.mesh.load();
    let mut log = TcpLog::start(
        super::source_labels(&mesh, Arc::from(orig.ip().to_string())),
        remote,
        PASSTHROUGH.into(),
    );
    if mesh.outbound_policy() == OutboundPolicy::RegistryOnly {
        log.upstream_cluster = BLACKHOLE.into();
        return Err(refuse(&px.telemetry, log, Flag::NoHealthyUpstream));
    }
    log.upstream = Some(orig);
    match connect::tcp(orig, &px.opts).await {
        Ok(up) => {
            // Envoy's PassthroughCluster: Istio's default timeouts.
            telemetry::splice(&px.telemetry, log, tcp, up, Timeouts::default()).await;
            Ok(())
        }
        Err(_) => Err(refuse(&px.telemetry, log, Flag::UpstreamConnectFailure)),
    }
}
