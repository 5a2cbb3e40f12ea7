//! `trellis demo`: a whole mesh on loopback addresses, without root, as
//! Istio's bookinfo shows Istio, across two clusters on two networks. A
//! 3-node control plane on free ports of 127.0.0.1 (cluster-1 on
//! network-1), a second cluster's node joined with a cluster token (a
//! learner, cluster-2 on network-2), an east-west gateway per network,
//! bookinfo's config applied ([`bookinfo::mesh_files`]), each workload an
//! echo server on its own loopback address of its network's block behind
//! an agent that registers it (reviews v3 on network-2, reviews v1 and v2
//! on both networks, the rest on network-1), a client agent as the entry
//! point; then traffic, a [`report::Tally`] of who answered and what
//! crossed a gateway, with `--failover` cluster-1's reviews taken down and
//! back ([`failover`]), and light traffic until Ctrl-C.
//!
//! [`processes`] starts, waits on and stops the processes; [`bookinfo`]
//! and [`report`] are plain functions over plain data.
pub mod bookinfo;
pub mod failover;
mod http;
pub mod processes;
pub mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use bookinfo::{Split, Topology, NETWORKS, NETWORK_1, NETWORK_2, WORKLOADS};
use http::Http;
use processes::{Bins, Children, Layout};
use report::{tally, Answer, Crossing, GatewayTraffic, Tally};

/// The entry point's port unless `--port` says otherwise or it is taken.
const DEFAULT_ENTRY_PORT: u16 = 19080;
/// Where the loopback blocks `127.10.B.0/24` (network-1) and
/// `127.20.B.0/24` (network-2) are looked for, first free first.
const BLOCKS: std::ops::RangeInclusive<u8> = 10..=99;
/// How often the light traffic's summary is printed.
const WINDOW: Duration = Duration::from_secs(10);

/// `trellis demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory for the demo's config, data and logs; created if missing,
    /// must be empty, and is kept. Default: a new temporary directory,
    /// removed at exit unless --keep.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory at exit.
    #[arg(long)]
    pub keep: bool,
    /// Send the traffic, print the report and stop; exits non-zero if the
    /// mesh did not route as configured.
    #[arg(long)]
    pub once: bool,
    /// Weights of reviews v1,v2,v3 in the VirtualService (summing to 100).
    #[arg(long, default_value_t = Split::default())]
    pub split: Split,
    /// Requests sent for the report.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Requests per second after the report, until Ctrl-C.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Port of the mesh's entry point on 127.0.0.1 (default: 19080, or a
    /// free port if that is taken).
    #[arg(long)]
    pub port: Option<u16>,
    /// After the report, kill cluster-1's reviews (v1 and v2) and show
    /// their traffic failing over to cluster-2's through network-2's
    /// gateway, then restart them and show it coming back; with --once,
    /// exit non-zero if it did not.
    #[arg(long)]
    pub failover: bool,
}

/// The demo directory: the user's (kept) or a temporary one.
enum DemoDir {
    Given(PathBuf),
    Temp(tempfile::TempDir),
}

impl DemoDir {
    fn create(given: Option<&Path>) -> anyhow::Result<Self> {
        let Some(d) = given else {
            let t = tempfile::Builder::new()
                .prefix("trellis-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            return Ok(DemoDir::Temp(t));
        };
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        if std::fs::read_dir(d)?.next().is_some() {
            bail!(
                "{} is not empty: give a new or empty directory (the demo starts a fresh mesh)",
                d.display()
            );
        }
        Ok(DemoDir::Given(std::path::absolute(d)?))
    }

    fn path(&self) -> &Path {
        match self {
            DemoDir::Given(p) => p,
            DemoDir::Temp(t) => t.path(),
        }
    }
}

/// What `report.json` holds: the run's result, for scripts and tests.
#[derive(Serialize)]
struct ReportFile<'a> {
    entry: String,
    split: [u32; 3],
    /// `trellis proxy-status` once the mesh was ready: proxy → status.
    proxies: BTreeMap<String, &'static str>,
    tally: &'a Tally,
    /// reviews version → the least and most answers its weight allows.
    expected: BTreeMap<&'static str, (usize, usize)>,
    /// What each network's east-west gateway carried.
    gateways: &'a [GatewayTraffic],
    /// With `--failover`: cluster-1's reviews down and back.
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<failover::Failover>,
    problems: Vec<String>,
}

