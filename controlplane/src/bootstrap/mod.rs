//! Starting a node: `init` (a new mesh), `join` (with a token) and `run`
//! (restart from the data directory). `main.rs` parses flags and calls
//! these. What a node keeps for itself is its `node.json` ([`local`]).
mod error;
mod http;
pub mod local;
mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use openraft::BasicNode;
use tokio::net::TcpListener;
use trellis_api::topology;
use trellis_api::v1::join_client::JoinClient;
use trellis_api::v1::AddNodeRequest;
use trellis_api::v1::{JoinClusterRequest, JoinControlPlaneRequest};
use trellis_identity::admin_config::AdminConfig;
use trellis_identity::files::write_private;
use trellis_identity::verify::{
    client_config, server_config, CertCell, Expect, Identity, PinnedRootVerifier,
    SpiffeServerVerifier,
};
use trellis_identity::{csr, grpc, pem, SpiffeId};
use trellis_transport::drain::shutdown_signal;
use trellis_transport::notify::Notifier;

pub use error::BootstrapError;
use local::LocalState;

use crate::ca::{IntermediateCa, RootCa, SealKey, DEFAULT_INTERMEDIATE_LIFETIME};
use crate::node::{CaKeys, Node, NodeIdentity, Settings};
use crate::raft::state::{Bootstrap, ClusterRecord, NodeRecord, SEAL_CHECK_TEXT};
use crate::raft::{Command, MeshInfo};
use crate::tokens::JoinToken;

/// Lifetime of a node's own serving certificate; a new one is issued at
/// every start.
const SERVING_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of the admin client certificate written by `init`.
const ADMIN_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where the CA key (that seals CA private keys at rest) comes from.
#[derive(Clone, Debug, Default)]
pub struct CaKeySource {
    /// `--ca-key-file`.
    pub file: Option<PathBuf>,
    /// `TRELLIS_CA_KEY`: the key itself, base64.
    pub value: Option<String>,
}

impl CaKeySource {
    fn default_file(data_dir: &Path) -> PathBuf {
        data_dir.join("ca.key")
    }

    /// The given key, else `DATA_DIR/ca.key` if present.
    fn load(&self, data_dir: &Path) -> Result<Option<SealKey>, BootstrapError> {
        let key = if let Some(v) = &self.value {
            SealKey::from_base64(v)
        } else if let Some(f) = &self.file {
            SealKey::load(f)
        } else {
            let default = Self::default_file(data_dir);
            if !default.exists() {
                return Ok(None);
            }
            SealKey::load(&default)
        };
        key.map(Some).map_err(BootstrapError::CaKey)
    }

    fn require(&self, data_dir: &Path) -> Result<SealKey, BootstrapError> {
        self.load(data_dir)?.ok_or(BootstrapError::NoCaKey)
    }
}

fn host_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
        .unwrap_or_else(|| addr.to_string())
}

/// What `init` is told about the new mesh and where its first node is.
#[derive(Clone, Debug)]
pub struct NewMesh {
    pub trust_domain: String,
    /// The DNS domain of service names (`NAME.NS.svc.DOMAIN`).
    pub domain: String,
    /// The first cluster, its network, and this node's locality.
    pub cluster: String,
    pub network: String,
    pub locality: String,
}

impl NewMesh {
    fn validate(&self) -> Result<(), BootstrapError> {
        trellis_identity::spiffe::validate_trust_domain(&self.trust_domain)
            .map_err(|reason| BootstrapError::TrustDomain { reason })?;
        let flag = |flag: &'static str| move |reason| BootstrapError::Topology { flag, reason };
        topology::validate_domain(&self.domain).map_err(flag("--domain"))?;
        topology::validate_name("cluster", &self.cluster).map_err(flag("--cluster"))?;
        topology::validate_name("network", &self.network).map_err(flag("--network"))?;
        topology::Locality::parse(&self.locality).map_err(flag("--locality"))?;
        Ok(())
    }
}

