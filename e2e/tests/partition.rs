//! A cluster cut off from the voters, with real processes on loopback: a
//! voter (cluster `cluster-1`) and cluster `west` whose node joined with
//! a cluster token as a learner; west's agents stream from it. The cut is
//! iptables DROP between the two nodes' processes (`trellis_e2e::cut`).
//! During the cut west keeps serving its agents, takes a registration
//! locally, and the voter takes west's endpoints as stale; after the heal
//! everything converges.
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use trellis_api::annotations;
use trellis_e2e::cut::{Cut, Side};
use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, wait_for, Cluster, Proc};

/// Loopback block series of this test binary: `127.37.N.0/24`.
const SERIES: u8 = 37;
/// Host numbers in the block: west's node and two workloads.
const WEST_NODE: u8 = 1;
const FIRST: u8 = 2;
const SECOND: u8 = 3;
/// `--cluster-stale-after` of every node, seconds.
const STALE_AFTER: u64 = 4;
/// `--workload-grace-secs`: a stopped agent's entry goes quickly.
const GRACE: u64 = 2;

/// The mesh, west's agents by host number, and the cut while it lasts.
struct Mesh {
    // Field order is drop order: the cut heals, then the agents stop,
    // then the control plane.
    cut: Option<Cut>,
    agents: Vec<(u8, Proc)>,
    cp: Cluster,
    block: Block,
    west: u64,
    /// A VM token of group reviews, made through west's node, two uses.
    token: String,
}

impl Mesh {
    async fn start() -> anyhow::Result<Mesh> {
        let listeners: Vec<(u8, u16)> = [FIRST, SECOND]
            .into_iter()
            .flat_map(|h| [15000, 15001, 15006, 15020, 15053].map(|p| (h, p)))
            .collect();
        let block = Block::take(SERIES, &listeners)?;
        let stale = STALE_AFTER.to_string();
        let grace = GRACE.to_string();
        let mut cp = Cluster::init(&[
            "--cluster-stale-after",
            &stale,
            "--workload-grace-secs",
            &grace,
        ])
        .await?;
        let token = cp.token(&[
            "--kind",
            "cluster",
            "--cluster",
            "west",
            "--network",
            "net-west",
        ])?;
        let host = block.ip(WEST_NODE).to_string();
        let west = cp.join_cluster(&token, &host, &[]).await?;
        let dir = cp.root.path().to_path_buf();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, trellis_e2e::REVIEWS)?;
        cp.cli(&["apply", "-f", &mesh.display().to_string()])?;
        // Tokens made through west's node send their holders there.
        let west_admin = cp.admin_config_through(west, "west")?;
        // West checks the group on its replica: once it has it.
        let out = wait_for(
            Duration::from_secs(10),
            "a token of the group, made through west",
            || async {
                let out = Command::new(bin("trellis"))
                    .arg("--config")
                    .arg(&west_admin)
                    .args(["token", "create", "--kind", "vm"])
                    .args(["--workload-group", "default/reviews", "--uses", "2"])
                    .output()
                    .ok()?;
                out.status.success().then_some(out)
            },
        )
        .await?;
        Ok(Mesh {
            cut: None,
            agents: Vec::new(),
            cp,
            block,
            west,
            token: String::from_utf8(out.stdout)?.trim().to_string(),
        })
    }

    fn data_dir(&self, host: u8) -> PathBuf {
        self.cp.root.path().join(format!("agent-{host}"))
    }

    /// Starts the agent of the workload at `host` (its data directory
    /// kept across restarts: a restarted agent resumes its certificate).
    fn start_agent(&mut self, host: u8) -> anyhow::Result<()> {
        let ip = self.block.ip(host).to_string();
        let port = |p: u16| format!("{ip}:{p}");
        let data = self.data_dir(host).display().to_string();
        let log = self.cp.root.path().join(format!("agent-{host}.log"));
        let mut cmd = Command::new(bin("trellis-agent"));
        cmd.args(["--token", &self.token, "--data-dir", &data])
            .args(["--app-host", &ip, "--admin", &port(15000)])
            .args(["--inbound", &port(15006), "--outbound", &port(15001)])
            .args(["--metrics", &port(15020), "--dns", &port(15053)]);
        let p = Proc::spawn(&format!("agent-{host}"), &mut cmd, &log)?;
        self.agents.push((host, p));
        Ok(())
    }

    fn stop_agent(&mut self, host: u8) {
        self.agents.retain(|(h, _)| *h != host);
    }

    /// Cuts west's node off from the voter.
    fn cut(&mut self) -> anyhow::Result<()> {
        let (one, west) = (self.cp.node(1), self.cp.node(self.west));
        let pid = |n: &trellis_e2e::NodeProc| n.pid().expect("the node runs");
        let (one_pid, west_pid) = ([pid(one)], [pid(west)]);
        self.cut = Some(Cut::new(
            "west",
            Side {
                pids: &one_pid,
                listen: &one.addr,
            },
            Side {
                pids: &west_pid,
                listen: &west.addr,
            },
        )?);
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.cut.take() {
            c.heal()?;
        }
        Ok(())
    }

    /// Cluster `name` in node 1's `trellis cluster list -o json`.
    fn cluster(&self, name: &str) -> Option<Value> {
        let out = self.cp.cli(&["cluster", "list", "-o", "json"]).ok()?;
        let all: Vec<Value> = serde_json::from_str(&out).ok()?;
        all.into_iter().find(|c| c["name"] == name)
    }

    /// Node 1's committed workload entries named for `host`.
    fn committed(&self, host: u8) -> usize {
        let name = format!(
            "reviews-{}",
            self.block.ip(host).to_string().replace('.', "-")
        );
        let out = self.cp.cli(&["get", "workloadentries"]).unwrap_or_default();
        out.lines().filter(|l| l.contains(&name)).count()
    }

    /// The annotations of the entry for `host` the agent at `at` was
    /// pushed, from its admin `/config_dump`.
    async fn pushed(&self, at: u8, host: u8) -> Option<Value> {
        let url = format!("http://{}:15000/config_dump", self.block.ip(at));
        let dump: Value = reqwest_json(&url).await?;
        let address = self.block.ip(host).to_string();
        dump["resources"]
            .as_array()?
            .iter()
            .find(|r| r["kind"] == "WorkloadEntry" && r["spec"]["address"] == address.as_str())
            .map(|r| r["metadata"]["annotations"].clone())
    }
}