/// Runs the demo until Ctrl-C or SIGTERM (or, with `--once`, until the
/// report is printed), then stops every process it started.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.failover && failover::moving_versions(args.split).is_empty() {
        bail!(
            "--failover with --split {}: cluster-1 runs reviews v1 and v2, and the split gives \
             them no traffic to fail over; give v1 or v2 a weight",
            args.split
        );
    }
    let bins = Bins::beside_current_exe()?;
    // Before any child: a signal from now on stops the demo cleanly.
    let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let dir = DemoDir::create(args.dir.as_deref())?;
    let layout = Layout::create(dir.path())?;
    let topology = pick_topology(args.port)?;
    for f in bookinfo::mesh_files(args.split) {
        let p = layout.mesh().join(f.name);
        std::fs::write(&p, f.yaml).with_context(|| format!("writing {}", p.display()))?;
    }
    let kept = match &dir {
        DemoDir::Given(_) => "kept".to_string(),
        DemoDir::Temp(_) if args.keep => "kept: --keep".to_string(),
        DemoDir::Temp(_) => "removed at exit unless --keep".to_string(),
    };
    println!(
        "trellis demo: bookinfo on two clusters on two networks (a 3-node control plane and a \
         learner, 2 east-west gateways, {} agents), on loopback",
        WORKLOADS.len() + 1
    );
    println!("  directory  {} ({kept})", layout.root.display());
    println!("  config     {}/", layout.mesh().display());
    println!(
        "  logs       {}/ (one per process)",
        layout.logs().display()
    );
    println!();

    let mut kids = Children::new(layout.pids());
    let outcome = tokio::select! {
        r = demo(&mut kids, &bins, &layout, &topology, &args) => r.map(Some),
        _ = tokio::signal::ctrl_c() => Ok(None),
        _ = term.recv() => Ok(None),
    };
    let started = Instant::now();
    let n = kids.count();
    let killed = kids.stop(Duration::from_secs(5)).await;
    let killed = if killed > 0 {
        format!(", {killed} after SIGKILL")
    } else {
        String::new()
    };
    println!(
        "stopped {n} processes in {:.1} s{killed}",
        started.elapsed().as_secs_f64()
    );
    match dir {
        DemoDir::Temp(t) if !args.keep => {
            let p = t.path().to_path_buf();
            t.close()
                .with_context(|| format!("removing {}", p.display()))?;
            println!("removed {}", p.display());
        }
        DemoDir::Temp(t) => println!("kept {}", t.keep().display()),
        DemoDir::Given(p) => println!("kept {}", p.display()),
    }
    match outcome {
        Ok(Some(problems)) if problems.is_empty() => Ok(()),
        Ok(Some(problems)) => bail!(
            "the mesh did not route as configured: {}",
            problems.join("; ")
        ),
        Ok(None) if args.once => bail!("interrupted"),
        Ok(None) => Ok(()),
        Err(e) => Err(e.context(format!(
            "the demo failed; the logs are in {}",
            layout.logs().display()
        ))),
    }
}

