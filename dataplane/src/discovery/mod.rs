//! Config from the control plane: the agent's side of `trellis.v1.Discovery`.
//!
//! The agent streams from one control-plane node at a time (any of them
//! serves the same state), applies each response whole or refuses it
//! ([`resources`]), rebuilds its mesh view from what it holds, and answers
//! with an ACK or a NACK. What it holds is cached on disk after every
//! applied response, so a restarted agent serves from the cache even while
//! the whole control plane is down. When its node goes away it fails over
//! to the next address it knows (from its token, then from the pushed
//! bundle). Its WorkloadGroup's readiness probe runs here too ([`probe`]),
//! its result reported on the stream.
pub mod probe;
pub mod resources;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use trellis_api::v1::discovery_client::DiscoveryClient;
use trellis_api::v1::{DiscoveryRequest, DiscoveryResponse, HealthReport, ProxyNode};
use trellis_identity::files::write_private;
use trellis_identity::verify::{client_config, Expect, SpiffeServerVerifier};

use crate::mesh::{self, Mesh};
use crate::tls::MeshTls;
use crate::Shared;
pub use resources::{Bundle, Given, Me, Resources};

/// The cache file in the data directory.
pub const CACHE_FILE: &str = "config-cache.json";

/// Largest response the agent takes (full pushes of big meshes).
const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Why a config stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("no TLS client configuration for the control plane: {0}")]
    Tls(#[from] trellis_identity::IdentityError),
    #[error("the control plane refused or broke the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the stream's request side closed")]
    Closed,
}

impl<T> From<mpsc::error::SendError<T>> for StreamError {
    fn from(_: mpsc::error::SendError<T>) -> Self {
        StreamError::Closed
    }
}

/// What the client needs.
pub struct Client {
    /// The view of the mesh in force, replaced at each applied response.
    pub mesh: Arc<Shared<Mesh>>,
    /// The workload's TLS: its certificate, and the trust roots that a
    /// pushed bundle replaces.
    pub tls: Arc<MeshTls>,
    /// The socket mark of the proxy's own connections (with capture).
    pub mark: Option<u32>,
    /// The view's settings from the agent's flags; what `given` leaves
    /// open is taken from the pushed bundle.
    pub settings: mesh::Settings,
    pub given: Given,
    pub node: ProxyNode,
    /// Control-plane addresses known at start (from the token).
    pub addresses: Vec<String>,
    pub cache: PathBuf,
    /// What the agent holds now; starts from the cache.
    pub held: Arc<Shared<Resources>>,
    /// Told when a response was applied (the agent is ready then).
    pub applied: watch::Sender<u64>,
}

/// Loads the cached config, if there is one that reads.
pub fn load_cache(path: &std::path::Path) -> Option<Resources> {
    let bytes = std::fs::read(path).ok()?;
    match Resources::from_cache(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable config cache");
            None
        }
    }
}

impl Client {
    /// Me, for the checks before a response is taken.
    fn me(&self) -> Me {
        Me {
            namespace: self.settings.namespace.clone(),
            labels: self.settings.labels.clone(),
        }
    }

    /// The view's settings with `r`'s bundle: the domain, cluster and
    /// network the flags did not give.
    fn settings_with(&self, r: &Resources) -> mesh::Settings {
        match r.bundle() {
            Some(b) => b.fill(&self.settings, &self.given),
            None => self.settings.clone(),
        }
    }

    /// Puts `r` in force: the mesh view, the trust roots.
    pub fn install(&self, r: &Resources) {
        let prev = self.mesh.load();
        let settings = self.settings_with(r);
        self.mesh
            .store(mesh::build(r.resources(), &settings, Some(&prev)));
        if let Some(b) = r.bundle() {
            match trellis_identity::pem::certs(&b.roots.concat(), "trust bundle") {
                Ok(roots) if roots != self.tls.roots() => {
                    if let Err(e) = self.tls.set_roots(roots) {
                        tracing::warn!(error = %e, "cannot use the pushed trust bundle");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the pushed trust bundle does not read"),
            }
        }
    }

    /// Streams for as long as the agent runs, failing over between nodes.
    pub async fn run(self, health: watch::Receiver<Option<HealthReport>>) {
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(200);
        loop {
            let addrs = self.known_addresses();
            let addr = addrs[next % addrs.len()].clone();
            match self.stream_from(&addr, health.clone()).await {
                Ok(()) => {
                    tracing::warn!(%addr, "the control plane ended the config stream; reconnecting");
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, retry_in = ?backoff, "config stream failed; trying the next control-plane node");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            next += 1;
        }
    }

    /// The nodes of the agent's cluster, the token's addresses, then the
    /// other nodes the bundle told of.
    fn known_addresses(&self) -> Vec<String> {
        let held = self.held.load();
        match held.bundle() {
            Some(b) => b.addresses(&self.addresses, &self.settings_with(&held).cluster),
            None => self.addresses.clone(),
        }
    }

    /// The node sent on a stream: once the bundle said which cluster and
    /// network the agent is on, it says so on every later stream, so that
    /// a node of another cluster it fails over to registers it alike.
    fn node(&self) -> ProxyNode {
        let s = self.settings_with(&self.held.load());
        ProxyNode {
            cluster: s.cluster,
            network: s.network,
            ..self.node.clone()
        }
    }

    async fn stream_from(
        &self,
        addr: &str,
        mut health: watch::Receiver<Option<HealthReport>>,
    ) -> Result<(), StreamError> {
        let tls = &self.tls;
        let verifier = SpiffeServerVerifier::new(
            &tls.roots(),
            Expect::AnyControlPlane {
                trust_domain: tls.identity().trust_domain().to_string(),
            },
        )?;
        let config = Arc::new(client_config(Some(tls.cert().clone()), Arc::new(verifier))?);
        let channel = trellis_identity::grpc::channel(addr, config, self.mark)?;
        let mut client = DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(16);
        let report = health.borrow_and_update().clone();
        tx.send(DiscoveryRequest {
            node: Some(self.node()),
            health: report,
            ..Default::default()
        })
        .await?;
        let mut responses = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(%addr, "streaming config from the control plane");
        // No prober (no WorkloadGroup probe): nothing to report.
        let mut probing = true;
        loop {
            tokio::select! {
                msg = responses.message() => match msg? {
                    Some(resp) => {
                        let answer = self.take(&resp);
                        tx.send(answer).await?;
                    }
                    None => return Ok(()),
                },
                changed = health.changed(), if probing => {
                    if changed.is_err() {
                        probing = false;
                        continue;
                    }
                    let report = health.borrow_and_update().clone();
                    tx.send(DiscoveryRequest { health: report, ..Default::default() }).await?;
                }
            }
        }
    }

    /// Applies `resp` and says how it went (ACK or NACK).
    fn take(&self, resp: &DiscoveryResponse) -> DiscoveryRequest {
        let held = self.held.load();
        let error = match held.apply(resp, &self.me()) {
            Ok(next) => {
                self.install(&next);
                if let Err(e) = write_private(&self.cache, &next.to_cache()) {
                    tracing::warn!(file = %self.cache.display(), error = %e, "cannot write the config cache");
                }
                let counts: BTreeMap<String, usize> = next.counts();
                tracing::info!(version = resp.version, ?counts, "config applied");
                self.held.store(next);
                let _ = self.applied.send(resp.version);
                String::new()
            }
            Err(e) => {
                tracing::error!(version = resp.version, error = %e, "config refused (NACK); the previous config stays in force");
                e
            }
        };
        DiscoveryRequest {
            response_nonce: resp.nonce.clone(),
            error,
            ..Default::default()
        }
    }
}
