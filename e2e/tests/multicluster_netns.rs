//! Two clusters on two networks in network namespaces: issue 23's
//! acceptance scenarios of locality failover across zones and clusters,
//! and of a WAN partition. Skipped where namespaces cannot be made.
//!
//! Three bridges. The WAN: the voters (cluster `cluster-1`, in the root
//! namespace on the WAN bridge's address, as in `eastwest_netns.rs`),
//! net-1's router, and cluster-2's two hosts with a foot on it: its
//! control-plane node (a learner joined with a cluster token) and its
//! east-west gateway. net-1: cluster-1's client and workloads, which
//! reach the voters through their bridge and the WAN through the router.
//! net-2: cluster-2's workloads, which reach only their learner (at its
//! WAN address, through its net-2 one) and are reached from elsewhere
//! only through the gateway. Nothing routes one workload subnet to the
//! other. The partition is iptables DROP on the WAN bridge for
//! cluster-2's two WAN addresses ([`Net::cut_off`]).
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use trellis_api::v1::{Empty, GetRequest, PutRequest};
use trellis_e2e::netns::{self, Host, Net, Partition};
use trellis_e2e::{bin, wait_for, Cluster, Proc};

/// `--cluster-stale-after` of every node, seconds.
const STALE_AFTER: u64 = 4;
/// `--workload-grace-secs`: a stopped agent's entry goes quickly.
const GRACE: u64 = 2;
/// The DestinationRule's `outlierDetection.interval`.
const INTERVAL: Duration = Duration::from_secs(1);
/// What a move of the traffic may take beyond [`INTERVAL`]: the calls of
/// this test are a process each, on a busy two-core machine.
const MARGIN: Duration = Duration::from_secs(3);
/// Answers in a row from one workload that say the traffic is there.
const IN_A_ROW: usize = 5;

/// With [`trellis_e2e::REVIEWS`] in every cluster: a DestinationRule that
/// fails over by locality, on outlier detection (Istio requires it for
/// failover): one 5xx ejects, everything may be ejected.
const FAILOVER: &str = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting: {enabled: true}
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 100
"#;

/// Cluster-1's network (the first cluster's default) and cluster-2's.
const NET_1: &str = "network-1";
const NET_2: &str = "net-2";
/// Localities: cluster-1's two zones, cluster-2's region.
const Z1: &str = "r1/z1";
const Z2: &str = "r1/z2";
const Z3: &str = "r2/z3";

/// Which cluster a process belongs to: whose node its token sends it to.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    One,
    Two,
}

/// The networks, hosts and processes; dropped in field order: the cut
/// heals, the processes stop, then the control plane, then the namespaces.
struct Mesh {
    cut: Option<Partition>,
    procs: Vec<(String, Proc)>,
    /// Each agent's token, by host name.
    tokens: Vec<(String, String)>,
    cp: Cluster,
    /// Cluster-2's node.
    learner: u64,
    /// An admin config that talks to the learner: tokens made with it
    /// send their holders there.
    learner_admin: PathBuf,
    /// Cluster-2's hosts on the WAN, and their addresses there.
    learner_host: Host,
    gateway: Host,
    wan_addrs: [Ipv4Addr; 2],
    /// Cluster-1's router onto the WAN, its address on net-1.
    router_1: Ipv4Addr,
    wan: Net,
    net_1: Net,
    net_2: Net,
}