/// The first loopback block whose listeners are all free, and the entry
/// point's port.
fn pick_topology(port: Option<u16>) -> anyhow::Result<Topology> {
    let entry_port = match port {
        Some(p) => {
            if !processes::all_free(&[([127, 0, 0, 1], p).into()]) {
                bail!("--port {p}: 127.0.0.1:{p} is taken");
            }
            p
        }
        None if processes::all_free(&[([127, 0, 0, 1], DEFAULT_ENTRY_PORT).into()]) => {
            DEFAULT_ENTRY_PORT
        }
        None => processes::free_ports(1)?[0],
    };
    let entry = ([127, 0, 0, 1], entry_port).into();
    BLOCKS
        .map(|block| Topology { block, entry })
        .find(|t| processes::all_free(&t.listeners()))
        .with_context(|| {
            format!(
                "no blocks 127.10.B.0/24 and 127.20.B.0/24 with B in {BLOCKS:?} have ports {} \
                 free on their addresses (is a demo running already, or something listening on \
                 0.0.0.0 at one of them?)",
                std::iter::once(bookinfo::APP_PORT)
                    .chain(bookinfo::AGENT_PORTS)
                    .chain([bookinfo::GATEWAY_PORT, bookinfo::GATEWAY_HEALTH_PORT])
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The demo proper; returns the problems the report found (none: the mesh
/// routed as configured), or None when stopped by a signal.
async fn demo(
    kids: &mut Children,
    bins: &Bins,
    layout: &Layout,
    topology: &Topology,
    args: &DemoArgs,
) -> anyhow::Result<Vec<String>> {
    let t = Instant::now();
    let (admin, addrs) = processes::start_controlplane(kids, bins, layout).await?;
    println!(
        "control plane  3 nodes on {} ({:.1} s)",
        addrs.join(", "),
        t.elapsed().as_secs_f64()
    );
    let kinds = processes::apply(&admin, layout).await?;
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "mesh config    applied {}/: {}",
        layout.mesh().display(),
        kinds.join(", ")
    );

    let t = Instant::now();
    let second = processes::start_second_cluster(kids, bins, layout, &admin, topology).await?;
    println!(
        "second cluster {} on {}: a node on {second}, joined with a cluster token as a learner ({:.1} s)",
        NETWORK_2.cluster,
        NETWORK_2.name,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let node_of = |n: bookinfo::Network| {
        if n == NETWORK_2 {
            second.clone()
        } else {
            addrs[0].clone()
        }
    };
    processes::start_gateways(kids, bins, layout, &admin, topology, node_of).await?;
    processes::start_workloads(kids, bins, layout, &admin, topology, &addrs, &second).await?;
    let http = Http::new(Duration::from_secs(5));
    let proxies = processes::wait_ready(kids, &http, &admin, topology).await?;
    let placed = topology.placed();
    for n in NETWORKS {
        let here: Vec<String> = placed
            .iter()
            .filter(|p| p.workload.network == n)
            .map(|p| format!("{} {} {}", p.workload.service, p.workload.version, p.ip))
            .collect();
        let client = if n == NETWORK_1 {
            format!(", the client agent {}", topology.client_ip())
        } else {
            String::new()
        };
        println!(
            "{:<14} {}: {}{client}; its east-west gateway {}:{}",
            n.name,
            n.cluster,
            here.join(", "),
            topology.gateway_ip(n),
            bookinfo::GATEWAY_PORT
        );
    }
    let nodes: std::collections::BTreeSet<u64> = proxies.iter().map(|p| p.node_id).collect();
    println!(
        "ready          {} workloads registered and healthy, each behind an agent; proxy-status: {} agents and gateways on {} nodes, all SYNCED ({:.1} s)",
        placed.len(),
        proxies.len(),
        nodes.len(),
        t.elapsed().as_secs_f64()
    );
    println!();

    let url = topology.entry_url();
    let t = Instant::now();
    let answers = send(&http, &url, args.requests).await;
    let result = tally(&answers);
    let callers = ratings_callers();
    println!(
        "traffic        {} requests to {url} ({:.1} s)",
        args.requests,
        t.elapsed().as_secs_f64()
    );
    print!("{}", result.render(args.split, &callers));
    let gateways = gateway_traffic(&http, topology).await;
    let crossings = crossings(&result);
    print!("{}", report::render_crossings(&crossings, &gateways));
    let mut problems = result.problems(args.split, &callers);
    let home: Vec<&str> = bookinfo::reviews_on(NETWORK_1)
        .iter()
        .map(|w| w.version)
        .collect();
    problems.extend(result.locality_problems(NETWORK_1.cluster, &home));
    problems.extend(report::crossing_problems(&crossings, &gateways));
    let failover = if args.failover {
        println!();
        let f = failover::run(kids, &http, topology, args.split).await?;
        print!("{}", failover::render(&f));
        problems.extend(failover::problems(&f));
        Some(f)
    } else {
        None
    };
    let file = ReportFile {
        entry: url.clone(),
        split: args.split.0,
        proxies: proxies
            .iter()
            .map(|p| (p.proxy.clone(), crate::config::sync_status(p)))
            .collect(),
        tally: &result,
        expected: bookinfo::REVIEWS_VERSIONS
            .iter()
            .map(|v| {
                let range = report::expected_range(result.reviews_total(), args.split.weight(v));
                (*v, range)
            })
            .collect(),
        gateways: &gateways,
        failover,
        problems: problems.clone(),
    };
    std::fs::write(layout.report(), serde_json::to_string_pretty(&file)?)
        .with_context(|| format!("writing {}", layout.report().display()))?;
    println!();
    if args.once {
        return Ok(problems);
    }
    print!("{}", watch_text(layout, topology));
    println!();
    println!(
        "Sending {} requests/s; a line every {} s with who answered. Ctrl-C to stop.",
        args.rate,
        WINDOW.as_secs()
    );
    light_traffic(kids, &http, &url, args.rate).await
}

/// Each network's gateway's connections, from its metrics (none if they
/// cannot be read).
async fn gateway_traffic(http: &Http, topology: &Topology) -> Vec<GatewayTraffic> {
    let mut v = Vec::new();
    for n in NETWORKS {
        let ip = topology.gateway_ip(n);
        let metrics = http
            .get_ok(&format!(
                "http://{ip}:{}/stats/prometheus",
                bookinfo::METRICS_PORT
            ))
            .await
            .unwrap_or_default();
        let address = format!("{ip}:{}", bookinfo::GATEWAY_PORT);
        v.push(GatewayTraffic::from_metrics(n.name, &address, &metrics));
    }
    v
}

/// The calls that can cross networks ([`bookinfo::crossings`]), with how
/// many of the traffic's did: productpage (network-1) to reviews in
/// network-2 (v3, and v1 and v2 once failed over), and reviews there to
/// ratings (network-1).
fn crossings(t: &Tally) -> Vec<Crossing> {
    bookinfo::crossings()
        .into_iter()
        .map(|(n, dest)| Crossing {
            network: n.name.into(),
            calls: t.crossed_to(n.cluster, &dest),
            dest,
        })
        .collect()
}

/// The reviews versions that call ratings.
fn ratings_callers() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = WORKLOADS
        .iter()
        .filter(|w| w.service == "reviews" && w.calls.contains(&"ratings"))
        .map(|w| w.version)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// GETs `url` `n` times, one after the other.
async fn send(http: &Http, url: &str, n: u32) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        answers.push(get_page(http, url).await);
    }
    answers
}

async fn get_page(http: &Http, url: &str) -> Answer {
    match http.get(url).await {
        Ok((200, body)) => match serde_json::from_slice(&body) {
            Ok(r) => Answer::Report(Box::new(r)),
            Err(_) => Answer::Status(200),
        },
        Ok((status, _)) => Answer::Status(status),
        Err(e) => Answer::Error(format!("{e:#}")),
    }
}

/// `rate` requests a second, with a summary line every [`WINDOW`], until
/// the caller stops it; says once when a process exits.
async fn light_traffic(
    kids: &mut Children,
    http: &Http,
    url: &str,
    rate: u32,
) -> anyhow::Result<Vec<String>> {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut window = Vec::new();
    let mut window_start = Instant::now();
    loop {
        tick.tick().await;
        window.push(get_page(http, url).await);
        for (name, st, log) in kids.newly_exited() {
            println!("warning: {name} exited ({st}); its log: {}", log.display());
        }
        if window_start.elapsed() >= WINDOW {
            println!(
                "[{:>4} s] {}",
                start.elapsed().as_secs(),
                tally(&window).line()
            );
            window.clear();
            window_start = Instant::now();
        }
    }
}

/// How to look at the running mesh.
fn watch_text(layout: &Layout, topology: &Topology) -> String {
    let trellis = trellis_command();
    let vs = layout.mesh().join(bookinfo::SPLIT_FILE);
    let pp = topology
        .find("productpage", "v1")
        .expect("productpage is placed");
    let rows = [
        (
            format!("export TRELLIS_CONFIG={}", layout.admin_config().display()),
            "",
        ),
        (
            format!("{trellis} proxy-status"),
            "every agent, the node it streams from, SYNCED",
        ),
        (
            format!("{trellis} cluster list"),
            "the two clusters: nodes, roles, gateways",
        ),
        (
            format!("{trellis} get vs reviews -o yaml"),
            "the split in force",
        ),
        (format!("{trellis} get we"), "the workloads that registered"),
        (format!("$EDITOR {}", vs.display()), "change the weights"),
        (
            format!("{trellis} apply -f {}", vs.display()),
            "pushed within a second; see the next line here",
        ),
        (
            format!("curl -s {}", topology.entry_url()),
            "through the mesh: productpage's report",
        ),
        (
            format!(
                "curl -s http://{}/stats/prometheus | grep istio_requests_total",
                pp.metrics()
            ),
            "productpage's agent's metrics",
        ),
        (
            format!("curl -s http://{}/clusters", pp.admin()),
            "what productpage's agent routes to: v1, v2 here (priority 0) and behind network-2's gateway (1), v3 there",
        ),
        (
            format!(
                "kill $(grep reviews-v1-{} {} | cut -d' ' -f1)",
                NETWORK_1.cluster,
                layout.pids().display()
            ),
            "take cluster-1's reviews v1 down: cluster-2's answers instead",
        ),
        (
            format!(
                "curl -s http://{}:{}/stats/prometheus | grep istio_tcp_connections_opened",
                topology.gateway_ip(NETWORK_2),
                bookinfo::METRICS_PORT
            ),
            "network-2's gateway: what it carried",
        ),
        (
            format!("dig +short @{} -p {} reviews", pp.ip, bookinfo::DNS_PORT),
            "its DNS proxy: reviews' virtual IP",
        ),
    ];
    let mut out = String::from("Watch it, from another terminal:\n");
    out.push_str(&aligned(&rows));
    out
}

/// `  COMMAND   # COMMENT` lines, the comments in one column after the
/// commands up to [`ALIGN_MAX`] long (longer ones push theirs right).
fn aligned(rows: &[(String, &str)]) -> String {
    const ALIGN_MAX: usize = 64;
    let width = rows
        .iter()
        .filter(|(_, comment)| !comment.is_empty())
        .map(|(cmd, _)| cmd.len())
        .filter(|n| *n <= ALIGN_MAX)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (cmd, comment) in rows {
        if comment.is_empty() {
            out.push_str(&format!("  {cmd}\n"));
        } else {
            out.push_str(&format!("  {cmd:<width$}  # {comment}\n"));
        }
    }
    out
}

/// How to run this `trellis` from a shell: `trellis` if its directory is
/// on PATH, else its full path.
fn trellis_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "trellis".into();
    };
    let dir = exe.parent().and_then(|d| d.canonicalize().ok());
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|p| p.canonicalize().ok() == dir));
    if on_path {
        "trellis".into()
    } else {
        exe.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_are_named_with_how_to_build_them() {
        let d = tempfile::tempdir().unwrap();
        let err = Bins::find_in(d.path()).err().unwrap().to_string();
        assert!(err.contains("`trellis-controlplane` is not in"), "{err}");
        assert!(err.contains("cargo build --release"), "{err}");
        for b in ["trellis-controlplane", "trellis-agent"] {
            std::fs::write(d.path().join(b), "").unwrap();
        }
        let err = Bins::find_in(d.path()).err().unwrap().to_string();
        assert!(err.contains("`trellis-eastwest` is not in"), "{err}");
        std::fs::write(d.path().join("trellis-eastwest"), "").unwrap();
        let err = Bins::find_in(d.path()).err().unwrap().to_string();
        assert!(err.contains("`trellis-echo` is not in"), "{err}");
        std::fs::write(d.path().join("trellis-echo"), "").unwrap();
        assert!(Bins::find_in(d.path()).is_ok());
    }

    #[test]
    fn comments_line_up_after_the_commands() {
        let rows = [
            ("export X=1".to_string(), ""),
            ("trellis get we".to_string(), "registered"),
            ("trellis proxy-status".to_string(), "agents"),
            ("x".repeat(70), "long"),
        ];
        let text = aligned(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  export X=1");
        assert_eq!(lines[1], "  trellis get we        # registered");
        assert_eq!(lines[2], "  trellis proxy-status  # agents");
        assert_eq!(lines[3], format!("  {}  # long", "x".repeat(70)));
    }

    #[test]
    fn ratings_is_called_by_reviews_v2_and_v3() {
        assert_eq!(ratings_callers(), ["v2", "v3"]);
    }

    #[test]
    fn a_given_dir_must_be_empty() {
        let d = tempfile::tempdir().unwrap();
        let fresh = d.path().join("new");
        assert!(matches!(
            DemoDir::create(Some(&fresh)).unwrap(),
            DemoDir::Given(_)
        ));
        std::fs::write(fresh.join("x"), "").unwrap();
        let err = DemoDir::create(Some(&fresh)).err().unwrap().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }
}
