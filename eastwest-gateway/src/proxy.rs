//! One connection through the gateway, in named steps: accept (under
//! `--max-connections`) → peek at the ClientHello without consuming it →
//! route by its SNI ([`crate::route`]) → connect to the endpoint's agent
//! (connect timeout) → splice both ways untouched, the TLS handshake
//! included (idle timeout), reported as Istio's TCP metrics. A connection
//! refused at any step is closed, logged and counted by reason.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use trellis_dataplane::mesh::Mesh;
use trellis_dataplane::telemetry::labels::{ConnLabels, Reporter, Workload};
use trellis_dataplane::telemetry::{self, TcpLog, Telemetry};
use trellis_dataplane::Shared;
use trellis_transport::client_hello;
use trellis_transport::connect::{self, ConnectOpts};
use trellis_transport::listen::{self, ConnLimit};
use trellis_transport::{drain, splice};

use crate::route::{self, Refusal, Target};

/// What every connection through the gateway shares.
pub struct Gateway {
    /// The view of the mesh, from the control plane: this network's
    /// endpoints.
    pub mesh: Arc<Shared<Mesh>>,
    pub telemetry: Arc<Telemetry>,
    /// The network this gateway serves.
    pub network: String,
    /// The gateway as its metrics name it (the source of what it carries).
    pub me: Arc<Workload>,
    /// How connections to endpoints are opened (their connect timeout).
    pub connect: ConnectOpts,
    /// How long a spliced connection may stay idle.
    pub timeouts: splice::Timeouts,
    /// How long a client has to send its whole ClientHello.
    pub hello_timeout: Duration,
    /// Connections open at once, at most.
    pub limit: Arc<ConnLimit>,
    /// Turns for ties between equally loaded endpoints.
    pub turn: AtomicUsize,
}

/// Serves `listener` until a drain starts; each connection holds a watch
/// on the drain, so a drain waits for the connections it carries.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, drain: drain::Watch) {
    // The limit is the gateway's own, so that what it refuses is counted
    // with the other refusals.
    listen::serve(
        listener,
        "eastwest",
        ConnLimit::unlimited(),
        drain,
        move |tcp, remote, held, _slot| {
            let gw = gw.clone();
            async move {
                gw.handle(tcp, remote).await;
                drop(held);
                Ok::<(), std::convert::Infallible>(())
            }
        },
    )
    .await
}

impl Gateway {
    async fn handle(&self, tcp: TcpStream, remote: SocketAddr) {
        // The bytes relayed are TLS records the agents already sized: send
        // each at once (the upstream side is set so by `connect::tcp`), or
        // Nagle holds a small record back until the last one is acked.
        let _ = tcp.set_nodelay(true);
        let Some(_slot) = self.limit.acquire() else {
            return self.refuse(Refusal::Overloaded, remote, None);
        };
        let hello = match client_hello::peek(&tcp, self.hello_timeout).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "the connection failed before its ClientHello");
                return self.refuse(Refusal::NoSni, remote, None);
            }
        };
        let sni = match route::sni(&hello) {
            Ok(s) => s,
            Err(r) => return self.refuse(r, remote, None),
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let target = match route::route(&self.mesh.load(), &self.network, sni, turn) {
            Ok(t) => t,
            Err(r) => return self.refuse(r, remote, Some(sni)),
        };
        self.forward(tcp, remote, target).await;
    }

    /// Connects to the target and splices the connection to it.
    async fn forward(&self, tcp: TcpStream, remote: SocketAddr, target: Target) {
        let endpoint = &target.cluster.endpoints[target.endpoint];
        let upstream = match connect::tcp(endpoint.addr, &self.connect).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(%remote, upstream = %endpoint.addr, error = %e, "cannot reach the endpoint");
                return self.refuse(Refusal::ConnectFailed, remote, None);
            }
        };
        let conn = ConnLabels {
            reporter: Reporter::Source,
            source: self.me.clone(),
            destination: endpoint.workload.clone(),
            destination_service: target.host.clone(),
            // What passes is the agents' mTLS, end to end.
            mtls: true,
        };
        let mut log = TcpLog::start(conn, remote, target.cluster.name.to_string());
        log.upstream = Some(endpoint.addr);
        endpoint.state.active.fetch_add(1, Ordering::Relaxed);
        telemetry::splice(&self.telemetry, log, tcp, upstream, self.timeouts).await;
        endpoint.state.active.fetch_sub(1, Ordering::Relaxed);
    }

    fn refuse(&self, why: Refusal, remote: SocketAddr, sni: Option<&str>) {
        self.telemetry.metrics.refused(why.reason());
        tracing::info!(%remote, reason = why.reason(), sni = sni.unwrap_or("-"), "connection refused");
    }
}