/// Starts a new mesh on this node, then runs it.
pub async fn init(
    new: &NewMesh,
    advertise: &str,
    settings: Settings,
    key: CaKeySource,
) -> Result<(), BootstrapError> {
    let dir = settings.data_dir.clone();
    if LocalState::exists(&dir) {
        eprintln!(
            "{} is already initialized; starting the node",
            dir.display()
        );
        return run(settings, key, None).await;
    }
    new.validate()?;
    let trust_domain = new.trust_domain.as_str();
    create_data_dir(&dir)?;
    let seal = match key.load(&dir)? {
        Some(k) => k,
        None => {
            let k = SealKey::generate();
            let path = CaKeySource::default_file(&dir);
            write_private(&path, format!("{}\n", k.to_base64()).as_bytes()).map_err(|source| {
                BootstrapError::WriteCaKey {
                    path: path.clone(),
                    source,
                }
            })?;
            eprintln!(
                "generated the CA key in {} (mode 0600): every control-plane node needs it \
                 (--ca-key-file); back it up apart from the data directory",
                path.display()
            );
            k
        }
    };
    let root = RootCa::generate(trust_domain)?;
    let inter_req = csr::generate_ca_csr().map_err(BootstrapError::Csr)?;
    let inter_pem =
        root.sign_intermediate(&inter_req.csr_pem, "node-1", DEFAULT_INTERMEDIATE_LIFETIME)?;
    let inter = IntermediateCa::from_pem(&inter_pem, &inter_req.key_pem, root.cert_pem())?;
    let mesh = MeshInfo {
        trust_domain: trust_domain.to_string(),
        root_cert_pem: root.cert_pem().to_string(),
        sealed_root_key: seal.seal(root.key_pem().as_bytes()),
        seal_check: seal.seal(SEAL_CHECK_TEXT),
    };
    let local = LocalState {
        node_id: 1,
        trust_domain: trust_domain.to_string(),
        address: advertise.to_string(),
        root_cert_pem: root.cert_pem().to_string(),
        intermediate_cert_pem: inter_pem,
        sealed_intermediate_key: B64.encode(seal.seal(inter_req.key_pem.as_bytes())),
        pending_mesh: Some(mesh),
        pending_domain: Some(new.domain.clone()),
        cluster: new.cluster.clone(),
        network: new.network.clone(),
        locality: new.locality.clone(),
        joined: true,
        seeds: Vec::new(),
        learner: false,
        own_key_only: false,
    };
    let (admin_cert, admin_key) = inter.issue_local(
        &SpiffeId::admin(trust_domain).to_string(),
        &[],
        ADMIN_CERT_TTL,
    )?;
    let admin = AdminConfig {
        trust_domain: trust_domain.to_string(),
        controlplanes: vec![advertise.to_string()],
        trust_bundle: root.cert_pem().to_string(),
        certificate: admin_cert.chain_pem.concat(),
        key: admin_key,
    };
    let admin_path = dir.join("admin.yaml");
    admin.save(&admin_path)?;
    local.save(&dir)?;
    println!(
        "initialized mesh {trust_domain} (root sha256:{}): cluster {} on network {}, \
         service names NAME.NS.svc.{}",
        hex::encode(root.fingerprint_sha256()),
        new.cluster,
        new.network,
        new.domain
    );
    println!(
        "admin config: {} (use: export TRELLIS_CONFIG={})",
        admin_path.display(),
        admin_path.display()
    );
    run(settings, key, Some(seal)).await
}

/// How a node joins, besides its token.
#[derive(Clone, Debug, Default)]
pub struct JoinOptions {
    /// `--voter` (`Some(true)`) or `--learner` (`Some(false)`); `None`: a
    /// control-plane token's node is a voter, a cluster token's a learner.
    pub voter: Option<bool>,
    /// `--cluster`: the cluster a cluster token's node says it joins,
    /// checked against the token's.
    pub cluster: Option<String>,
    /// `--locality` of a cluster's node.
    pub locality: Option<String>,
}

