//! `trellis-bench propagation`: from a workload becoming ready in network
//! `net-b` to the first successful request to it from network `net-a`,
//! over many trials, with 1,000 simulated agents streaming beside the real
//! ones.
//!
//! The bed ([`crate::multinet`]): a 3-node control plane holding, as in
//! `push`, 100 other services of 10 endpoints each; 1,000 simulated agents
//! ([`crate::push::sim`]) on the three nodes in turn, half on `net-a` and
//! half on `net-b`; `net-b`'s `trellis-eastwest`; a server agent on
//! `net-b` in front of an echo server; the client agent on `net-a` with an
//! upstream listener for the service, which has no endpoint yet.
//!
//! A trial: the client sends `GET /plain` through its agent every
//! `--probe-ms`, answered 503 (no endpoint). At t0 the server's
//! WorkloadEntry is written (`ApplyConfig` through node 1): the control
//! plane commits it and pushes it to every agent and the gateway; the
//! client agent sends the next request through the gateway to the server
//! agent. Measured from t0: the commit (the apply returns), every simulated
//! agent having the version (the push), and the first 200 (the figure held
//! to the goal). Then the entry is deleted, and the server agent is
//! restarted so that the next trial opens a new connection through the
//! gateway, as to a new workload, rather than reuse the last one.
mod report;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::StatusCode;
use tonic::transport::Channel;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::{DeleteConfigRequest, ResourceRef};
use trellis_e2e::loopback::Block;
use trellis_e2e::{wait_for, Cluster, Proc};

use self::report::Trial;
use crate::flags::{AgentLog, Build};
use crate::multinet::{self, Endpoint, NET_A, NET_B};
use crate::net::Client;
use crate::process::tail;
use crate::push::sim::Fleet;
use crate::push::{admin, apply, apply_on, fleet, services};

/// The loopback series of the bed's block: `127.62.N.0/24`.
const SERIES: u8 = 62;
/// Host numbers in the block.
const CLIENT: u8 = 10;
const SERVER: u8 = 20;
const GATEWAY: u8 = 30;
/// The server's WorkloadEntry and identity.
const SERVER_NAME: &str = "server";
/// How long a trial may take before the run fails.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Simulated agents streaming from the control plane, half on each
    /// network.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Trials (workloads made ready), each timed.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Milliseconds between two requests of the client while they fail.
    #[arg(long, default_value_t = 2)]
    probe_ms: u64,
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
        if self.probe_ms == 0 {
            bail!("--probe-ms: must be at least 1");
        }
        Ok(())
    }
}

/// Every process of the run. Field order is drop order: the real agents
/// and the gateway, the simulated agents, then the control plane whose
/// directory holds the logs.
struct Bed {
    client: Proc,
    server: Proc,
    gateway: Proc,
    _echo: Proc,
    fleet: Fleet,
    endpoint: Endpoint,
    block: Block,
    /// The agents' `TRELLIS_LOG`.
    log: String,
    /// Node 1's admin API, connected before the trials so that a trial
    /// times the write, not a TLS handshake.
    admin: AdminClient<Channel>,
    cp: Cluster,
}

