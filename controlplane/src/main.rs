//! `trellis-controlplane`: parses flags and starts a node.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use trellis_api::topology;
use trellis_controlplane::bootstrap::{self, CaKeySource, JoinOptions, NewMesh};
use trellis_controlplane::node::{HttpListen, Settings};
use trellis_controlplane::raft::RaftSettings;

mod systemd;

#[derive(Parser)]
#[command(
    name = "trellis-controlplane",
    version,
    about = "The Trellis control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a new mesh on this node: generate the root CA, this node's
    /// intermediate and the admin config (DATA_DIR/admin.yaml), then serve.
    Init {
        /// Trust domain of the mesh, e.g. example.org.
        #[arg(long, env = "TRELLIS_TRUST_DOMAIN")]
        trust_domain: String,
        /// DNS domain of service names (NAME.NS.svc.DOMAIN), the same in every cluster and on every VM.
        #[arg(long, env = "TRELLIS_DOMAIN", default_value = topology::DEFAULT_DOMAIN)]
        domain: String,
        /// Name of the first cluster, the one this node belongs to.
        #[arg(long, env = "TRELLIS_CLUSTER", default_value = topology::DEFAULT_CLUSTER)]
        cluster: String,
        /// Network of the first cluster (topology.istio.io/network).
        #[arg(long, env = "TRELLIS_NETWORK", default_value = topology::DEFAULT_NETWORK)]
        network: String,
        /// This node's locality, REGION[/ZONE[/SUBZONE]].
        #[arg(long, env = "TRELLIS_LOCALITY", default_value = "")]
        locality: String,
        #[command(flatten)]
        node: NodeFlags,
    },
    /// Join an existing mesh with a token from `trellis token create --kind
    /// controlplane` (a voter; needs the CA key) or `--kind cluster` (a
    /// cluster's node: a learner with a CA of its own, no CA key), then serve.
    Join {
        /// The join token.
        #[arg(long, env = "TRELLIS_TOKEN")]
        token: String,
        /// Join as a learner: replicates and serves reads but never votes
        /// (the default with a cluster token).
        #[arg(long, conflicts_with = "voter")]
        learner: bool,
        /// Join as a voter (the default with a control-plane token); with a
        /// cluster token this needs the mesh's CA key, as voters sign
        /// intermediates.
        #[arg(long)]
        voter: bool,
        /// With a cluster token: the cluster this node joins; refused if the
        /// token is for another cluster. Default: the token's.
        #[arg(long, env = "TRELLIS_CLUSTER")]
        cluster: Option<String>,
        /// With a cluster token: this node's locality, REGION[/ZONE[/SUBZONE]].
        #[arg(long, env = "TRELLIS_LOCALITY")]
        locality: Option<String>,
        #[command(flatten)]
        node: NodeFlags,
    },
    /// Restart a node from its data directory.
    Run {
        #[command(flatten)]
        node: NodeFlags,
    },
}

/// Where `init` and `join` listen unless told otherwise.
const DEFAULT_LISTEN: &str = "127.0.0.1:15012";
/// Where /ready and /metrics are served unless told otherwise.
const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:15014";

/// `--http-listen`'s value: an address, or none.
#[derive(Clone, Copy, Debug)]
struct HttpAddr(Option<std::net::SocketAddr>);

/// `--http-listen`: an address, or `off`/empty for none.
fn parse_http_listen(s: &str) -> Result<HttpAddr, String> {
    match s.trim() {
        "" | "off" => Ok(HttpAddr(None)),
        a => a.parse().map(|a| HttpAddr(Some(a))).map_err(|e| {
            format!("{e}: give IP:PORT (e.g. 0.0.0.0:15014), or `off` to serve no HTTP")
        }),
    }
}

