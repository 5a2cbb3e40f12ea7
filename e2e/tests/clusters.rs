//! Clusters joining the mesh with cluster tokens, with real processes on
//! loopback: a voter (cluster `cluster-1`) and a cluster `west` whose node
//! joined as a learner on an address of its own, with its own
//! intermediate CA and no CA key; an agent of `west` streaming from it;
//! `trellis cluster list` and `remove`; and the refusals an operator
//! gets, each saying what to do.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use trellis_api::v1::PutRequest;
use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, wait_for, Cluster, Proc};
use trellis_identity::join_token::JoinToken;

/// Loopback block series of this test binary: `127.23.N.0/24`.
const SERIES: u8 = 23;
/// Host numbers in the block: west's control-plane node and its workload.
const WEST_NODE: u8 = 1;
const WORKLOAD: u8 = 2;

/// A one-voter mesh and cluster `west` (network `net-west`) whose node
/// joined with a cluster token as a learner.
struct Mesh {
    // Field order is drop order: workloads before the control plane.
    procs: Vec<Proc>,
    cp: Cluster,
    block: Block,
    west: u64,
}

impl Mesh {
    async fn start() -> anyhow::Result<Mesh> {
        let listeners: Vec<(u8, u16)> = [15000, 15001, 15006, 15020, 15053, 9080]
            .map(|p| (WORKLOAD, p))
            .to_vec();
        let block = Block::take(SERIES, &listeners)?;
        let mut cp = Cluster::init(&[]).await?;
        let token = cp.token(&[
            "--kind",
            "cluster",
            "--cluster",
            "west",
            "--network",
            "net-west",
            "--uses",
            "1",
        ])?;
        let host = block.ip(WEST_NODE).to_string();
        let west = cp
            .join_cluster(&token, &host, &["--locality", "eu-west1/a"])
            .await?;
        Ok(Mesh {
            procs: Vec::new(),
            cp,
            block,
            west,
        })
    }

    /// An admin config that talks to west's node first, so that tokens
    /// made with it send their holders there.
    fn west_admin(&self) -> anyhow::Result<PathBuf> {
        self.cp.admin_config_through(self.west, "west")
    }

