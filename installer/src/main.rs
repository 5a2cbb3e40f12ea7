//! `trellis`: parses flags and runs one command.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use trellis::commands::{self, Output};
use trellis::config::{self as cfgcmd, GetOutput};
use trellis::duration::parse_duration;
use trellis_api::v1::CreateTokenRequest;

#[derive(Parser)]
#[command(name = "trellis", version, about = "Operate a Trellis mesh")]
struct Cli {
    /// Admin config file. Default: $TRELLIS_CONFIG, else ~/.config/trellis/config.yaml.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join tokens for control-plane nodes, clusters and VMs.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Control-plane membership.
    #[command(subcommand)]
    Controlplane(ControlplaneCmd),
    /// The mesh's clusters: their networks, control-plane nodes and endpoints.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Raw key-value access to the replicated store (debugging, benchmarks).
    #[command(subcommand)]
    Kv(KvCmd),
    /// Validate Istio resources and store all of them in one write, or none.
    Apply {
        /// File, directory (its .yaml/.yml/.json files) or - for stdin; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show stored resources: `get KIND [NAME]`, KIND as kubectl spells it (vs, virtualservices, ...) or `all`.
    Get {
        kind: String,
        name: Option<String>,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: GetOutput,
    },
    /// Delete resources: `delete KIND NAME...` or `delete -f FILE`, in one write.
    Delete {
        kind: Option<String>,
        names: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
    },
    /// Check Istio resources offline, as apply would, without a control plane: prints every error and warning.
    Validate {
        /// File, directory (its .yaml/.yml/.json files) or - for stdin; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Cross-resource checks of the stored config, with FILEs in place of their stored versions.
    Analyze {
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Every agent: the control-plane node it streams from, versions sent and ACKed, last NACK.
    ProxyStatus {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// This VM in the mesh: `vm join` with a token, `vm leave` (run as root; the trellis-agent package).
    #[command(subcommand)]
    Vm(VmCmd),
    /// Kubernetes: `kube crds` prints the CustomResourceDefinitions of the Istio kinds (the Helm chart's crds/).
    #[command(subcommand)]
    Kube(KubeCmd),
    /// Run a whole mesh on loopback (3 control-plane nodes, bookinfo behind 7 agents), send traffic and show where it went.
    Demo(trellis::demo::DemoArgs),
}

#[derive(Subcommand)]
enum KubeCmd {
    /// Print the CRDs of the Istio kinds Trellis serves, as YAML, for `kubectl apply -f -`.
    Crds,
}

#[derive(Subcommand)]
enum VmCmd {
    /// Join the mesh: redeem the token (verifying the control plane against its pinned root), write /etc/trellis/agent.env and the identity, start trellis-agent and wait until it is ready.
    Join(trellis::vm::JoinArgs),
    /// Leave the mesh: stop and disable trellis-agent (capture goes with it), restore the resolver and agent.env, remove the identity.
    Leave,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; prints it on stdout.
    Create {
        /// controlplane (a new voter), cluster (a cluster's control-plane node), vm (a workload) or gateway (a network's east-west gateway).
        #[arg(long, value_parser = ["controlplane", "cluster", "vm", "gateway"])]
        kind: String,
        /// For cluster tokens: the cluster's name.
        #[arg(long, required_if_eq("kind", "cluster"))]
        cluster: Option<String>,
        /// For cluster tokens: the cluster's network (topology.istio.io/network); for gateway tokens: the network whose east-west gateway it admits.
        #[arg(long, required_if_eq_any([("kind", "cluster"), ("kind", "gateway")]))]
        network: Option<String>,
        /// For vm tokens: the identity NAMESPACE/SERVICEACCOUNT.
        #[arg(long)]
        identity: Option<String>,
        /// For vm tokens: the WorkloadGroup NAMESPACE/NAME the agent registers in; the identity is then its service account.
        #[arg(long)]
        workload_group: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many times the token may be used (default: until it expires).
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List tokens with their status.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ControlplaneCmd {
    /// List nodes: id, address, role, leader, last applied index.
    Members {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove a node from the cluster, online.
    Remove {
        node_id: u64,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Join this host's control-plane node to the mesh: runs `trellis-controlplane join ARGS` (e.g. `--token T --data-dir D --listen ADDR`).
    Join {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Each cluster: network, control-plane nodes with role and freshness, endpoints.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Remove a cluster and everything it registered: its nodes leave the membership, then its records go in one write.
    Remove {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum KvCmd {
    /// Write a key (acknowledged once durable on a majority).
    Put { key: String, value: String },
    /// Read a key from the connected node's replica.
    Get {
        key: String,
        /// Read through the leader after confirming its leadership.
        #[arg(long)]
        linearizable: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let cfg = cli.config.as_deref();
    let res = match cli.command {
        Cmd::Token(TokenCmd::Create {
            kind,
            cluster,
            network,
            identity,
            workload_group,
            ttl,
            uses,
        }) => {
            let req = CreateTokenRequest {
                kind,
                identity: identity.unwrap_or_default(),
                ttl_seconds: ttl.as_secs(),
                max_uses: uses.unwrap_or(0),
                workload_group: workload_group.unwrap_or_default(),
                cluster: cluster.unwrap_or_default(),
                network: network.unwrap_or_default(),
            };
            commands::token_create(cfg, req).await
        }
        Cmd::Token(TokenCmd::List { output }) => commands::token_list(cfg, output).await,
        Cmd::Token(TokenCmd::Revoke { id }) => commands::token_revoke(cfg, id).await,
        Cmd::Controlplane(ControlplaneCmd::Members { output }) => {
            commands::members(cfg, output).await
        }
        Cmd::Controlplane(ControlplaneCmd::Remove { node_id, output }) => {
            commands::remove(cfg, node_id, output).await
        }
        Cmd::Cluster(ClusterCmd::Join { args }) => commands::cluster_join(&args),
        Cmd::Cluster(ClusterCmd::List { output }) => commands::cluster_list(cfg, output).await,
        Cmd::Cluster(ClusterCmd::Remove { name, output }) => {
            commands::cluster_remove(cfg, name, output).await
        }
        Cmd::Kv(KvCmd::Put { key, value }) => commands::kv_put(cfg, key, value).await,
        Cmd::Kv(KvCmd::Get { key, linearizable }) => commands::kv_get(cfg, key, linearizable).await,
        Cmd::Apply { files, dry_run } => cfgcmd::apply(cfg, &files, dry_run).await,
        Cmd::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let ns = (!all_namespaces).then_some(namespace.as_str());
            cfgcmd::get(cfg, &kind, name, ns, output).await
        }
        Cmd::Delete {
            kind,
            names,
            namespace,
            files,
        } => cfgcmd::delete(cfg, kind, names, &namespace, &files).await,
        Cmd::Validate { files } => {
            cfgcmd::read_sources(&files).and_then(|s| trellis::validate::validate(&s))
        }
        Cmd::Analyze { files, output } => cfgcmd::analyze(cfg, &files, output).await,
        Cmd::ProxyStatus { output } => cfgcmd::proxy_status(cfg, output).await,
        Cmd::Demo(args) => trellis::demo::run(args).await,
        Cmd::Vm(VmCmd::Join(args)) => trellis::vm::join(args).await,
        Cmd::Vm(VmCmd::Leave) => trellis::vm::leave(),
        Cmd::Kube(KubeCmd::Crds) => {
            trellis_kubernetes::crd::crds_yaml().map(|yaml| print!("{yaml}"))
        }
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