impl Mesh {
    /// `voters` voters, cluster-2's learner and gateway, the mesh config
    /// applied; `None` where namespaces cannot be made.
    async fn start(voters: usize) -> anyhow::Result<Option<Mesh>> {
        if let Some(why) = netns::unavailable() {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
        // Built first: a test stopped while it builds leaves no bridges.
        trellis_e2e::bin_dir();
        let mut wan = Net::new("mc-wan")?;
        let mut net_1 = Net::new("mc-1")?;
        let mut net_2 = Net::new("mc-2")?;
        let stale = STALE_AFTER.to_string();
        let grace = GRACE.to_string();
        let mut cp = Cluster::new(&[
            "--cluster-stale-after",
            &stale,
            "--workload-grace-secs",
            &grace,
        ])?;
        cp.host = wan.gateway().to_string();
        cp.spawn_init()?;
        cp.wait_ready(1).await?;
        cp.wait_writable(1).await?;
        for _ in 1..voters {
            cp.join(false).await?;
        }

        let router = wan.host("router")?;
        let router_1 = net_1.attach(&router, "eth1")?;
        router.forward()?;
        let learner_host = net_2.host("cp")?;
        let learner_wan = wan.attach(&learner_host, "eth1")?;
        let gateway = net_2.host("gateway")?;
        let gateway_wan = wan.attach(&gateway, "eth1")?;
        // The learner reaches the voters on the WAN; the gateway reaches
        // net-1 through its router, and the learner through net-2.
        learner_host.only_routes(&[])?;
        let to_learner = (format!("{learner_wan}/32"), learner_host.addr);
        gateway.only_routes(&[(net_1.subnet(), router.addr), to_learner])?;

        let token = cp.token(&[
            "--kind",
            "cluster",
            "--cluster",
            "cluster-2",
            "--network",
            NET_2,
        ])?;
        let learner = cp
            .join_cluster_in(
                &token,
                &learner_wan.to_string(),
                Some(&learner_host),
                &["--locality", Z3],
            )
            .await?;
        let dir = cp.root.path().to_path_buf();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, format!("{}{FAILOVER}", trellis_e2e::REVIEWS))?;
        cp.cli(&["apply", "-f", &mesh.display().to_string()])?;
        let learner_admin = cp.admin_config_through(learner, "cluster-2")?;
        let mut m = Mesh {
            cut: None,
            procs: Vec::new(),
            tokens: Vec::new(),
            cp,
            learner,
            learner_admin,
            learner_host,
            gateway,
            wan_addrs: [learner_wan, gateway_wan],
            router_1,
            wan,
            net_1,
            net_2,
        };
        // The learner checks a token's group on its replica: once it has
        // the config.
        let t = wait_for(
            Duration::from_secs(10),
            "a gateway token made through the learner",
            || async {
                m.token(Side::Two, &["--kind", "gateway", "--network", NET_2])
                    .ok()
            },
        )
        .await?;
        let data = dir.join("gateway-data").display().to_string();
        let advertise = format!("{gateway_wan}:15443");
        let args = [
            "--token",
            &t,
            "--data-dir",
            &data,
            "--advertise",
            &advertise,
        ];
        let gw = m.gateway.clone();
        m.spawn(&gw, "gateway", "trellis-eastwest", &args)?;
        m.wait_up(&gw, "gateway", "127.0.0.1:15021/healthz/ready")
            .await?;
        Ok(Some(m))
    }

    /// A host of `side`'s network that reaches its control-plane node
    /// and nothing else (and the WAN through the router, on net-1).
    fn host(&mut self, side: Side, name: &str) -> anyhow::Result<Host> {
        match side {
            Side::One => {
                let host = self.net_1.host(name)?;
                let voters = format!("{}/32", self.wan.gateway());
                host.only_routes(&[
                    (voters, self.net_1.gateway()),
                    (self.wan.subnet(), self.router_1),
                ])?;
                Ok(host)
            }
            Side::Two => {
                let host = self.net_2.host(name)?;
                let learner = format!("{}/32", self.wan_addrs[0]);
                host.only_routes(&[(learner, self.learner_host.addr)])?;
                Ok(host)
            }
        }
    }

