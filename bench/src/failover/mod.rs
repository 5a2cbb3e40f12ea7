//! `trellis-bench failover`: how long traffic takes to move wholly to the
//! other cluster when every endpoint of the client's own cluster dies.
//!
//! The bed ([`crate::multinet`]): a one-node control plane; the service
//! with `--local` endpoints in cluster-1 (network `net-a`, the client's,
//! locality `region-1/zone-1`) and `--remote` in cluster-2 (`net-b`,
//! `region-2/zone-2`, behind `net-b`'s `trellis-eastwest`), each a server
//! agent in front of its cluster's echo server, which names its cluster as
//! its version; a DestinationRule with outlier detection and locality
//! load balancing (so cluster-2 is a lower priority for the client), and,
//! with `--no-retries`, a VirtualService that turns the agent's default
//! retries off; the client agent on `net-a` in `region-1/zone-1`.
//!
//! The client sends `GET /` at `--rate` through its agent the whole run
//! ([`load`]). A trial: once every request has been answered by cluster-1
//! for a second, every cluster-1 server agent is killed (SIGKILL); when
//! every request has been answered by cluster-2 for a second, the
//! requests in between give the trial's figures ([`report::failover`]);
//! then the cluster-1 agents are started again, and the time until every
//! request goes back to them is the recovery. Unless `--warm`, cluster-2's
//! agents are restarted before each trial, so that each failover opens
//! its connections through the gateway anew, as to a cluster the client
//! was not talking to.
mod load;
mod report;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use trellis_e2e::loopback::Block;
use trellis_e2e::{wait_for, Cluster, Proc};

use self::load::{settled, Load, Outcome, Record, REQUEST_TIMEOUT};
use self::report::{Setup, Trial};
use crate::flags::{AgentLog, Build};
use crate::multinet::{self, Endpoint, Place, HOST, NET_A, NET_B};
use crate::net::Client;
use crate::process::tail;

/// The loopback series of the bed's block: `127.63.N.0/24`.
const SERIES: u8 = 63;
/// Host numbers in the block: the client, the first endpoint of each
/// cluster (the others follow), net-b's gateway.
const CLIENT: u8 = 10;
const LOCAL: u8 = 11;
const REMOTE: u8 = 21;
const GATEWAY: u8 = 30;
/// Endpoints per cluster at most (their host numbers must not meet).
const MAX_ENDPOINTS: usize = 9;
/// How long traffic must stay on one cluster to count as settled there.
const SETTLED: Duration = Duration::from_secs(1);
/// Times traffic may seem settled on cluster-2 and then have a request
/// fail late (answered after the check) before the run fails.
const SETTLE_ATTEMPTS: usize = 5;
/// How long traffic may take to settle before the run fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    /// Trials: kills of every cluster-1 endpoint, each timed.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Requests per second through the client agent.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Endpoints in cluster-1, the client's (all killed in each trial).
    #[arg(long, default_value_t = 2)]
    local: usize,
    /// Endpoints in cluster-2, behind its gateway.
    #[arg(long, default_value_t = 2)]
    remote: usize,
    /// Keep the client agent's connections to cluster-2 (through its
    /// gateway) from one trial to the next, instead of restarting
    /// cluster-2's agents after each trial so that every failover opens
    /// them anew.
    #[arg(long)]
    warm: bool,
    /// Turn the agent's default retries off (a VirtualService with
    /// `retries: {attempts: 0}`), so that outlier detection alone moves
    /// the traffic.
    #[arg(long)]
    no_retries: bool,
    #[command(flatten)]
    agent: AgentLog,
    #[command(flatten)]
    build: Build,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        if self.trials == 0 {
            bail!("--trials: must be at least 1");
        }
        if self.rate == 0 {
            bail!("--rate: must be at least 1 request per second");
        }
        for (flag, n) in [("--local", self.local), ("--remote", self.remote)] {
            if n == 0 || n > MAX_ENDPOINTS {
                bail!("{flag}: must be 1 to {MAX_ENDPOINTS}");
            }
        }
        Ok(())
    }
}

/// Outlier detection that ejects an endpoint after 5 consecutive 5xx
/// (Istio's default) and may eject all of them, and locality load
/// balancing (on with outlier detection, as in Istio).
fn destination_rule() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc, namespace: default}}
spec:
  host: {HOST}
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {{enabled: true}}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 100
---
"
    )
}

fn no_retries() -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - route: [{{destination: {{host: {HOST}}}}}]
    retries: {{attempts: 0}}
---
"
    )
}

/// The endpoints of `place`, hosts `first..`, in front of the echo at
/// `app_port`.
fn endpoints(block: Block, place: Place, first: u8, n: usize, app_port: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint {
            name: format!("{}-{}", place.cluster, i + 1),
            ip: block.ip(first + i as u8),
            place,
            app_port,
        })
        .collect()
}

