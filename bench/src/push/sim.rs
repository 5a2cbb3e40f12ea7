//! Simulated agents for `trellis-bench push`: real `Discovery` streams over
//! mTLS with real workload certificates from the mesh CA, speaking the
//! protocol as `trellis-agent` does (node first, then an ACK per response),
//! but neither parsing what they receive nor proxying anything: what is
//! measured is the control plane.
//!
//! Each agent records when each response arrived and its version, so a
//! run can tell when every agent had the version an apply committed at.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use trellis_api::v1::discovery_client::DiscoveryClient;
use trellis_api::v1::{DiscoveryRequest, ProxyNode};
use trellis_dataplane::identity::{self, Source};
use trellis_identity::verify::{client_config, CertCell, Expect, SpiffeServerVerifier};

/// Streams per TLS connection (HTTP/2 allows a few hundred).
pub const STREAMS_PER_CONNECTION: usize = 100;

/// Largest response a simulated agent takes.
const MAX_MESSAGE_BYTES: usize = 512 << 20;

/// What one agent saw.
#[derive(Default)]
pub struct Seen {
    /// (version, when it arrived), in order.
    pub responses: Vec<(u64, Instant)>,
    /// Items received in all.
    pub items: usize,
    /// Bytes of item bodies received in all.
    pub bytes: usize,
}

/// A fleet of simulated agents.
pub struct Fleet {
    pub seen: Vec<Arc<Mutex<Seen>>>,
    /// Streams that ended (and were opened again), and the last reason.
    ended: Arc<Mutex<(usize, Option<String>)>>,
    _tasks: tokio::task::JoinSet<()>,
}

/// A TLS client config for workload `ns/sa` of the mesh, from a VM token:
/// the certificate obtained as `trellis-agent` obtains it (key and chain
/// kept in `data_dir`).
pub async fn workload_tls(
    token: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let loaded = identity::load(
        &Source::Token {
            token: Some(token.to_string()),
            data_dir: data_dir.to_path_buf(),
        },
        None,
    )
    .await?;
    let verifier = SpiffeServerVerifier::new(
        &loaded.roots,
        Expect::AnyControlPlane {
            trust_domain: loaded.id.trust_domain().to_string(),
        },
    )?;
    Ok(Arc::new(client_config(
        Some(CertCell::new(&loaded.identity)?),
        Arc::new(verifier),
    )?))
}

/// One simulated agent to start: its node and the connection it uses.
pub struct Agent {
    pub name: String,
    pub namespace: String,
    /// Its `topology.istio.io/network`; empty: its node's.
    pub network: String,
    pub channel: Channel,
}

impl Fleet {
    /// Starts every agent; each streams until the fleet is dropped, and
    /// opens its stream again (after 100 ms) when it ends.
    pub fn start(agents: Vec<Agent>) -> Fleet {
        let mut tasks = tokio::task::JoinSet::new();
        let mut seen = Vec::new();
        let ended = Arc::new(Mutex::new((0, None)));
        for a in agents {
            let s = Arc::new(Mutex::new(Seen::default()));
            seen.push(s.clone());
            let ended = ended.clone();
            tasks.spawn(async move {
                loop {
                    let reason = match stream(&a, &s).await {
                        Ok(()) => "the server closed it".to_string(),
                        Err(e) => format!("{e:#}"),
                    };
                    {
                        let mut e = ended.lock().unwrap_or_else(|p| p.into_inner());
                        e.0 += 1;
                        e.1 = Some(format!("{}: {reason}", a.name));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        Fleet {
            seen,
            ended,
            _tasks: tasks,
        }
    }

    /// Waits until each agent in `agents` has received, after `after`, a
    /// response of at least `version`; then their delays from `after` to
    /// the first such response, sorted.
    pub async fn wait(
        &self,
        agents: std::ops::Range<usize>,
        version: u64,
        after: Instant,
        deadline: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let end = Instant::now() + deadline;
        let seen = &self.seen[agents];
        loop {
            let delays: Vec<Option<Duration>> = seen
                .iter()
                .map(|s| {
                    let s = s.lock().unwrap_or_else(|p| p.into_inner());
                    s.responses
                        .iter()
                        .find(|(v, t)| *v >= version && *t >= after)
                        .map(|(_, t)| t.saturating_duration_since(after))
                })
                .collect();
            let missing = delays.iter().filter(|d| d.is_none()).count();
            if missing == 0 {
                let mut d: Vec<Duration> = delays.into_iter().flatten().collect();
                d.sort();
                return Ok(d);
            }
            if Instant::now() > end {
                anyhow::bail!(
                    "{missing} of {} simulated agents did not get version {version} within {deadline:?}",
                    seen.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Every agent, for [`Fleet::wait`].
    pub fn all(&self) -> std::ops::Range<usize> {
        0..self.seen.len()
    }

    /// How many streams ended so far, with the last one's reason.
    pub fn ended(&self) -> (usize, Option<String>) {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Items and body bytes received by all agents so far.
    pub fn received(&self) -> (usize, usize) {
        self.seen.iter().fold((0, 0), |(i, b), s| {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            (i + s.items, b + s.bytes)
        })
    }
}

async fn stream(a: &Agent, seen: &Mutex<Seen>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(ProxyNode {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            network: a.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mut client =
        DiscoveryClient::new(a.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut responses = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(resp) = responses.message().await? {
        let now = Instant::now();
        {
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            s.responses.push((resp.version, now));
            for d in &resp.deltas {
                s.items += d.items.len();
                s.bytes += d.items.iter().map(|i| i.body.len()).sum::<usize>();
            }
        }
        tx.send(DiscoveryRequest {
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}
