//! One connection through the gateway, in named steps: accept (under
//! `--max-connections`) → peek at the ClientHello without consuming it →
//! route by its SNI ([`crate::route`]) → connect to the endpoint's agent
//! (connect timeout), else to the next endpoint routed, up to
//! `--connect-attempts` → splice both ways untouched, the TLS handshake
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
    /// Endpoints a connection tries, each once, before it is refused.
    pub attempts: usize,
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
        let target = match route::route(&self.mesh.load(), &self.network, sni, turn, self.attempts)
        {
            Ok(t) => t,
            Err(r) => return self.refuse(r, remote, Some(sni)),
        };
        self.forward(tcp, remote, target).await;
    }

    /// Connects to the first of the target's endpoints that accepts, and
    /// splices the connection to it.
    async fn forward(&self, tcp: TcpStream, remote: SocketAddr, target: Target) {
        let mut picks = target.picks.iter().peekable();
        let (pick, upstream) = loop {
            let Some(pick) = picks.next() else {
                return self.refuse(Refusal::ConnectFailed, remote, None);
            };
            let endpoint = pick.endpoint();
            match connect::tcp(endpoint.addr, &self.connect).await {
                Ok(u) => break (pick, u),
                Err(e) => {
                    let retry = picks.peek().is_some();
                    tracing::warn!(%remote, upstream = %endpoint.addr, error = %e, retry, "cannot reach the endpoint");
                    if retry {
                        self.telemetry.metrics.connect_retry();
                    }
                }
            }
        };
        let endpoint = pick.endpoint();
        let conn = ConnLabels {
            reporter: Reporter::Source,
            source: self.me.clone(),
            destination: endpoint.workload.clone(),
            destination_service: target.host.clone(),
            // What passes is the agents' mTLS, end to end.
            mtls: true,
        };
        let mut log = TcpLog::start(conn, remote, pick.cluster.name.to_string());
        log.upstream = Some(endpoint.addr);
        endpoint.state.active.fetch_add(1, Ordering::Relaxed);
        // Both ends are plain TCP (the TLS inside is the agents'): the
        // bytes move socket to socket in the kernel.
        let spliced = splice::run_tcp(tcp, upstream, self.timeouts);
        telemetry::report_tcp(&self.telemetry, log, spliced).await;
        endpoint.state.active.fetch_sub(1, Ordering::Relaxed);
    }

    fn refuse(&self, why: Refusal, remote: SocketAddr, sni: Option<&str>) {
        self.telemetry.metrics.refused(why.reason());
        tracing::info!(%remote, reason = why.reason(), sni = sni.unwrap_or("-"), "connection refused");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::SeqCst;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trellis_transport::testing::{client_hello, counting_server};

    use super::*;
    use crate::route::tests::mesh_of;

    const SNI: &str = "outbound_.9080_._.reviews.default.svc.cluster.local";

    /// reviews, with an endpoint on net-b at each of `ips`.
    fn reviews(ips: &[&str]) -> String {
        let endpoints: String = ips
            .iter()
            .map(|ip| format!("  - {{address: {ip}, network: net-b, serviceAccount: reviews}}\n"))
            .collect();
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: reviews, namespace: default}}\nspec:\n  \
             hosts: [reviews.default.svc.cluster.local]\n  resolution: STATIC\n  \
             ports: [{{number: 9080, name: http}}]\n  endpoints:\n{endpoints}"
        )
    }

    /// A gateway serving on loopback, its endpoints' agents at `ips` on
    /// `port`; where it listens, and its drain signal (keep it).
    async fn gateway(ips: &[&str], port: u16) -> (Arc<Gateway>, SocketAddr, drain::Signal) {
        let principal = "spiffe://example.org/ns/trellis-system/sa/eastwest-gateway-net-b";
        let gw = Arc::new(Gateway {
            mesh: Arc::new(Shared::new(mesh_of(&reviews(ips), port))),
            telemetry: Arc::new(Telemetry::new(false)),
            network: "net-b".into(),
            me: Arc::new(Workload::new(
                principal,
                "trellis-system",
                None,
                &Default::default(),
            )),
            connect: ConnectOpts {
                timeout: Duration::from_secs(2),
                mark: None,
                keepalive: None,
            },
            attempts: 3,
            timeouts: splice::Timeouts {
                idle: None,
                max_duration: None,
            },
            hello_timeout: Duration::from_secs(5),
            limit: ConnLimit::new(100),
            turn: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (signal, watch) = drain::channel();
        tokio::spawn(serve(listener, gw.clone(), watch));
        (gw, addr, signal)
    }

    /// What comes back through the gateway at `addr` for a ClientHello
    /// naming reviews.
    async fn call(addr: SocketAddr) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&client_hello(SNI, &[])).await.unwrap();
        let mut back = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back));
        read.await.expect("the gateway answers or closes").ok();
        back
    }

    /// `name VALUE` of the gateway's metrics.
    fn counter(gw: &Gateway, name: &str) -> Option<u64> {
        let text = gw.telemetry.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn a_connection_refused_by_one_endpoint_goes_to_another() {
        // The agent that answers is on 127.0.0.1; on 127.0.0.2 its port
        // is closed.
        let live = counting_server(|mut s| async move {
            let mut hello = [0u8; 64];
            let _ = s.read(&mut hello).await;
            let _ = s.write_all(b"agent").await;
        })
        .await;
        let (gw, addr, _drain) = gateway(&["127.0.0.2", "127.0.0.1"], live.addr.port()).await;
        for i in 0..6 {
            assert_eq!(call(addr).await, b"agent", "connection {i}");
        }
        assert_eq!(live.accepted.load(SeqCst), 6);
        // Turns start half of them at the closed port.
        let retries = counter(&gw, "trellis_connect_retries_total").unwrap_or(0);
        assert!((1..=6).contains(&retries), "{retries} retries");
        let failed = "trellis_connections_refused_total{reason=\"connect_failed\"}";
        assert_eq!(counter(&gw, failed), None);
    }

    #[tokio::test]
    async fn a_connection_no_endpoint_accepts_is_refused_after_attempts_endpoints() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"];
        let (gw, addr, _drain) = gateway(&ips, port).await;
        assert_eq!(call(addr).await, b"");
        // Three tried, each once: two retries, one refusal.
        assert_eq!(counter(&gw, "trellis_connect_retries_total"), Some(2));
        let failed = "trellis_connections_refused_total{reason=\"connect_failed\"}";
        assert_eq!(counter(&gw, failed), Some(1));
    }
}