/// GETs `url` as JSON.
async fn reqwest_json(url: &str) -> Option<Value> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "2", url])
        .output()
        .await
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The first agent registered through west, ready on node 1.
async fn with_first_agent() -> Mesh {
    let mut m = Mesh::start().await.unwrap();
    m.start_agent(FIRST).unwrap();
    wait_for(
        Duration::from_secs(30),
        "west's endpoint, ready",
        || async {
            let w = m.cluster("west")?;
            (w["endpoints"] == 1 && w["ready_endpoints"] == 1).then_some(())
        },
    )
    .await
    .unwrap();
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_learner_serves_a_new_registration_locally_and_commits_it_after_the_heal() {
    let mut m = with_first_agent().await;
    // The second agent gets its certificate (a token use needs the
    // leader), then stops; its entry goes after the grace period.
    m.start_agent(SECOND).unwrap();
    wait_for(Duration::from_secs(30), "the second entry", || async {
        (m.committed(SECOND) == 1).then_some(())
    })
    .await
    .unwrap();
    m.stop_agent(SECOND);
    wait_for(Duration::from_secs(30), "the second entry gone", || async {
        (m.committed(SECOND) == 0).then_some(())
    })
    .await
    .unwrap();

    m.cut().unwrap();
    // The cut holds: west stops stamping its cluster on node 1.
    wait_for(Duration::from_secs(20), "west stale on node 1", || async {
        (m.cluster("west")?["stale"] == true).then_some(())
    })
    .await
    .unwrap();
    // Restarted inside the cut, the second agent registers through west:
    // west's agents are pushed its entry, marked local, within seconds.
    let started = Instant::now();
    m.start_agent(SECOND).unwrap();
    let held = wait_for(
        Duration::from_secs(15),
        "the held entry pushed to the first agent",
        || m.pushed(FIRST, SECOND),
    )
    .await
    .unwrap();
    eprintln!("held registration pushed after {:?}", started.elapsed());
    assert!(held[annotations::LOCAL_ONLY].is_string(), "{held}");
    assert_eq!(held[annotations::HEALTH], annotations::READY, "{held}");
    // The first agent keeps its config and its own entry, ready: west
    // never takes itself as stale.
    let own = m.pushed(FIRST, FIRST).await.expect("its own entry");
    assert_eq!(own[annotations::HEALTH], annotations::READY, "{own}");
    // The voters' side has not seen it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(m.committed(SECOND), 0, "committed through a cut");

    m.heal().unwrap();
    // After the heal: committed once, on every node, no longer local.
    wait_for(Duration::from_secs(30), "the entry committed", || async {
        (m.committed(SECOND) == 1).then_some(())
    })
    .await
    .unwrap();
    let committed = wait_for(
        Duration::from_secs(15),
        "the entry pushed as committed",
        || async {
            let a = m.pushed(FIRST, SECOND).await?;
            a[annotations::LOCAL_ONLY].is_null().then_some(a)
        },
    )
    .await
    .unwrap();
    assert_eq!(committed[annotations::HEALTH], annotations::READY);
    // The first agent's entry survived the cut, on the voter too.
    assert_eq!(m.committed(FIRST), 1);
    let west = m.cluster("west").unwrap();
    assert_eq!(west["endpoints"], 2, "{west}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_voters_take_a_silent_clusters_endpoints_as_not_ready_and_back_after_the_heal() {
    let mut m = with_first_agent().await;
    let w = m.cluster("west").unwrap();
    assert_eq!(w["stale"], false);
    assert!(
        w["stamp_age_seconds"].as_u64().unwrap() <= STALE_AFTER,
        "{w}"
    );

    let cut_at = Instant::now();
    m.cut().unwrap();
    let w = wait_for(
        Duration::from_secs(STALE_AFTER + 10),
        "west stale on node 1",
        || async {
            let w = m.cluster("west")?;
            (w["stale"] == true).then_some(w)
        },
    )
    .await
    .unwrap();
    let took = cut_at.elapsed();
    eprintln!("west taken as stale {took:?} after the cut");
    assert!(took >= Duration::from_secs(STALE_AFTER - 1), "{took:?}");
    assert_eq!(w["ready_endpoints"], 0, "{w}");
    assert_eq!(w["endpoints"], 1, "a cut does not unregister: {w}");
    // The sweep keeps west's workload through the cut: its whole cluster
    // is silent, not one node of a live cluster.
    tokio::time::sleep(Duration::from_secs(GRACE + 4)).await;
    assert_eq!(m.committed(FIRST), 1, "unregistered during the cut");
    // West's own agent is still served, its own entry ready.
    let own = m.pushed(FIRST, FIRST).await.expect("its config");
    assert_eq!(own[annotations::HEALTH], annotations::READY, "{own}");

    m.heal().unwrap();
    wait_for(Duration::from_secs(20), "west fresh again", || async {
        let w = m.cluster("west")?;
        (w["stale"] == false && w["ready_endpoints"] == 1).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(m.committed(FIRST), 1);
}
