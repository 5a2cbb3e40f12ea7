//! `trellis-bench dns`: DNS over UDP through the agent's DNS proxy against
//! dnsmasq doing the same jobs, side by side in one run on loopback.
//!
//! The test bed, started once: a one-node control plane (it gives the
//! agent its certificate); the agent on 127.0.0.6, its DNS proxy on port
//! 15053, with `--names` mesh services that have addresses; dnsmasq on
//! 127.0.0.7:15053 with the same names in a hosts file, forwarding the
//! rest with its cache off (`--cache-size=0`) so that it forwards every
//! query as the agent does; and the upstream both forward to, a second
//! dnsmasq on 127.0.0.8:15053 that answers every name under `fwd.bench`
//! from its configuration. Then two sets of phases, each system loaded in
//! turn while the other idles: (a) mesh names, answered locally, and (b)
//! names under `fwd.bench`, forwarded; each at the fixed `--rates` and at
//! maximum throughput, driven by [`dnsperf`]. [`report`] prints the
//! tables.
mod dnsperf;
mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use hickory_proto::rr::RecordType;
use trellis_agent::dns::testing::{addresses, query};
use trellis_agent::dns::Transport;
use trellis_e2e::{wait_for, Cluster, Proc};

use self::dnsperf::Load;
use self::report::{Measured, PhaseResult, Setup};
use crate::agent;
use crate::flags::{AgentLog, Build, Phases};
use crate::machine::CpuTimes;
use crate::net::{check_free, wait_http_ok};
use crate::pace::Pace;
use crate::process::{status_kib, tail, Usage};

const AGENT_IP: &str = "127.0.0.6";
const DNSMASQ_IP: &str = "127.0.0.7";
const UPSTREAM_IP: &str = "127.0.0.8";
/// Every DNS server of the bed listens on this port of its own address.
const PORT: u16 = 15053;
/// The forwarded names are under it; the upstream answers them all with
/// [`FORWARDED_ANSWER`].
const FORWARDED_DOMAIN: &str = "fwd.bench";
const FORWARDED_ANSWER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// How long a server may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time between two loads.
const BETWEEN_LOADS: Duration = Duration::from_secs(1);
/// The binaries of the test bed.
const PACKAGES: [&str; 3] = ["trellis-controlplane", "trellis", "trellis-agent"];

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    phases: Phases,
    /// Fixed rates to measure latency at, queries per second.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    rates: Vec<u32>,
    /// Queries outstanding at most (dnsperf -q), and always at maximum
    /// throughput.
    #[arg(long, default_value_t = 100)]
    outstanding: usize,
    /// Mesh names (services), and as many forwarded names, queried in turn.
    #[arg(long, default_value_t = 100)]
    names: usize,
    /// The dnsmasq binary (Debian: apt-get install dnsmasq-base).
    #[arg(long, default_value = "dnsmasq")]
    dnsmasq: PathBuf,
    /// The dnsperf binary (Debian: apt-get install dnsperf).
    #[arg(long, default_value = "dnsperf")]
    dnsperf: PathBuf,
    #[command(flatten)]
    agent: AgentLog,
    #[command(flatten)]
    build: Build,
}

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        self.phases.validate()?;
        if self.rates.contains(&0) {
            bail!("--rates: each must be at least 1 query per second");
        }
        if self.outstanding == 0 {
            bail!("--outstanding: must be at least 1");
        }
        if !(1..=60_000).contains(&self.names) {
            bail!("--names: 1 to 60000");
        }
        Ok(())
    }
}

/// Which names a phase asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// The mesh's, answered by the server itself.
    Mesh,
    /// Others, forwarded to the upstream.
    Forwarded,
}

/// What is compared, in the report's column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Trellis,
    Dnsmasq,
}

const SYSTEMS: [System; 2] = [System::Trellis, System::Dnsmasq];