    /// `trellis --config CONFIG ARGS`: stdout, or the error with stderr.
    fn cli_with(&self, config: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(bin("trellis"))
            .arg("--config")
            .arg(config)
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `trellis cluster list -o json`, by cluster name.
    fn clusters(&self) -> anyhow::Result<Vec<Value>> {
        Ok(serde_json::from_str(
            &self.cp.cli(&["cluster", "list", "-o", "json"])?,
        )?)
    }

    fn cluster(&self, name: &str) -> Option<Value> {
        self.clusters()
            .ok()?
            .into_iter()
            .find(|c| c["name"] == name)
    }

    /// The `field` of a node's `node.json`.
    fn local_state(&self, id: u64, field: &str) -> Value {
        let text = std::fs::read_to_string(self.cp.node(id).dir.join("node.json")).unwrap();
        serde_json::from_str::<Value>(&text).unwrap()[field].clone()
    }

    /// Starts `program args`, logging to `name.log`, stopped at drop.
    fn spawn(&mut self, name: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let log = self.cp.root.path().join(format!("{name}.log"));
        let p = Proc::spawn(name, Command::new(bin(program)).args(args), &log)?;
        self.procs.push(p);
        Ok(())
    }

    /// An echo server registered through WorkloadGroup reviews by an agent
    /// whose token west's node made; returns the agent's data directory.
    async fn west_workload(&mut self) -> anyhow::Result<PathBuf> {
        let dir = self.cp.root.path().to_path_buf();
        let mesh = dir.join("mesh.yaml");
        std::fs::write(&mesh, trellis_e2e::REVIEWS)?;
        self.cp.cli(&["apply", "-f", &mesh.display().to_string()])?;
        let token = self.cli_with(
            &self.west_admin()?,
            &[
                "token",
                "create",
                "--kind",
                "vm",
                "--workload-group",
                "default/reviews",
            ],
        )?;
        let ip = self.block.ip(WORKLOAD).to_string();
        self.spawn("echo", "trellis-echo", &["--http", &format!("{ip}:9080")])?;
        let data = dir.join("agent-data");
        let port = |p: u16| format!("{ip}:{p}");
        let (admin, inbound, outbound) = (port(15000), port(15006), port(15001));
        let (metrics, dns) = (port(15020), port(15053));
        let data_arg = data.display().to_string();
        self.spawn(
            "agent",
            "trellis-agent",
            &[
                "--token",
                token.trim(),
                "--data-dir",
                &data_arg,
                "--app-host",
                &ip,
                "--admin",
                &admin,
                "--inbound",
                &inbound,
                "--outbound",
                &outbound,
                "--metrics",
                &metrics,
                "--dns",
                &dns,
            ],
        )?;
        Ok(data)
    }

    /// Joins a node with `token` and `flags` on the block's host 3 and
    /// returns why it failed.
    async fn join_error(&mut self, token: &str, flags: &[&str]) -> String {
        let host = self.block.ip(3).to_string();
        match self.cp.join_cluster(token, &host, flags).await {
            Ok(id) => panic!("node {id} joined with flags {flags:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn west_token(&self, extra: &[&str]) -> anyhow::Result<String> {
        let base = [
            "--kind",
            "cluster",
            "--cluster",
            "west",
            "--network",
            "net-west",
        ];
        self.cp.token(&[&base[..], extra].concat())
    }
}

/// `openssl verify` of `leaf` (its first certificate) through
/// `untrusted` to `root`: whether it verifies.
fn openssl_verifies(dir: &Path, root: &str, untrusted: &str, leaf: &str) -> bool {
    let write = |name: &str, pem: &str| {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let (root, untrusted, leaf) = (
        write("v-root.pem", root),
        write("v-untrusted.pem", untrusted),
        write("v-leaf.pem", leaf),
    );
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(untrusted)
        .arg(leaf)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn pem_blocks(pem: &str) -> Vec<String> {
    pem.split_inclusive("-----END CERTIFICATE-----")
        .map(|b| b.trim().to_string())
        .filter(|b| b.starts_with("-----BEGIN CERTIFICATE-----"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_node_joins_as_a_learner_with_its_own_intermediate_and_no_ca_key() {
    let m = Mesh::start().await.unwrap();
    let west_dir = &m.cp.node(m.west).dir;
    // Its CA key is its own: it seals only its intermediate's key.
    let own_key = std::fs::read_to_string(west_dir.join("ca.key")).unwrap();
    let mesh_key = std::fs::read_to_string(m.cp.ca_key_file()).unwrap();
    assert_ne!(own_key, mesh_key, "the learner holds the mesh's CA key");
    assert_eq!(m.local_state(m.west, "own_key_only"), true);
    assert_eq!(m.local_state(m.west, "cluster"), "west");
    assert_eq!(m.local_state(m.west, "network"), "net-west");
    // Its intermediate is not node 1's, and chains to the shared root.
    let inter = m.local_state(m.west, "intermediate_cert_pem");
    let root = m.local_state(1, "root_cert_pem");
    assert_ne!(inter, m.local_state(1, "intermediate_cert_pem"));
    let (inter, root) = (inter.as_str().unwrap(), root.as_str().unwrap());
    assert!(openssl_verifies(m.cp.root.path(), root, root, inter));

    let west = m.cluster("west").expect("west listed");
    assert_eq!(west["network"], "net-west");
    let nodes = west["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["id"], m.west);
    assert_eq!(nodes[0]["role"], "learner");
    assert_eq!(nodes[0]["locality"], "eu-west1/a");
    let first = m.cluster("cluster-1").expect("the first cluster listed");
    assert_eq!(first["network"], "network-1");
    assert_eq!(first["nodes"][0]["role"], "voter");
    assert_eq!(first["nodes"][0]["leader"], true);
    let table = m.cp.cli(&["cluster", "list"]).unwrap();
    assert!(
        table.contains("west") && table.contains("learner"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_of_the_cluster_streams_from_its_node_and_is_seen_mesh_wide_until_removed() {
    let mut m = Mesh::start().await.unwrap();
    let data = m.west_workload().await.unwrap();
    // The agent streams from west's node ...
    let west = m.west;
    let status = wait_for(
        Duration::from_secs(30),
        "the agent in proxy-status",
        || async {
            let out = m.cp.cli(&["proxy-status", "-o", "json"]).ok()?;
            let rows: Vec<Value> = serde_json::from_str(&out).ok()?;
            rows.into_iter().find(|r| r["node"] == west)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        status["identity"],
        "spiffe://e2e.trellis.test/ns/default/sa/reviews"
    );
    // ... with a certificate west's intermediate issued, that verifies
    // against the shared root.
    let chain = std::fs::read_to_string(data.join("cert-chain.pem")).unwrap();
    let inter = m.local_state(west, "intermediate_cert_pem");
    let inter = inter.as_str().unwrap();
    let blocks = pem_blocks(&chain);
    assert!(
        blocks.iter().any(|b| b == inter.trim()),
        "the chain lacks west's intermediate"
    );
    let root = m.local_state(1, "root_cert_pem");
    assert!(openssl_verifies(
        m.cp.root.path(),
        root.as_str().unwrap(),
        inter,
        &blocks[0]
    ));
    let node1_inter = m.local_state(1, "intermediate_cert_pem");
    assert!(
        !openssl_verifies(
            m.cp.root.path(),
            root.as_str().unwrap(),
            node1_inter.as_str().unwrap(),
            &blocks[0]
        ),
        "the leaf was not issued by west's intermediate"
    );

    // Registered through west's node, it is in node 1's replica, and
    // counted as west's endpoint.
    wait_for(
        Duration::from_secs(20),
        "west's endpoint, ready",
        || async {
            let w = m.cluster("west")?;
            (w["endpoints"] == 1 && w["ready_endpoints"] == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let entries = m.cp.cli(&["get", "workloadentries"]).unwrap();
    assert!(entries.contains("reviews-"), "{entries}");
    assert_eq!(m.cluster("cluster-1").unwrap()["endpoints"], 0);

    // Removed: its node leaves the membership, its records go.
    let out = m.cp.cli(&["cluster", "remove", "west"]).unwrap();
    assert!(!out.contains("west"), "{out}");
    let members = m.cp.members().await.unwrap();
    assert!(members.iter().all(|n| n.node_id != west), "{members:?}");
    assert!(m.cluster("west").is_none());
    let entries = m.cp.cli(&["get", "workloadentries"]).unwrap_or_default();
    assert!(!entries.contains("reviews-"), "{entries}");
    // The removed node keeps its certificate but cannot write any more.
    let mut through_removed = m.cp.admin(west).await.unwrap();
    let put = through_removed
        .put(PutRequest {
            key: "after-removal".into(),
            value: b"1".to_vec(),
        })
        .await
        .unwrap_err();
    assert!(put.message().contains("not a member"), "{put:?}");
    let again = m.cp.cli(&["cluster", "remove", "west"]).unwrap_err();
    assert!(
        again.to_string().contains("no cluster named west"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_one_cluster_cannot_join_as_another_nor_take_a_name_on_another_network() {
    let mut m = Mesh::start().await.unwrap();
    let token = m.west_token(&[]).unwrap();
    let why = m.join_error(&token, &["--cluster", "south"]).await;
    assert!(
        why.contains("is for cluster west and cannot join cluster south"),
        "{why}"
    );
    // The refusal spent nothing: the token joins as west.
    let host = m.block.ip(4).to_string();
    m.cp.join_cluster(&token, &host, &["--cluster", "west"])
        .await
        .unwrap();

    let taken =
        m.cp.token(&[
            "--kind",
            "cluster",
            "--cluster",
            "west",
            "--network",
            "net-other",
        ])
        .unwrap_err()
        .to_string();
    assert!(
        taken.contains("cluster name west is taken: it is on network net-west, not net-other"),
        "{taken}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_used_up_and_foreign_tokens_are_refused_saying_what_to_do() {
    let mut m = Mesh::start().await.unwrap();
    let expired = m.west_token(&["--ttl", "1s"]).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let why = m.join_error(&expired, &[]).await;
    assert!(
        why.contains("expired at") && why.contains("create a new one"),
        "{why}"
    );

    // Mesh::start used up the token it made (one use).
    let once = m.west_token(&["--uses", "1"]).unwrap();
    let host = m.block.ip(5).to_string();
    m.cp.join_cluster(&once, &host, &[]).await.unwrap();
    let why = m.join_error(&once, &[]).await;
    assert!(why.contains("is used up (1 of 1 uses)"), "{why}");

    // A token pinning another root: the node does not trust the control
    // plane, and says so before sending anything.
    let mut foreign = JoinToken::parse(&m.west_token(&[]).unwrap()).unwrap();
    foreign.root_pin = [0x5a; 32];
    let why = m.join_error(&foreign.encode(), &[]).await;
    assert!(why.contains("does not match the join token's pin"), "{why}");

    // A learner given the mesh's CA key is told it needs none.
    let token = m.west_token(&[]).unwrap();
    let key = m.cp.ca_key_file().display().to_string();
    let why = m.join_error(&token, &["--ca-key-file", &key]).await;
    assert!(why.contains("a cluster's learner holds no CA key"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_through_a_node_that_cannot_reach_the_leader_is_refused_as_retryable() {
    let mut m = Mesh::start().await.unwrap();
    // A token that sends its holder to west's node, then the only voter
    // goes away.
    let token = m
        .cli_with(
            &m.west_admin().unwrap(),
            &[
                "token",
                "create",
                "--kind",
                "cluster",
                "--cluster",
                "south",
                "--network",
                "net-south",
            ],
        )
        .unwrap();
    m.cp.kill(1);
    let why = m.join_error(token.trim(), &[]).await;
    assert!(why.contains("refused the join"), "{why}");
    assert!(why.contains("leader"), "{why}");
    assert!(
        why.contains("Unavailable") || why.contains("retry"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_voter_joined_with_a_cluster_token_needs_the_ca_key() {
    let mut m = Mesh::start().await.unwrap();
    let token = m.west_token(&[]).unwrap();
    // Without a CA key it cannot be a voter.
    let host = m.block.ip(6).to_string();
    let no_key =
        m.cp.join_cluster(&token, &host, &["--voter", "--ca-key-file", "/nonexistent"])
            .await
            .unwrap_err();
    assert!(format!("{no_key:#}").contains("/nonexistent"), "{no_key:#}");
    let id =
        m.cp.join_cluster(&token, &host, &["--voter"])
            .await
            .unwrap();
    let west = m.cluster("west").unwrap();
    let roles: Vec<&str> = west["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["role"].as_str())
        .collect();
    assert_eq!(roles, ["learner", "voter"], "node {id}");
    // A cluster with a voter is not removed in one go.
    let why =
        m.cp.cli(&["cluster", "remove", "west"])
            .unwrap_err()
            .to_string();
    assert!(why.contains("holds voters"), "{why}");
}