/// Joins an existing mesh with a control-plane or cluster token, then
/// runs.
pub async fn join(
    token: &str,
    advertise: &str,
    opts: JoinOptions,
    settings: Settings,
    key: CaKeySource,
) -> Result<(), BootstrapError> {
    let dir = settings.data_dir.clone();
    if LocalState::exists(&dir) {
        eprintln!("{} has already joined; starting the node", dir.display());
        return run(settings, key, None).await;
    }
    let token_str = token.trim();
    let token = JoinToken::parse(token_str)?;
    if token.cluster.is_some() {
        return join_cluster(token_str, token, advertise, opts, settings, key).await;
    }
    if opts.cluster.is_some() {
        return Err(BootstrapError::ClusterFlag { flag: "--cluster" });
    }
    if opts.locality.is_some() {
        return Err(BootstrapError::ClusterFlag { flag: "--locality" });
    }
    let learner = opts.voter == Some(false);
    let seal = key.require(&dir)?;
    let req = csr::generate_ca_csr().map_err(BootstrapError::Csr)?;
    let (channel, addr) = connect_pinned(&token).await?;
    let resp = JoinClient::new(channel)
        .join_control_plane(JoinControlPlaneRequest {
            token: token_str.to_string(),
            intermediate_csr_pem: req.csr_pem.clone(),
            address: advertise.to_string(),
        })
        .await
        .map_err(|status| BootstrapError::JoinRefused {
            addr: addr.clone(),
            status,
        })?
        .into_inner();
    check_root(&resp.root_cert_pem, &token, &addr)?;
    check_seal(&seal, &resp.seal_check)?;
    IntermediateCa::from_pem(
        &resp.intermediate_cert_pem,
        &req.key_pem,
        &resp.root_cert_pem,
    )?;
    create_data_dir(&dir)?;
    let local = LocalState {
        node_id: resp.node_id,
        trust_domain: resp.trust_domain.clone(),
        address: advertise.to_string(),
        root_cert_pem: resp.root_cert_pem,
        intermediate_cert_pem: resp.intermediate_cert_pem,
        sealed_intermediate_key: B64.encode(seal.seal(req.key_pem.as_bytes())),
        pending_mesh: None,
        pending_domain: None,
        cluster: String::new(),
        network: String::new(),
        locality: String::new(),
        joined: false,
        seeds: token.addrs.clone(),
        learner,
        own_key_only: false,
    };
    local.save(&dir)?;
    println!(
        "joined mesh {} as node {} ({})",
        resp.trust_domain,
        resp.node_id,
        if learner { "learner" } else { "voter" }
    );
    run(settings, key, Some(seal)).await
}