/// Mesh name `i` and its address (from 240.10.0.1 on).
fn mesh_name(i: usize) -> (String, Ipv4Addr) {
    let n = u32::try_from(i + 1).expect("at most 60000 names");
    let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(240, 10, 0, 0)) + n);
    (format!("svc-{i}.default.svc.cluster.local"), addr)
}

fn forwarded_name(i: usize) -> String {
    format!("name-{i}.{FORWARDED_DOMAIN}")
}

/// The agent's config: a ServiceEntry with an address per mesh name.
fn mesh_yaml(names: usize) -> String {
    (0..names)
        .map(|i| {
            let (host, addr) = mesh_name(i);
            format!(
                "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                 metadata: {{name: svc-{i}, namespace: default}}\n\
                 spec: {{hosts: [{host}], addresses: [{addr}], resolution: STATIC, ports: [{{number: 80, name: http}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// dnsmasq's hosts file with the same names.
fn hosts_file(names: usize) -> String {
    (0..names)
        .map(|i| {
            let (host, addr) = mesh_name(i);
            format!("{addr} {host}\n")
        })
        .collect()
}

/// dnsperf's input: `NAME A` lines.
fn query_file(names: impl Iterator<Item = String>) -> String {
    names.map(|n| format!("{n} A\n")).collect()
}

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), PORT)
}

/// Every process of the run. Field order is drop order: the DNS servers,
/// then the control plane whose directory holds the files and logs.
struct Bed {
    agent: Proc,
    dnsmasq: Proc,
    upstream: Proc,
    /// Held for its directory, which has the bed's files and logs.
    _cp: Cluster,
    /// dnsperf's input for [`Names::Mesh`] and [`Names::Forwarded`].
    queries: [PathBuf; 2],
}

impl Bed {
    async fn start(args: &Args) -> anyhow::Result<Self> {
        let ours: Vec<SocketAddr> = [AGENT_IP, DNSMASQ_IP, UPSTREAM_IP]
            .iter()
            .map(|ip| addr(ip))
            .chain([15000, 15001, 15006, 15020].map(|p| SocketAddr::new(addr(AGENT_IP).ip(), p)))
            .collect();
        check_free(&ours)?;
        eprintln!("control plane: starting one node ...");
        let cp = Cluster::init(&[]).await?;
        let dir = cp.root.path().to_path_buf();
        let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            Ok(p)
        };
        let queries = [
            write(
                "mesh-queries.txt",
                query_file((0..args.names).map(|i| mesh_name(i).0)),
            )?,
            write(
                "forwarded-queries.txt",
                query_file((0..args.names).map(forwarded_name)),
            )?,
        ];
        let hosts = write("hosts", hosts_file(args.names))?;
        let config = write("mesh.yaml", mesh_yaml(args.names))?;

        eprintln!("upstream (dnsmasq): starting ...");
        let answer = format!("--address=/{FORWARDED_DOMAIN}/{FORWARDED_ANSWER}");
        let mut upstream = dnsmasq(&args.dnsmasq, &dir, "upstream", UPSTREAM_IP, &[&answer])?;
        wait_answers(
            addr(UPSTREAM_IP),
            &forwarded_name(0),
            FORWARDED_ANSWER,
            &mut upstream,
        )
        .await?;

        eprintln!("dnsmasq: starting ...");
        let hosts = format!("--addn-hosts={}", hosts.display());
        let server = format!("--server={UPSTREAM_IP}#{PORT}");
        let mut dm = dnsmasq(
            &args.dnsmasq,
            &dir,
            "dnsmasq",
            DNSMASQ_IP,
            &[&hosts, &server, "--cache-size=0"],
        )?;
        let (name, ip) = mesh_name(0);
        wait_answers(addr(DNSMASQ_IP), &name, ip, &mut dm).await?;

        eprintln!("Trellis: starting the agent ...");
        let dns_args = [
            "--dns".to_string(),
            addr(AGENT_IP).to_string(),
            "--dns-upstream".into(),
            addr(UPSTREAM_IP).to_string(),
        ];
        let mut agent = agent::spawn(
            &cp,
            &dir,
            Some(&config),
            &args.agent.agent_log,
            "dns",
            AGENT_IP,
            &dns_args,
        )?;
        let admin = SocketAddr::new(addr(AGENT_IP).ip(), 15000);
        wait_http_ok(admin, "/ready", &mut agent).await?;
        Ok(Self {
            agent,
            dnsmasq: dm,
            upstream,
            _cp: cp,
            queries,
        })
    }

    fn proc(&self, s: System) -> &Proc {
        match s {
            System::Trellis => &self.agent,
            System::Dnsmasq => &self.dnsmasq,
        }
    }

    fn pid(&self, s: System) -> anyhow::Result<u32> {
        self.proc(s).pid().context("a DNS server was killed")
    }

    /// Fails unless both systems answer a mesh name with its address and a
    /// forwarded name with the upstream's, over UDP and TCP.
    async fn check_answers(&self) -> anyhow::Result<()> {
        let (mesh, ip) = mesh_name(0);
        for s in SYSTEMS {
            let server = addr(server_ip(s));
            for transport in [Transport::Udp, Transport::Tcp] {
                for (name, want) in [(mesh.as_str(), ip), (&forwarded_name(0), FORWARDED_ANSWER)] {
                    let r = query(server, name, RecordType::A, transport)
                        .await
                        .with_context(|| {
                            format!("{name} from {} over {transport:?}", name_of(s))
                        })?;
                    if addresses(&r) != [IpAddr::V4(want)] {
                        bail!(
                            "{} answered {name} over {transport:?} with {:?}, expected {want}\n{}",
                            name_of(s),
                            addresses(&r),
                            tail(&self.proc(s).output(), 30)
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        self.agent.check_running()?;
        self.dnsmasq.check_running()?;
        self.upstream.check_running()
    }
}

fn server_ip(s: System) -> &'static str {
    match s {
        System::Trellis => AGENT_IP,
        System::Dnsmasq => DNSMASQ_IP,
    }
}

fn name_of(s: System) -> &'static str {
    match s {
        System::Trellis => "Trellis",
        System::Dnsmasq => "dnsmasq",
    }
}

/// dnsmasq in the foreground on `ip`:15053 with `args`, no other
/// configuration, no hosts file or resolv.conf of the machine's.
fn dnsmasq(bin: &Path, dir: &Path, name: &str, ip: &str, args: &[&str]) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-hosts",
        "--no-resolv",
        "--bind-interfaces",
        "--pid-file=",
        "--log-facility=-",
        // The files are in a directory only root may enter.
        "--user=root",
    ])
    .arg(format!("--listen-address={ip}"))
    .arg(format!("--port={PORT}"))
    .args(args);
    Proc::spawn(name, &mut cmd, &dir.join(format!("{name}.log")))
}

