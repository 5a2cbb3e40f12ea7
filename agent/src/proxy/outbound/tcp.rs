//! Opaque TCP to a service: pick an endpoint, open mTLS to its agent (ALPN
//! `trellis-tcp`, the port in the SNI), and splice. Connections to addresses
//! the mesh does not know pass through unchanged (Istio's `ALLOW_ANY`).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::super::connect::{self, ConnectError};
use super::super::flags::Flag;
use super::super::{splice, Proxy};
use crate::mesh::cluster::Cluster;
use crate::telemetry::TcpLog;
use crate::tls::ALPN_TCP;

/// Tries at most this many endpoints before giving up on a connection.
const CONNECT_TRIES: usize = 2;

/// Carries `tcp` to the service `host:port`.
pub async fn forward(
    px: &Arc<Proxy>,
    tcp: TcpStream,
    remote: SocketAddr,
    host: &str,
    port: u16,
) -> anyhow::Result<()> {
    let mesh = px.mesh.load();
    let subset = mesh.tcp_subset(host, port, fastrand::u32(..100));
    let cluster = mesh.cluster(host, port, &subset);
    let mut log = TcpLog::start(
        super::http::source_labels(px, Arc::from(host)),
        remote,
        format!("outbound|{port}|{subset}|{host}"),
    );
    let Some(cluster) = cluster else {
        return refuse(px, log, Flag::NoHealthyUpstream);
    };
    let mut exclude = None;
    for _ in 0..CONNECT_TRIES {
        let Some(i) = cluster.pick(Instant::now(), None, exclude) else {
            return refuse(px, log, Flag::NoHealthyUpstream);
        };
        let ep = &cluster.endpoints[i];
        log.upstream = Some(ep.addr);
        log.conn.destination = ep.workload.clone();
        log.conn.mtls = ep.identity.is_some();
        match open(px, &cluster, i).await {
            Ok(Upstream::Tls(up)) => {
                cluster.record(i, 200, Instant::now());
                splice::run(&px.telemetry, log, tcp, up, cluster.limits.tcp).await;
                return Ok(());
            }
            Ok(Upstream::Plain(up)) => {
                cluster.record(i, 200, Instant::now());
                splice::run(&px.telemetry, log, tcp, up, cluster.limits.tcp).await;
                return Ok(());
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = %e, "TCP connect to endpoint failed");
                cluster.record(i, 0, Instant::now());
                exclude = Some(i);
            }
        }
    }
    refuse(px, log, Flag::UpstreamConnectFailure)
}

enum Upstream {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

async fn open(px: &Proxy, cluster: &Cluster, i: usize) -> Result<Upstream, ConnectError> {
    let ep = &cluster.endpoints[i];
    let opts = px.opts.for_cluster(&cluster.limits);
    match &ep.peer {
        Some(peer) => connect::mtls(
            &px.tls,
            peer.addr,
            &peer.sni,
            &peer.identity,
            ALPN_TCP,
            &opts,
        )
        .await
        .map(|s| Upstream::Tls(Box::new(s))),
        None => connect::tcp(ep.addr, &opts).await.map(Upstream::Plain),
    }
}

fn refuse(px: &Proxy, mut log: TcpLog, flag: Flag) -> anyhow::Result<()> {
    log.flag = Some(flag);
    px.telemetry.tcp_opened(&log);
    px.telemetry.tcp_closed(&log, 0, 0);
    anyhow::bail!("{}: no connection to {}", flag, log.upstream_cluster)
}

/// A captured connection to an address outside the mesh: straight through.
pub async fn passthrough(
    px: &Arc<Proxy>,
    tcp: TcpStream,
    remote: SocketAddr,
    orig: SocketAddr,
) -> anyhow::Result<()> {
    let mut log = TcpLog::start(
        super::http::source_labels(px, Arc::from(orig.ip().to_string())),
        remote,
        "PassthroughCluster".into(),
    );
    log.upstream = Some(orig);
    match connect::tcp(orig, &px.opts).await {
        Ok(up) => {
            // Envoy's PassthroughCluster: Istio's default timeouts.
            splice::run(&px.telemetry, log, tcp, up, splice::Timeouts::default()).await;
            Ok(())
        }
        Err(_) => refuse(px, log, Flag::UpstreamConnectFailure),
    }
}
