//! The multi-network test bed pieces `propagation` and `failover` share,
//! on loopback: one service, `svc.default.svc.cluster.local` port 8080,
//! whose endpoints are server agents (each in front of a `trellis-echo`
//! on 127.0.0.1) on network `net-a` (cluster-1) or `net-b` (cluster-2,
//! behind its `trellis-eastwest`), and a client agent on `net-a` with an
//! `--upstream` listener for it.
//!
//! The networks are addresses of one loopback block, which loopback does
//! not separate: what makes a call from `net-a` cross `net-b`'s gateway is
//! the control plane's split horizon, as in `eastwest`.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use trellis_e2e::{bin, free_port, Cluster, Proc};

use crate::net::wait_http_ok;
use crate::{agent, gateway};

/// The binaries of a multi-network bed (also `eastwest`'s).
pub const PACKAGES: [&str; 5] = [
    "trellis-controlplane",
    "trellis",
    "trellis-agent",
    "trellis-echo",
    "trellis-eastwest",
];

/// The service's host and port.
pub const HOST: &str = "svc.default.svc.cluster.local";
pub const PORT: u16 = 8080;
/// The port of the client agent's upstream listener for the service.
pub const UPSTREAM_PORT: u16 = 18080;

/// Where a workload is: its network, cluster and locality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub network: &'static str,
    pub cluster: &'static str,
    pub locality: &'static str,
}

/// The client's network.
pub const NET_A: Place = Place {
    network: "net-a",
    cluster: "cluster-1",
    locality: "region-1/zone-1",
};
/// The other network, behind its gateway.
pub const NET_B: Place = Place {
    network: "net-b",
    cluster: "cluster-2",
    locality: "region-2/zone-2",
};

impl Place {
    /// The flags that put an agent there (and turn its DNS proxy off).
    fn agent_args(self) -> Vec<String> {
        [
            "--dns",
            "off",
            "--network",
            self.network,
            "--cluster",
            self.cluster,
            "--locality",
            self.locality,
        ]
        .map(String::from)
        .to_vec()
    }
}

/// The service, with no endpoint of its own: its WorkloadEntries select
/// it by `app: svc`.
pub fn service_entry() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [{HOST}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PORT}, name: http}}]
  workloadSelector: {{labels: {{app: svc}}}}
---
"
    )
}

/// One endpoint of the service: a server agent and the echo behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The WorkloadEntry's name and the agent's service account.
    pub name: String,
    pub ip: Ipv4Addr,
    pub place: Place,
    /// The echo's port on 127.0.0.1 (the WorkloadEntry's target port).
    pub app_port: u16,
}

impl Endpoint {
    /// Its WorkloadEntry.
    pub fn workload_entry(&self) -> String {
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: default}}
spec:
  address: {ip}
  network: {network}
  locality: {locality}
  ports: {{http: {port}}}
  labels: {{app: svc}}
  serviceAccount: {name}
---
",
            name = self.name,
            ip = self.ip,
            network = self.place.network,
            locality = self.place.locality,
            port = self.app_port,
        )
    }

    /// Starts its server agent (identity `default/NAME`) and waits until it
    /// is ready.
    pub async fn spawn_agent(&self, cp: &Cluster, dir: &Path, log: &str) -> anyhow::Result<Proc> {
        let ip = self.ip.to_string();
        let args = self.place.agent_args();
        let mut p = agent::spawn(cp, dir, None, log, &self.name, &ip, &args)?;
        wait_http_ok(SocketAddr::new(self.ip.into(), 15000), "/ready", &mut p).await?;
        Ok(p)
    }
}

/// A `trellis-echo` on 127.0.0.1 at a free port answering as version
/// `version`, ready; and its port.
pub async fn spawn_echo(dir: &Path, version: &str) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let mut cmd = Command::new(bin("trellis-echo"));
    cmd.args(["--http", &format!("127.0.0.1:{port}")]).args([
        "--name",
        "svc",
        "--version",
        version,
        "--threads",
        "1",
    ]);
    let name = format!("echo-{version}");
    let mut p = Proc::spawn(&name, &mut cmd, &dir.join(format!("{name}.log")))?;
    wait_http_ok(SocketAddr::from(([127, 0, 0, 1], port)), "/plain", &mut p).await?;
    Ok((p, port))
}

/// `network`'s gateway on `ip`, ready.
pub async fn spawn_gateway(
    cp: &Cluster,
    dir: &Path,
    log: &str,
    ip: Ipv4Addr,
    network: &str,
) -> anyhow::Result<Proc> {
    let token = cp.token(&["--kind", "gateway", "--network", network])?;
    let name = format!("gateway-{network}");
    let mut p = gateway::spawn(dir, &name, &token, ip, None, log)?;
    wait_http_ok(SocketAddr::new(ip.into(), 15021), "/healthz/ready", &mut p).await?;
    Ok(p)
}

/// The client agent on `ip` in [`NET_A`], with its upstream listener for
/// the service at [`client_addr`], ready.
pub async fn spawn_client(
    cp: &Cluster,
    dir: &Path,
    log: &str,
    ip: Ipv4Addr,
) -> anyhow::Result<Proc> {
    let mut args = NET_A.agent_args();
    args.extend([
        "--upstream".into(),
        format!("{ip}:{UPSTREAM_PORT}={HOST}:{PORT}"),
    ]);
    let mut p = agent::spawn(cp, dir, None, log, "client", &ip.to_string(), &args)?;
    wait_http_ok(SocketAddr::new(ip.into(), 15000), "/ready", &mut p).await?;
    Ok(p)
}

/// Where the client sends its requests: the client agent's upstream
/// listener on `ip`.
pub fn client_addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(ip.into(), UPSTREAM_PORT)
}

/// The client agent's listeners on host `client` and those of agents on
/// hosts `agents` and gateways on hosts `gateways`, for `Block::take`.
pub fn listeners(client: u8, agents: &[u8], gateways: &[u8]) -> Vec<(u8, u16)> {
    let mut l: Vec<(u8, u16)> = agent::PORTS.map(|p| (client, p)).to_vec();
    l.push((client, UPSTREAM_PORT));
    for &h in agents {
        l.extend(agent::PORTS.map(|p| (h, p)));
    }
    for &h in gateways {
        l.extend(gateway::PORTS.map(|p| (h, p)));
    }
    l
}