/// Every process of the run. Field order is drop order: the client and
/// the load, the gateway and the server agents, the apps, then the
/// control plane whose directory holds the logs.
struct Bed {
    load: Load,
    client: Proc,
    gateway: Proc,
    local: Vec<(Endpoint, Option<Proc>)>,
    remote: Vec<(Endpoint, Proc)>,
    _echos: [Proc; 2],
    log: String,
    client_ip: Ipv4Addr,
    cp: Cluster,
}

impl Bed {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let agents: Vec<u8> = (0..args.local as u8)
            .map(|i| LOCAL + i)
            .chain((0..args.remote as u8).map(|i| REMOTE + i))
            .collect();
        let block = Block::take(SERIES, &multinet::listeners(CLIENT, &agents, &[GATEWAY]))?;
        eprintln!("control plane: starting one node ...");
        let cp = Cluster::init(&[]).await?;
        let dir = cp.root.path().to_path_buf();
        let log = args.agent.agent_log.clone();
        let (echo_a, port_a) = multinet::spawn_echo(&dir, NET_A.cluster).await?;
        let (echo_b, port_b) = multinet::spawn_echo(&dir, NET_B.cluster).await?;
        let local = endpoints(block, NET_A, LOCAL, args.local, port_a);
        let remote = endpoints(block, NET_B, REMOTE, args.remote, port_b);
        let mut mesh = multinet::service_entry() + &destination_rule();
        if args.no_retries {
            mesh += &no_retries();
        }
        for e in local.iter().chain(&remote) {
            mesh += &e.workload_entry();
        }
        let file = dir.join("mesh.yaml");
        std::fs::write(&file, mesh)?;
        cp.cli(&["apply", "-f", &file.display().to_string()])?;