/// A cluster's node joins with a cluster token: as a learner it makes a
/// CA key of its own that seals only its intermediate's key; as a voter
/// it needs the mesh's CA key, as a control-plane token's node does.
async fn join_cluster(
    token_str: &str,
    token: JoinToken,
    advertise: &str,
    opts: JoinOptions,
    settings: Settings,
    key: CaKeySource,
) -> Result<(), BootstrapError> {
    let dir = settings.data_dir.clone();
    let voter = opts.voter == Some(true);
    let seal = if voter {
        key.require(&dir)?
    } else if key.file.is_some() || key.value.is_some() {
        return Err(BootstrapError::LearnerCaKey);
    } else {
        SealKey::generate()
    };
    let req = csr::generate_ca_csr().map_err(BootstrapError::Csr)?;
    let (channel, addr) = connect_pinned(&token).await?;
    let resp = JoinClient::new(channel)
        .join_cluster(JoinClusterRequest {
            token: token_str.to_string(),
            intermediate_csr_pem: req.csr_pem.clone(),
            address: advertise.to_string(),
            cluster: opts.cluster.clone().unwrap_or_default(),
            locality: opts.locality.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| BootstrapError::JoinRefused {
            addr: addr.clone(),
            status,
        })?
        .into_inner();
    check_root(&resp.root_cert_pem, &token, &addr)?;
    if voter {
        check_seal(&seal, &resp.seal_check)?;
    }
    IntermediateCa::from_pem(
        &resp.intermediate_cert_pem,
        &req.key_pem,
        &resp.root_cert_pem,
    )?;
    create_data_dir(&dir)?;
    if !voter {
        let path = CaKeySource::default_file(&dir);
        write_private(&path, format!("{}\n", seal.to_base64()).as_bytes())
            .map_err(|source| BootstrapError::WriteCaKey { path, source })?;
    }
    let local = LocalState {
        node_id: resp.node_id,
        trust_domain: resp.trust_domain.clone(),
        address: advertise.to_string(),
        root_cert_pem: resp.root_cert_pem,
        intermediate_cert_pem: resp.intermediate_cert_pem,
        sealed_intermediate_key: B64.encode(seal.seal(req.key_pem.as_bytes())),
        pending_mesh: None,
        pending_domain: None,
        cluster: resp.cluster.clone(),
        network: resp.network.clone(),
        locality: opts.locality.unwrap_or_default(),
        joined: false,
        seeds: token.addrs.clone(),
        learner: !voter,
        own_key_only: !voter,
    };
    local.save(&dir)?;
    println!(
        "joined mesh {} as node {} ({}) of cluster {} on network {}",
        resp.trust_domain,
        resp.node_id,
        if voter { "voter" } else { "learner" },
        resp.cluster,
        resp.network
    );
    run(settings, key, Some(seal)).await
}

/// A channel to the first of the token's addresses whose server proves a
/// chain holding the pinned root: nothing is trusted before that.
async fn connect_pinned(
    token: &JoinToken,
) -> Result<(tonic::transport::Channel, String), BootstrapError> {
    let tls = Arc::new(client_config(
        None,
        Arc::new(PinnedRootVerifier::new(token.root_pin)),
    )?);
    Ok(grpc::connect_any(&token.addrs, tls, None).await?)
}

/// The root certificate a join answer carries is the pinned one.
fn check_root(root_pem: &str, token: &JoinToken, addr: &str) -> Result<(), BootstrapError> {
    let root = pem::certs(root_pem, "root certificate")?;
    if trellis_identity::sha256(&root[0]) != token.root_pin {
        return Err(BootstrapError::RootPin {
            addr: addr.to_string(),
        });
    }
    Ok(())
}

/// The CA key given opens the mesh's seal check.
fn check_seal(seal: &SealKey, seal_check: &[u8]) -> Result<(), BootstrapError> {
    match seal.open(seal_check) {
        Ok(t) if t == SEAL_CHECK_TEXT => Ok(()),
        _ => Err(BootstrapError::WrongCaKey),
    }
}

/// Runs the node in `settings.data_dir` until SIGINT or SIGTERM.
pub async fn run(
    settings: Settings,
    key: CaKeySource,
    seal: Option<SealKey>,
) -> Result<(), BootstrapError> {
    let dir = settings.data_dir.clone();
    let seal = match seal {
        Some(s) => s,
        None => key.require(&dir)?,
    };
    let local = LocalState::load(&dir)?;
    let sealed = B64
        .decode(&local.sealed_intermediate_key)
        .map_err(BootstrapError::SealedKeyEncoding)?;
    let inter_key = seal
        .open(&sealed)
        .map_err(BootstrapError::IntermediateKey)?;
    let inter_key = String::from_utf8(inter_key).map_err(BootstrapError::IntermediateKeyText)?;
    let inter = IntermediateCa::from_pem(
        &local.intermediate_cert_pem,
        &inter_key,
        &local.root_cert_pem,
    )?;

    let kube = match &settings.kubernetes {
        Some(source) => Some(
            trellis_kubernetes::client::client(source)
                .await
                .map_err(BootstrapError::Kubernetes)?,
        ),
        None => None,
    };
    let me = SpiffeId::controlplane(&local.trust_domain, &format!("node-{}", local.node_id));
    let mut names = vec![host_of(&local.address)];
    if let Some(kube) = &kube {
        for name in webhook::names(kube, &settings.webhooks) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let serving = Serving { me, names };
    let cert = CertCell::new(&serving.identity(&inter, &local)?)?;
    let roots = pem::certs(&local.root_cert_pem, "root certificate")?;
    let server_tls = Arc::new(server_config(cert.clone(), &roots)?);
    let peer_tls = Arc::new(client_config(
        Some(cert.clone()),
        Arc::new(SpiffeServerVerifier::new(
            &roots,
            Expect::AnyControlPlane {
                trust_domain: local.trust_domain.clone(),
            },
        )?),
    )?);

    let replica = crate::raft::start(local.node_id, &dir, &settings.raft, peer_tls.clone()).await?;
    let raft = replica.raft.clone();
    // Refuse to run with a CA key that cannot open the mesh's root key,
    // unless the key is this node's own (a cluster's learner).
    let mesh = replica
        .state
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .store
        .mesh();
    if let (Some(mesh), false) = (mesh, local.own_key_only) {
        seal.open(&mesh.sealed_root_key)
            .map_err(BootstrapError::RootKey)?;
    }
    let listen = settings
        .listen
        .clone()
        .unwrap_or_else(|| local.address.clone());
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|source| BootstrapError::Bind {
            addr: listen.clone(),
            source,
        })?;
    let identity = NodeIdentity {
        id: local.node_id,
        trust_domain: local.trust_domain.clone(),
        address: local.address.clone(),
    };
    let keys = CaKeys {
        intermediate: inter,
        seal: (!local.own_key_only).then_some(seal),
    };
    let node = Arc::new(Node::new(
        identity,
        replica,
        settings,
        keys,
        peer_tls,
        kube.clone(),
    ));
    if let Some(kube) = kube {
        let port = local.address.rsplit_once(':').map_or("15012", |(_, p)| p);
        webhook::start(node.clone(), kube, cert.clone(), port).await?;
    }
    if let Some(listen) = node.settings.http_listen {
        http::start(node.clone(), listen).await?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        crate::api::router(node.clone()).serve_with_incoming_shutdown(
            grpc::incoming(listener, server_tls),
            async {
                let _ = stop_rx.await;
            },
        ),
    );

    // Serving once the mesh is written (init) and this node is a member
    // (join): then systemd hears READY=1.
    let mut setup = Vec::new();
    if let Some(mesh) = local.pending_mesh.clone() {
        if !raft
            .is_initialized()
            .await
            .map_err(|e| BootstrapError::RaftStopped(Box::new(e)))?
        {
            let members = BTreeMap::from([(local.node_id, BasicNode::new(local.address.clone()))]);
            raft.initialize(members)
                .await
                .map_err(|e| BootstrapError::Initialize(Box::new(e)))?;
        }
        setup.push(tokio::spawn(finish_init(
            node.clone(),
            bootstrap_of(&local, mesh),
            dir.clone(),
        )));
    }
    if !local.joined {
        setup.push(tokio::spawn(request_membership(
            node.clone(),
            local.clone(),
            dir.clone(),
        )));
    }
    tokio::spawn(renew_serving_cert(
        node.clone(),
        cert,
        serving,
        local.clone(),
    ));
    tokio::spawn(crate::discovery::sweep_forever(node.clone()));
    tokio::spawn(crate::discovery::stamp::stamp_forever(node.clone()));
    if let Some(client) = node.kube.clone() {
        tokio::spawn(crate::discovery::kubernetes::discover_forever(
            node.clone(),
            client.clone(),
        ));
        tokio::spawn(crate::discovery::kubernetes::publish_roots(
            node.clone(),
            client,
        ));
    }
    let notifier = Notifier::from_env().map(Arc::new);
    if let Some(n) = &notifier {
        n.feed_watchdog();
    }
    println!(
        "ready: node {} of {} serving on {}",
        local.node_id, local.trust_domain, local.address
    );
    let status = format!("node {} serving on {}", local.node_id, local.address);
    let told = notifier.clone();
    let serving = node.clone();
    tokio::spawn(async move {
        for task in setup {
            let _ = task.await;
        }
        serving.stats.serving.store(true, Ordering::Relaxed);
        if let Some(n) = told {
            n.ready(&status);
        }
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(n) = &notifier {
        n.stopping();
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    raft.shutdown().await.map_err(BootstrapError::Shutdown)?;
    Ok(())
}

/// Who this node's serving certificate says it is: its SPIFFE ID, and
/// the names clients reach it by (its address; with `--kubernetes`, the
/// webhooks' names too).
struct Serving {
    me: SpiffeId,
    names: Vec<String>,
}

impl Serving {
    /// This node's serving certificate, issued by its own intermediate,
    /// with the root appended so a joining node can match it against its
    /// pin.
    fn identity(
        &self,
        inter: &IntermediateCa,
        local: &LocalState,
    ) -> Result<Identity, BootstrapError> {
        let (serving, key) =
            inter.issue_local(&self.me.to_string(), &self.names, SERVING_CERT_TTL)?;
        let chain = format!("{}{}", serving.chain_pem.concat(), local.root_cert_pem);
        Ok(Identity::from_pem(&chain, &key)?)
    }
}

fn create_data_dir(dir: &Path) -> Result<(), BootstrapError> {
    std::fs::create_dir_all(dir).map_err(|source| BootstrapError::DataDir {
        path: dir.to_path_buf(),
        source,
    })
}

/// Renews the serving certificate at half its lifetime for as long as the
/// node runs: open connections keep theirs, new handshakes get the new one.
async fn renew_serving_cert(
    node: Arc<Node>,
    cert: Arc<CertCell>,
    serving: Serving,
    local: LocalState,
) {
    let mut wait = SERVING_CERT_TTL / 2;
    loop {
        tokio::time::sleep(wait).await;
        match serving
            .identity(&node.intermediate, &local)
            .and_then(|id| Ok(cert.set(&id)?))
        {
            Ok(()) => {
                tracing::info!("renewed the serving certificate");
                wait = SERVING_CERT_TTL / 2;
            }
            Err(e) => {
                tracing::error!(error = %grpc::error_chain(&e), "renewing the serving certificate; retrying in a minute");
                wait = Duration::from_secs(60);
            }
        }
    }
}

/// What the first node writes: the mesh record, its domain, the first
/// cluster and the node itself.
fn bootstrap_of(local: &LocalState, mesh: MeshInfo) -> Bootstrap {
    Bootstrap {
        mesh,
        next_node_id: local.node_id + 1,
        domain: local
            .pending_domain
            .clone()
            .unwrap_or_else(|| topology::DEFAULT_DOMAIN.to_string()),
        cluster: local.cluster.clone(),
        record: ClusterRecord {
            network: local.network.clone(),
            joined_at: crate::node::now(),
        },
        node_id: local.node_id,
        node: NodeRecord {
            cluster: local.cluster.clone(),
            locality: local.locality.clone(),
        },
    }
}

/// Writes the mesh record of a new mesh with its topology (retrying until
/// this node leads), then forgets it locally.
async fn finish_init(node: Arc<Node>, init: Bootstrap, dir: PathBuf) {
    loop {
        if node.mesh().is_some() {
            break;
        }
        match node.write(Command::Bootstrap(Box::new(init.clone()))).await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e.message(), "writing the mesh record; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    match LocalState::load(&dir) {
        Ok(mut local) => {
            local.pending_mesh = None;
            local.pending_domain = None;
            if let Err(e) = local.save(&dir) {
                tracing::warn!(error = %grpc::error_chain(&e), "saving node.json");
            }
        }
        Err(e) => tracing::warn!(error = %grpc::error_chain(&e), "reading node.json"),
    }
}

/// Asks the cluster, through any known node, to add this node; retries
/// until it is a member.
async fn request_membership(node: Arc<Node>, mut local: LocalState, dir: PathBuf) {
    let mut attempt = 0u32;
    loop {
        for seed in &local.seeds {
            let Ok(mut client) = node.peer_client(seed) else {
                continue;
            };
            let req = AddNodeRequest {
                node_id: local.node_id,
                address: local.address.clone(),
                learner: local.learner,
            };
            match client.add_node(req).await {
                Ok(_) => {
                    tracing::info!(node_id = local.node_id, "added to the cluster");
                    local.joined = true;
                    if let Err(e) = local.save(&dir) {
                        tracing::warn!(error = %grpc::error_chain(&e), "saving node.json");
                    }
                    return;
                }
                Err(s) => tracing::warn!(seed = %seed, error = %s.message(), "asking to be added"),
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
    }
}