    /// A token made through `side`'s node.
    fn token(&self, side: Side, args: &[&str]) -> anyhow::Result<String> {
        let config = match side {
            Side::One => self.cp.admin_config(),
            Side::Two => self.learner_admin.clone(),
        };
        let out = Command::new(bin("trellis"))
            .arg("--config")
            .arg(config)
            .args(["token", "create"])
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Starts `program args` inside `host`, as `HOST-NAME`, logging to
    /// `HOST-NAME.log`.
    fn spawn(
        &mut self,
        host: &Host,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let id = format!("{}-{name}", host.name);
        let log = self.cp.root.path().join(format!("{id}.log"));
        let mut cmd = host.command(bin(program));
        cmd.args(args);
        self.procs
            .push((id.clone(), Proc::spawn(&id, &mut cmd, &log)?));
        Ok(())
    }

    /// Kills `HOST-NAME`.
    fn stop(&mut self, host: &Host, name: &str) {
        let id = format!("{}-{name}", host.name);
        self.procs.retain(|(p, _)| *p != id);
    }

    fn log(&self, host: &Host, name: &str) -> String {
        let path = self
            .cp
            .root
            .path()
            .join(format!("{}-{name}.log", host.name));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Waits until `url` answers inside `host`; fails with `name`'s log.
    async fn wait_up(&self, host: &Host, name: &str, url: &str) -> anyhow::Result<()> {
        let what = format!("{} {url}", host.name);
        wait_for(Duration::from_secs(30), &what, || {
            let ok = host.sh(&format!("curl -sf {url}")).ok();
            async move { ok }
        })
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{e}: {}", self.log(host, name)))
    }

    /// The echo server `reviews-NAME` of `host` (its name is `NAME`).
    fn start_echo(&mut self, host: &Host) -> anyhow::Result<()> {
        let name = format!("reviews-{}", host.name);
        let args = ["--http", "127.0.0.1:9080", "--name", &name];
        self.spawn(host, "echo", "trellis-echo", &args)
    }

    /// The agent of `host` in `side`'s cluster at `locality`: a workload of
    /// group reviews, or (`upstream` given) a client of reviews there.
    /// Its data directory and token are kept across restarts: a restarted
    /// agent resumes its certificate.
    async fn start_agent(
        &mut self,
        side: Side,
        host: &Host,
        locality: &str,
        upstream: bool,
    ) -> anyhow::Result<()> {
        let data = self.cp.root.path().join(format!("{}-data", host.name));
        let token = match self.tokens.iter().find(|(h, _)| *h == host.name) {
            Some((_, t)) => t.clone(),
            None => {
                let kind: &[&str] = if upstream {
                    &["--kind", "vm", "--identity", "default/client"]
                } else {
                    &["--kind", "vm", "--workload-group", "default/reviews"]
                };
                let t = self.token(side, kind)?;
                self.tokens.push((host.name.clone(), t.clone()));
                t
            }
        };
        let mut args: Vec<String> = vec!["--data-dir".into(), data.display().to_string()];
        args.extend(["--token".into(), token]);
        let network = if side == Side::One { NET_1 } else { NET_2 };
        args.extend(["--network", network, "--locality", locality].map(String::from));
        args.extend(["--address".into(), host.addr.to_string()]);
        if upstream {
            let to = "127.0.0.1:19080=reviews.default.svc.cluster.local:9080";
            args.extend(["--upstream".into(), to.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(host, "agent", "trellis-agent", &args)?;
        self.wait_up(host, "agent", "127.0.0.1:15000/ready").await
    }

    /// Which workload answered one call of `client`, if one did.
    fn call(client: &Host) -> Option<String> {
        let body = client
            .sh("curl -sf -m 3 http://127.0.0.1:19080/hello")
            .ok()?;
        let answer: Value = serde_json::from_str(&body).ok()?;
        answer["service"].as_str().map(str::to_string)
    }

    /// Calls from `client` until [`IN_A_ROW`] answers in a row come from
    /// `host`'s workload; how long until the first of them, and the
    /// calls that failed or went elsewhere on the way.
    async fn until_answered_by(
        &self,
        client: &Host,
        host: &Host,
        within: Duration,
    ) -> anyhow::Result<(Duration, Vec<Option<String>>)> {
        let want = format!("reviews-{}", host.name);
        let started = Instant::now();
        let mut first = None;
        let mut row = 0;
        let mut others = Vec::new();
        while started.elapsed() < within {
            let answer = Self::call(client);
            if answer.as_deref() == Some(want.as_str()) {
                first.get_or_insert(started.elapsed());
                row += 1;
                if row == IN_A_ROW {
                    return Ok((first.unwrap_or_default(), others));
                }
            } else {
                first = None;
                row = 0;
                others.push(answer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "{} was not answered by {want} {IN_A_ROW} times in a row within {within:?} \
             (other answers: {others:?}); its /clusters:\n{}",
            client.name,
            client
                .sh("curl -s 127.0.0.1:15000/clusters")
                .unwrap_or_default()
        )
    }

    /// Cluster `name` in the voters' `trellis cluster list -o json`.
    fn cluster(&self, name: &str) -> Option<Value> {
        let out = self.cp.cli(&["cluster", "list", "-o", "json"]).ok()?;
        let all: Vec<Value> = serde_json::from_str(&out).ok()?;
        all.into_iter().find(|c| c["name"] == name)
    }

    /// How many of the voters' committed workload entries are `host`'s.
    fn committed(&self, host: &Host) -> usize {
        let name = entry_name(host);
        let out = self.cp.cli(&["get", "workloadentries"]).unwrap_or_default();
        out.lines()
            .filter(|l| {
                l.split_whitespace()
                    .any(|w| w == name || w.ends_with(&format!("/{name}")))
            })
            .count()
    }

    /// How many entries of `host`'s workload the agent at `at` was pushed.
    fn pushed(at: &Host, host: &Host) -> usize {
        let dump = at
            .sh("curl -sf -m 2 127.0.0.1:15000/config_dump")
            .unwrap_or_default();
        let dump: Value = serde_json::from_str(&dump).unwrap_or_default();
        let name = entry_name(host);
        dump["resources"].as_array().map_or(0, |all| {
            all.iter()
                .filter(|r| r["kind"] == "WorkloadEntry" && r["metadata"]["name"] == name.as_str())
                .count()
        })
    }

    /// Cuts cluster-2's WAN: its learner and gateway.
    fn cut(&mut self) -> anyhow::Result<()> {
        self.cut = Some(self.wan.cut_off("cluster-2", &self.wan_addrs)?);
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        match self.cut.take() {
            Some(mut cut) => cut.heal(),
            None => Ok(()),
        }
    }
}

/// The WorkloadEntry name of `host`'s workload in group reviews.
fn entry_name(host: &Host) -> String {
    format!("reviews-{}", host.addr.to_string().replace('.', "-"))
}

#[tokio::test(flavor = "multi_thread")]
async fn traffic_fails_over_to_the_other_zone_then_the_other_cluster_and_back() -> anyhow::Result<()>
{
    let Some(mut m) = Mesh::start(1).await? else {
        return Ok(());
    };
    let client = m.host(Side::One, "client")?;
    let z1 = m.host(Side::One, "z1")?;
    let z2 = m.host(Side::One, "z2")?;
    let c2 = m.host(Side::Two, "c2")?;
    for (side, host, locality) in [
        (Side::One, &z1, Z1),
        (Side::One, &z2, Z2),
        (Side::Two, &c2, Z3),
    ] {
        m.start_echo(host)?;
        m.start_agent(side, host, locality, false).await?;
    }
    m.start_agent(Side::One, &client, Z1, true).await?;
    // The premise: cluster-2's workload is out of the client's reach but
    // its gateway is not.
    assert!(client
        .sh(&format!("curl -s -m 2 http://{}:15020/", c2.addr))
        .is_err());
    let gateway_wan = m.wan_addrs[1];
    wait_for(
        Duration::from_secs(30),
        "the client to see all three",
        || {
            let clusters = client
                .sh("curl -sf 127.0.0.1:15000/clusters")
                .unwrap_or_default();
            let all = [
                z1.addr.to_string(),
                z2.addr.to_string(),
                gateway_wan.to_string(),
            ]
            .iter()
            .all(|a| clusters.contains(&format!("{a}:15")));
            async move { all.then_some(()) }
        },
    )
    .await?;

    // Its own zone only, at first.
    let (_, others) = m
        .until_answered_by(&client, &z1, Duration::from_secs(30))
        .await?;
    eprintln!("before: answers not from z1 while the config came: {others:?}");
    for _ in 0..10 {
        assert_eq!(Mesh::call(&client).as_deref(), Some("reviews-z1"));
    }

    let bound = INTERVAL + MARGIN;
    m.stop(&z1, "echo");
    let (took, others) = m
        .until_answered_by(&client, &z2, Duration::from_secs(20))
        .await?;
    eprintln!("z1 down: traffic in z2 after {took:?} (on the way: {others:?})");
    assert!(took <= bound, "{took:?} > {bound:?}");

    m.stop(&z2, "echo");
    let (took, others) = m
        .until_answered_by(&client, &c2, Duration::from_secs(20))
        .await?;
    eprintln!("z2 down: traffic in cluster-2 after {took:?} (on the way: {others:?})");
    assert!(took <= bound, "{took:?} > {bound:?}");
    // Through cluster-2's gateway.
    let metrics = m.gateway.sh("curl -sf 127.0.0.1:15020/stats/prometheus")?;
    let carried = metrics.lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("destination_service=\"reviews.default.svc.cluster.local\"")
    });
    assert!(carried, "{metrics}");

    // z1 back: the traffic returns once its ejection is over.
    m.start_echo(&z1)?;
    let (took, others) = m
        .until_answered_by(&client, &z1, Duration::from_secs(60))
        .await?;
    eprintln!("z1 back: traffic in z1 after {took:?} (on the way: {others:?})");
    Ok(())
}

/// Keys written (and acknowledged) in `phase` of the partition test.
fn keys(phase: &str) -> Vec<String> {
    (0..5).map(|i| format!("e2e/{phase}/{i}")).collect()
}

/// Puts each of `keys` through node `id`; all must be acknowledged.
async fn put_all(cp: &Cluster, id: u64, keys: &[String]) -> anyhow::Result<()> {
    let mut admin = cp.admin(id).await?;
    for key in keys {
        let put = admin.put(PutRequest {
            key: key.clone(),
            value: key.as_bytes().to_vec(),
        });
        tokio::time::timeout(Duration::from_secs(10), put).await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_cluster_keeps_serving_and_converges_after_the_heal() -> anyhow::Result<()> {
    let Some(mut m) = Mesh::start(3).await? else {
        return Ok(());
    };
    let client_1 = m.host(Side::One, "client1")?;
    let z1 = m.host(Side::One, "z1")?;
    let client_2 = m.host(Side::Two, "client2")?;
    let c2 = m.host(Side::Two, "c2")?;
    let late = m.host(Side::Two, "late")?;
    for (side, host, locality) in [(Side::One, &z1, Z1), (Side::Two, &c2, Z3)] {
        m.start_echo(host)?;
        m.start_agent(side, host, locality, false).await?;
    }
    m.start_agent(Side::One, &client_1, Z1, true).await?;
    m.start_agent(Side::Two, &client_2, Z3, true).await?;
    // The late workload gets its certificate now (a token's use needs the
    // leader), then stops; its entry goes after the grace period.
    m.start_agent(Side::Two, &late, Z3, false).await?;
    wait_for(Duration::from_secs(30), "the late entry", || async {
        (m.committed(&late) == 1).then_some(())
    })
    .await?;
    m.stop(&late, "agent");
    wait_for(Duration::from_secs(30), "the late entry gone", || async {
        (m.committed(&late) == 0).then_some(())
    })
    .await?;
    m.until_answered_by(&client_1, &z1, Duration::from_secs(30))
        .await?;
    m.until_answered_by(&client_2, &c2, Duration::from_secs(30))
        .await?;
    let ready = m.cluster("cluster-2").context("cluster-2 listed")?["ready_endpoints"]
        .as_u64()
        .context("ready_endpoints")?;
    let before = keys("before");
    put_all(&m.cp, 1, &before[..3]).await?;
    put_all(&m.cp, m.learner, &before[3..]).await?;

    m.cut()?;
    let cut_at = Instant::now();
    // The premise: the learner cannot reach the voters any more.
    let status = m
        .learner_host
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-m", "2"])
        .arg(format!("http://{}", m.cp.node(1).addr))
        .status()?;
    assert_eq!(
        status.code(),
        Some(28),
        "not a timeout: the cut does not hold"
    );
    let during = keys("during");
    put_all(&m.cp, 1, &during).await?;
    let w = wait_for(
        Duration::from_secs(STALE_AFTER + 15),
        "cluster-2 stale on the voters",
        || async {
            let c = m.cluster("cluster-2")?;
            (c["stale"] == true).then_some(c)
        },
    )
    .await?;
    let took = cut_at.elapsed();
    eprintln!("cluster-2 taken as stale {took:?} after the cut");
    assert!(took >= Duration::from_secs(STALE_AFTER - 2), "{took:?}");
    assert_eq!(w["ready_endpoints"], 0, "{w}");
    // The learner's agents keep their config.
    assert_eq!(Mesh::pushed(&client_2, &c2), 1);
    // Both sides serve their own traffic.
    for _ in 0..5 {
        assert_eq!(Mesh::call(&client_1).as_deref(), Some("reviews-z1"));
        assert_eq!(Mesh::call(&client_2).as_deref(), Some("reviews-c2"));
    }
    // A workload registered inside the cut-off cluster, through its
    // learner, is reachable there.
    let started = Instant::now();
    m.start_echo(&late)?;
    m.start_agent(Side::Two, &late, Z3, false).await?;
    // Round robin between c2 and late: an answer from late will do.
    wait_for(Duration::from_secs(20), "an answer from late", || {
        let late = Mesh::call(&client_2).filter(|s| s == "reviews-late");
        async move { late }
    })
    .await?;
    eprintln!(
        "a registration inside the cut answered after {:?}",
        started.elapsed()
    );
    assert_eq!(m.committed(&late), 0, "committed through a cut");

    m.heal()?;
    let healed_at = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "cluster-2 fresh, late too",
        || async {
            let c = m.cluster("cluster-2")?;
            (c["stale"] == false && c["ready_endpoints"] == ready + 1).then_some(())
        },
    )
    .await?;
    eprintln!(
        "cluster-2 fresh again {:?} after the heal",
        healed_at.elapsed()
    );
    // The late workload: committed once, and pushed once to both sides.
    wait_for(
        Duration::from_secs(30),
        "the late entry everywhere",
        || async {
            (m.committed(&late) == 1
                && Mesh::pushed(&client_1, &late) == 1
                && Mesh::pushed(&client_2, &late) == 1)
                .then_some(())
        },
    )
    .await?;
    // Every acknowledged write, on every node, the learner too.
    let written: Vec<String> = before.into_iter().chain(during).collect();
    for node in m.cp.nodes.iter().map(|n| n.id) {
        wait_for(
            Duration::from_secs(30),
            &format!("the writes on node {node}"),
            || async {
                let mut admin = m.cp.admin(node).await.ok()?;
                for key in &written {
                    let r = admin
                        .get(GetRequest {
                            key: key.clone(),
                            linearizable: false,
                        })
                        .await
                        .ok()?
                        .into_inner();
                    if !r.found || r.value != key.as_bytes() {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await?;
    }
    // One leader, a voter, the same for every node.
    let mut leaders = Vec::new();
    for node in m.cp.nodes.iter().map(|n| n.id) {
        let members =
            m.cp.admin(node)
                .await?
                .members(Empty {})
                .await?
                .into_inner()
                .members;
        let leader: Vec<_> = members.iter().filter(|x| x.leader).collect();
        assert_eq!(leader.len(), 1, "node {node}: {members:?}");
        assert_eq!(leader[0].role, "voter", "{members:?}");
        leaders.push(leader[0].node_id);
    }
    leaders.dedup();
    assert_eq!(leaders.len(), 1, "split brain: {leaders:?}");
    Ok(())
}