impl Bed {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let listeners = multinet::listeners(CLIENT, &[SERVER], &[GATEWAY]);
        let block = Block::take(SERIES, &listeners)?;
        eprintln!("control plane: starting 3 nodes ...");
        let cp = Cluster::start(3, &[]).await?;
        let dir = cp.root.path().to_path_buf();
        let base = apply(
            &cp,
            services("default", 0, 100, 10) + &multinet::service_entry(),
        )
        .await?;
        let started = Instant::now();
        let fleet = fleet(&cp, args.agents, |i| {
            [NET_A, NET_B][i % 2].network.to_string()
        })
        .await?;
        fleet
            .wait(fleet.all(), base, started, Duration::from_secs(120))
            .await?;
        eprintln!(
            "  {} simulated agents connected and synced in {:.2} s",
            args.agents,
            started.elapsed().as_secs_f64()
        );
        let log = &args.agent.agent_log;
        let (echo, app_port) = multinet::spawn_echo(&dir, "net-b").await?;
        eprintln!("starting net-b's gateway, the server agent and the client agent ...");
        let gateway = multinet::spawn_gateway(&cp, &dir, log, block.ip(GATEWAY), "net-b").await?;
        let endpoint = Endpoint {
            name: SERVER_NAME.into(),
            ip: block.ip(SERVER),
            place: NET_B,
            app_port,
        };
        let server = endpoint.spawn_agent(&cp, &dir, log).await?;
        let client = multinet::spawn_client(&cp, &dir, log, block.ip(CLIENT)).await?;
        Ok(Self {
            client,
            server,
            gateway,
            _echo: echo,
            fleet,
            endpoint,
            block,
            log: log.clone(),
            admin: admin(&cp).await?,
            cp,
        })
    }

    fn client_ip(&self) -> Ipv4Addr {
        self.block.ip(CLIENT)
    }

    /// The end of the real agents' and the gateway's logs.
    fn logs(&self) -> String {
        format!(
            "--- client agent ---\n{}\n--- gateway ---\n{}\n--- server agent ---\n{}",
            tail(&self.client.output(), 30),
            tail(&self.gateway.output(), 30),
            tail(&self.server.output(), 30)
        )
    }

    /// Waits until the client's requests fail (no endpoint).
    async fn wait_unreachable(&self) -> anyhow::Result<()> {
        let addr = multinet::client_addr(self.client_ip());
        wait_for(
            TRIAL_TIMEOUT,
            "the client's requests to fail",
            || async move {
                let r = Client::new(addr).get("/plain").await;
                (!matches!(r, Ok((StatusCode::OK, _)))).then_some(())
            },
        )
        .await
    }

    /// One trial.
    async fn trial(&mut self, probe: Duration) -> anyhow::Result<Trial> {
        self.wait_unreachable().await?;
        let mut client = Client::connect(multinet::client_addr(self.client_ip())).await?;
        let t0 = Instant::now();
        let probing = tokio::spawn(async move {
            let mut sent = 0u32;
            loop {
                sent += 1;
                if let Ok((StatusCode::OK, _)) = client.get("/plain").await {
                    return (Instant::now(), sent);
                }
                tokio::time::sleep(probe).await;
            }
        });
        let mut probing = AbortOnDrop(probing);
        let index = apply_on(&mut self.admin, self.endpoint.workload_entry()).await?;
        let commit = t0.elapsed();
        let push = self
            .fleet
            .wait(self.fleet.all(), index, t0, TRIAL_TIMEOUT)
            .await?;
        let (ok, requests) = match tokio::time::timeout(TRIAL_TIMEOUT, &mut probing.0).await {
            Ok(r) => r.context("the client's task panicked")?,
            Err(_) => bail!(
                "no request succeeded within {TRIAL_TIMEOUT:?} of the WorkloadEntry\n{}",
                self.logs()
            ),
        };
        let trial = Trial {
            commit,
            push: push.last().copied().unwrap_or_default(),
            success: ok - t0,
            requests,
        };

        // The next trial's workload is new again: no entry, and no
        // connection through the gateway to reuse.
        let deleted = self
            .admin
            .delete_config(DeleteConfigRequest {
                resources: vec![ResourceRef {
                    kind: "WorkloadEntry".into(),
                    namespace: "default".into(),
                    name: SERVER_NAME.into(),
                }],
            })
            .await
            .context("deleting the WorkloadEntry")?
            .into_inner();
        self.fleet
            .wait(self.fleet.all(), deleted.index, t0, TRIAL_TIMEOUT)
            .await?;
        self.server.kill();
        self.server = self
            .endpoint
            .spawn_agent(&self.cp, self.cp.root.path(), &self.log)
            .await?;
        Ok(trial)
    }
}

/// Aborts the task when dropped (on an error of the trial).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    args.build.binaries(&multinet::PACKAGES)?;
    let mut bed = Bed::start(&args).await?;
    let probe = Duration::from_millis(args.probe_ms);
    let mut trials = Vec::new();
    for i in 1..=args.trials {
        let t = bed.trial(probe).await?;
        eprintln!(
            "trial {i} of {}: commit {}, push {}, first success {} ({} requests)",
            args.trials,
            report::ms(t.commit),
            report::ms(t.push),
            report::ms(t.success),
            t.requests
        );
        trials.push(t);
    }
    if let (n @ 1.., Some(last)) = bed.fleet.ended() {
        eprintln!("warning: {n} simulated agents' streams ended during the trials; last: {last}");
    }
    println!("{}", report::render(args.agents, args.probe_ms, &trials));
    Ok(())
}