/// Waits until `server` answers `name` with `want`, failing early if `p`
/// exits.
async fn wait_answers(
    server: SocketAddr,
    name: &str,
    want: Ipv4Addr,
    p: &mut Proc,
) -> anyhow::Result<()> {
    let what = format!("{server} to answer {name}");
    let r = wait_for(START_TIMEOUT, &what, || {
        let alive = p.check_running();
        async move {
            if let Err(e) = alive {
                return Some(Err(e));
            }
            let r = query(server, name, RecordType::A, Transport::Udp)
                .await
                .ok()?;
            (addresses(&r) == [IpAddr::V4(want)]).then_some(Ok(()))
        }
    })
    .await;
    r.and_then(|r| r)
        .with_context(|| format!("log:\n{}", tail(&p.output(), 30)))
}

/// `dnsmasq --version`, e.g. `2.90`.
fn dnsmasq_version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "running {} --version; is dnsmasq installed (apt-get install dnsmasq-base)?",
                bin.display()
            )
        })?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(str::to_string)
        .context("no version in dnsmasq --version")
}

/// One phase: a warm-up run of dnsperf, then the measured one, over which
/// the server's CPU time and the machine's are read.
async fn phase(args: &Args, load: &Load, pid: u32) -> anyhow::Result<PhaseResult> {
    if args.phases.warmup_seconds > 0 {
        let warmup = Load {
            duration: args.phases.warmup(),
            ..load.clone()
        };
        dnsperf::run(&args.dnsperf, &warmup).await?;
    }
    let cpu_before = Usage::of(pid)?;
    let machine_before = CpuTimes::now()?;
    let perf = dnsperf::run(&args.dnsperf, load).await?;
    Ok(PhaseResult {
        cpu: Usage::of(pid)?.since(cpu_before).cpu,
        machine: CpuTimes::now()?.share_since(machine_before),
        perf,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    args.build.binaries(&PACKAGES)?;
    let versions = [agent::version()?, dnsmasq_version(&args.dnsmasq)?];
    let dnsperf_version = dnsperf::version(&args.dnsperf)?;

    let mut bed = Bed::start(&args).await?;
    bed.check_answers().await?;
    let mut measured: Vec<Measured> = SYSTEMS
        .iter()
        .zip(versions)
        .map(|(&s, version)| {
            Ok(Measured {
                name: name_of(s),
                version,
                idle_rss_kib: status_kib(bed.pid(s)?, "VmRSS")?,
                ..Default::default()
            })
        })
        .collect::<anyhow::Result<_>>()?;

    let paces = Pace::all(&args.rates);
    for (names, queries) in [Names::Mesh, Names::Forwarded]
        .into_iter()
        .zip(bed.queries.clone())
    {
        for &pace in &paces {
            for (i, &s) in SYSTEMS.iter().enumerate() {
                eprintln!(
                    "{}, {}, {}: {} s + {} s ...",
                    report::names_title(names),
                    report::pace_name(pace),
                    name_of(s),
                    args.phases.warmup_seconds,
                    args.phases.seconds
                );
                let load = Load {
                    server: addr(server_ip(s)),
                    queries: queries.clone(),
                    duration: args.phases.measure(),
                    rate: match pace {
                        Pace::Rate(r) => Some(r),
                        Pace::Max => None,
                    },
                    outstanding: args.outstanding,
                };
                let r = phase(&args, &load, bed.pid(s)?).await?;
                bed.check_running()?;
                measured[i].runs_mut(names).push(r);
                tokio::time::sleep(BETWEEN_LOADS).await;
            }
        }
    }
    for (m, &s) in measured.iter_mut().zip(&SYSTEMS) {
        m.peak_rss_kib = status_kib(bed.pid(s)?, "VmHWM")?;
    }
    let setup = Setup {
        paces,
        names: args.names,
        outstanding: args.outstanding,
        warmup: args.phases.warmup(),
        measure: args.phases.measure(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        dnsperf: dnsperf_version,
    };
    println!("{}", report::render(&setup, &measured));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_and_dnsmasq_get_the_same_names_and_addresses() {
        assert_eq!(
            mesh_name(0),
            (
                "svc-0.default.svc.cluster.local".into(),
                Ipv4Addr::new(240, 10, 0, 1)
            )
        );
        assert_eq!(mesh_name(299).1, Ipv4Addr::new(240, 10, 1, 44));
        assert_eq!(hosts_file(2), "240.10.0.1 svc-0.default.svc.cluster.local\n240.10.0.2 svc-1.default.svc.cluster.local\n");
        let docs = trellis_api::config::parse_documents(&mesh_yaml(2)).unwrap();
        assert_eq!(docs.len(), 2);
        let yaml: serde_json::Value =
            trellis_api::yaml::from_str(mesh_yaml(2).split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            yaml["spec"]["hosts"][0].as_str(),
            Some("svc-1.default.svc.cluster.local")
        );
        assert_eq!(yaml["spec"]["addresses"][0].as_str(), Some("240.10.0.2"));
        assert_eq!(
            query_file((0..2).map(forwarded_name)),
            "name-0.fwd.bench A\nname-1.fwd.bench A\n"
        );
    }
}