        eprintln!(
            "starting net-b's gateway, {} + {} server agents and the client agent ...",
            args.local, args.remote
        );
        let gateway = multinet::spawn_gateway(&cp, &dir, &log, block.ip(GATEWAY), "net-b").await?;
        let mut remote_agents = Vec::new();
        for e in remote {
            let p = e.spawn_agent(&cp, &dir, &log).await?;
            remote_agents.push((e, p));
        }
        let mut local_agents = Vec::new();
        for e in local {
            let p = e.spawn_agent(&cp, &dir, &log).await?;
            local_agents.push((e, Some(p)));
        }
        let client = multinet::spawn_client(&cp, &dir, &log, block.ip(CLIENT)).await?;
        let load = Load::start(multinet::client_addr(block.ip(CLIENT)), args.rate).await?;
        Ok(Self {
            load,
            client,
            gateway,
            local: local_agents,
            remote: remote_agents,
            _echos: [echo_a, echo_b],
            log,
            client_ip: block.ip(CLIENT),
            cp,
        })
    }

    /// Waits until every request since `from` for [`SETTLED`] went to
    /// `outcome`'s cluster; when that run began.
    async fn settle(&self, from: Instant, outcome: Outcome) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let records = self.load.since(from);
            if let Some(at) = settled(&records, outcome, SETTLED) {
                return Ok(at);
            }
            if Instant::now() > deadline {
                let last: Vec<_> = records.iter().rev().take(5).map(|r| r.outcome).collect();
                bail!(
                    "traffic did not settle on {outcome:?} within {SETTLE_TIMEOUT:?} (last outcomes, newest first: {last:?})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The requests from [`SETTLED`] before the kill until traffic has
    /// settled on cluster-2, every one of them answered or failed.
    async fn settled_on_remote(&self, kill: Instant) -> anyhow::Result<Vec<Record>> {
        for _ in 0..SETTLE_ATTEMPTS {
            self.settle(kill, Outcome::Remote).await?;
            // Every request scheduled by now is answered or failed after
            // the request timeout; one that failed late means traffic had
            // not settled yet after all.
            let until = Instant::now();
            tokio::time::sleep(REQUEST_TIMEOUT).await;
            let records: Vec<Record> = self
                .load
                .since(kill - SETTLED)
                .into_iter()
                .filter(|r| r.sent < until)
                .collect();
            if settled(&records, Outcome::Remote, SETTLED).is_some() {
                return Ok(records);
            }
        }
        bail!(
            "traffic did not stay on cluster-2 after {SETTLE_ATTEMPTS} tries\n{}",
            self.logs()
        )
    }

    fn logs(&self) -> String {
        format!(
            "--- client agent ---\n{}\n--- gateway ---\n{}",
            tail(&self.client.output(), 30),
            tail(&self.gateway.output(), 30)
        )
    }

    async fn trial(&mut self, from: Instant, warm: bool) -> anyhow::Result<Trial> {
        if !warm {
            // While traffic stays on cluster-1: the client agent's pooled
            // connections through the gateway break with them.
            for (e, p) in &mut self.remote {
                p.kill();
                *p = e
                    .spawn_agent(&self.cp, self.cp.root.path(), &self.log)
                    .await?;
            }
        }
        self.settle(from, Outcome::Local).await?;
        let kill = Instant::now();
        for (_, p) in &mut self.local {
            if let Some(mut p) = p.take() {
                p.kill();
            }
        }
        let records = self.settled_on_remote(kill).await?;
        let mut trial = report::failover(&records, kill)?;

        for (e, p) in &mut self.local {
            *p = Some(
                e.spawn_agent(&self.cp, self.cp.root.path(), &self.log)
                    .await?,
            );
        }
        let ready = Instant::now();
        self.settle(ready, Outcome::Local).await?;
        // One endpoint in service takes all of cluster-1's traffic: wait
        // for the other too, or the next kill finds it ejected still, and
        // it comes back (dead) in the middle of that failover.
        let admin = SocketAddr::new(self.client_ip.into(), 15000);
        let back = wait_for(
            SETTLE_TIMEOUT,
            "every endpoint back in service",
            || async move {
                let mut c = Client::new(admin);
                let (_, body) = c.get("/clusters").await.ok()?;
                let clusters = String::from_utf8_lossy(&body);
                let ejected = clusters
                    .lines()
                    .any(|l| l.contains(HOST) && l.ends_with("failed_outlier_check"));
                (!ejected).then(Instant::now)
            },
        )
        .await?;
        trial.recovery = back.saturating_duration_since(ready);
        Ok(trial)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    args.build.binaries(&multinet::PACKAGES)?;
    let mut bed = Bed::start(&args).await.context("starting the test bed")?;
    let mut trials = Vec::new();
    let mut from = Instant::now();
    for i in 1..=args.trials {
        let t = bed.trial(from, args.warm).await?;
        eprintln!(
            "trial {i} of {}: failover {}, kill -> all on cluster-2 {}, {} failed requests, recovery {}",
            args.trials,
            report::ms(t.failover),
            report::ms(t.from_kill),
            t.failed,
            report::ms(t.recovery)
        );
        trials.push(t);
        from = Instant::now();
    }
    let setup = Setup {
        rate: args.rate,
        local: args.local,
        remote: args.remote,
        retries: !args.no_retries,
        warm: args.warm,
    };
    println!("{}", report::render(&setup, &trials));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn defaults_and_bad_flags() {
        let cli = Cli::try_parse_from(["trellis-bench", "failover"]).unwrap();
        let Command::Failover(args) = cli.command else {
            panic!("not the failover suite");
        };
        assert_eq!(
            (args.trials, args.rate, args.local, args.remote),
            (20, 200, 2, 2)
        );
        assert!(!args.no_retries && !args.warm);
        assert!(args.validate().is_ok());
        for (flag, value) in [
            ("--trials", "0"),
            ("--rate", "0"),
            ("--local", "0"),
            ("--remote", "10"),
        ] {
            let cli = Cli::try_parse_from(["trellis-bench", "failover", flag, value]).unwrap();
            let Command::Failover(args) = cli.command else {
                panic!("not the failover suite");
            };
            let err = args.validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn the_mesh_puts_each_cluster_in_its_network_and_locality() {
        let block = Block::take(SERIES, &[]).unwrap();
        let mut y = multinet::service_entry() + &destination_rule() + &no_retries();
        let local = endpoints(block, NET_A, LOCAL, 2, 30001);
        let remote = endpoints(block, NET_B, REMOTE, 1, 30002);
        for e in local.iter().chain(&remote) {
            y += &e.workload_entry();
        }
        let docs: Vec<serde_json::Value> = y
            .split("\n---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| trellis_api::yaml::from_str(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 6);
        let od = &docs[1]["spec"]["trafficPolicy"]["outlierDetection"];
        assert_eq!(od["maxEjectionPercent"], 100);
        assert_eq!(docs[2]["spec"]["http"][0]["retries"]["attempts"], 0);
        let second = &docs[4]["spec"];
        assert_eq!(second["address"], block.ip(LOCAL + 1).to_string());
        assert_eq!(second["network"], "net-a");
        assert_eq!(second["locality"], "region-1/zone-1");
        assert_eq!(second["ports"]["http"], 30001);
        assert_eq!(second["serviceAccount"], "cluster-1-2");
        let far = &docs[5]["spec"];
        assert_eq!(far["network"], "net-b");
        assert_eq!(far["locality"], "region-2/zone-2");
        assert_eq!(far["address"], block.ip(REMOTE).to_string());
    }
}