#[derive(Args)]
struct NodeFlags {
    /// Directory of this node's store, keys and certificates.
    #[arg(long, env = "TRELLIS_DATA_DIR", required_unless_present = "systemd")]
    data_dir: Option<PathBuf>,
    /// For `init` and `join`, as root with the trellis-controlplane package:
    /// make the node for trellis-controlplane.service (as the user trellis,
    /// in /var/lib/trellis/controlplane), write --listen, --advertise and
    /// --ca-key-file to /etc/trellis/controlplane.env, and start the unit.
    #[arg(long, conflicts_with = "data_dir")]
    systemd: bool,
    /// Address of the gRPC port (Raft, agents, admin). Default for `init`
    /// and `join`: 127.0.0.1:15012; for `run`: the address the node was
    /// created with.
    #[arg(long, env = "TRELLIS_LISTEN")]
    listen: Option<String>,
    /// Address other nodes and clients use to reach this one, if not --listen.
    #[arg(long, env = "TRELLIS_ADVERTISE")]
    advertise: Option<String>,
    /// File holding the CA key (base64) that seals CA private keys at rest;
    /// TRELLIS_CA_KEY may hold the key itself. Default: DATA_DIR/ca.key.
    #[arg(long, env = "TRELLIS_CA_KEY_FILE")]
    ca_key_file: Option<PathBuf>,
    /// Raft heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum election timeout, milliseconds (the maximum is twice this).
    /// A follower also refuses to vote until the maximum has passed since
    /// it last heard from a leader, so a failover takes about 2 to 3 times
    /// this value.
    #[arg(long, default_value_t = 300)]
    election_timeout_ms: u64,
    /// Take a snapshot and compact the log every this many entries.
    #[arg(long, default_value_t = 5000)]
    snapshot_every: u64,
    /// Entries kept in the log below a snapshot, so that a follower a little
    /// behind catches up from the log instead of a whole snapshot.
    #[arg(long, default_value_t = 1000)]
    keep_logs: u64,
    /// Size in bytes at which a Raft log segment file is closed; compaction
    /// deletes whole segments.
    #[arg(long, default_value_t = 16 << 20)]
    wal_segment_bytes: u64,
    /// Default lifetime of issued workload certificates, seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    cert_ttl_secs: u64,
    /// Longest lifetime a workload certificate may ask for, seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    max_cert_ttl_secs: u64,
    /// How long a registered workload stays after its agent disconnected,
    /// seconds (it may be failing over to another node).
    #[arg(long, env = "TRELLIS_WORKLOAD_GRACE_SECS", default_value_t = 10)]
    workload_grace_secs: u64,
    /// Seconds after which another cluster not heard from (its
    /// control-plane nodes stamp it through Raft every few seconds) has its
    /// registered endpoints pushed as not ready, so that callers fail over.
    #[arg(long, env = "TRELLIS_CLUSTER_STALE_AFTER", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..))]
    cluster_stale_after: u64,
    /// The API server of the Kubernetes cluster this node runs in:
    /// `in-cluster` (the pod's service account) or a kubeconfig file.
    #[arg(long, env = "TRELLIS_KUBERNETES")]
    kubernetes: Option<trellis_kubernetes::client::Source>,
    /// With --kubernetes: where the admission webhooks (sidecar injection
    /// at /inject, validation at /validate) listen, HTTPS.
    #[arg(long, env = "TRELLIS_WEBHOOK_LISTEN", default_value = "0.0.0.0:15017")]
    webhook_listen: std::net::SocketAddr,
    /// Where `GET /ready` and `GET /metrics` (Prometheus) are served, plain
    /// HTTP; `off` for nowhere. Default 0.0.0.0:15014; when that
    /// port is taken (several nodes on one host) the node warns and goes on
    /// without it, while an address given here must bind.
    #[arg(long, env = "TRELLIS_HTTP_LISTEN", value_parser = parse_http_listen)]
    http_listen: Option<HttpAddr>,
    /// With --kubernetes: the image of the containers injected into pods
    /// (the agent, and the init container that installs capture).
    #[arg(long, env = "TRELLIS_AGENT_IMAGE", default_value = concat!("trellis/trellis-agent:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
}

impl NodeFlags {
    /// What `run` needs in controlplane.env that the node's state does
    /// not keep.
    fn unit_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        vars.extend(self.listen.clone().map(|v| ("TRELLIS_LISTEN", v)));
        vars.extend(self.advertise.clone().map(|v| ("TRELLIS_ADVERTISE", v)));
        let key = self.ca_key_file.as_ref();
        vars.extend(key.map(|v| ("TRELLIS_CA_KEY_FILE", v.display().to_string())));
        vars
    }

    fn settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone().unwrap_or_default(),
            listen: self.listen.clone(),
            raft: RaftSettings {
                heartbeat: Duration::from_millis(self.heartbeat_ms),
                election_timeout: (
                    Duration::from_millis(self.election_timeout_ms),
                    Duration::from_millis(self.election_timeout_ms * 2),
                ),
                snapshot_every: self.snapshot_every,
                keep_logs: self.keep_logs,
                wal_segment_bytes: self.wal_segment_bytes,
            },
            leaf_ttl: Duration::from_secs(self.cert_ttl_secs),
            max_leaf_ttl: Duration::from_secs(self.max_cert_ttl_secs),
            workload_grace: Duration::from_secs(self.workload_grace_secs),
            cluster_stale_after: Duration::from_secs(self.cluster_stale_after),
            kubernetes: self.kubernetes.clone(),
            http_listen: match self.http_listen {
                None => Some(HttpListen {
                    addr: DEFAULT_HTTP_LISTEN.parse().expect("a socket address"),
                    required: false,
                }),
                Some(HttpAddr(given)) => given.map(|addr| HttpListen {
                    addr,
                    required: true,
                }),
            },
            webhooks: trellis_kubernetes::webhook::Options {
                listen: self.webhook_listen,
                agent_image: self.agent_image.clone(),
            },
        }
    }

    fn advertise(&self) -> String {
        self.advertise
            .clone()
            .or_else(|| self.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string())
    }

    fn key(&self) -> CaKeySource {
        CaKeySource {
            file: self.ca_key_file.clone(),
            value: std::env::var("TRELLIS_CA_KEY")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| {
                "warn,trellis_controlplane=info,trellis_kubernetes=info".into()
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let node = match &cli.command {
        Cmd::Init { node, .. } | Cmd::Join { node, .. } | Cmd::Run { node } => node,
    };
    if node.systemd {
        let res = match cli.command {
            Cmd::Run { .. } => Err(anyhow::anyhow!(
                "--systemd is for init and join; the unit runs `run` by itself"
            )),
            _ => systemd::set_up(&node.unit_vars()),
        };
        if let Err(e) = res {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let res = match cli.command {
        Cmd::Init {
            trust_domain,
            domain,
            cluster,
            network,
            locality,
            node,
        } => {
            let new = NewMesh {
                trust_domain,
                domain,
                cluster,
                network,
                locality,
            };
            bootstrap::init(&new, &node.advertise(), node.settings(), node.key()).await
        }
        Cmd::Join {
            token,
            learner,
            voter,
            cluster,
            locality,
            node,
        } => {
            let opts = JoinOptions {
                voter: (voter || learner).then_some(voter),
                cluster,
                locality,
            };
            bootstrap::join(&token, &node.advertise(), opts, node.settings(), node.key()).await
        }
        Cmd::Run { node } => bootstrap::run(node.settings(), node.key(), None).await,
    };
    if let Err(e) = res {
        // With its causes, one after the other.
        eprintln!("error: {:#}", anyhow::Error::from(e));
        std::process::exit(1);
    }
}
