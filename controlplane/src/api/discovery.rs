//! The `Discovery` service: one stream per agent, sending what
//! [`crate::push`] computes for it.
//!
//! A stream starts with the agent's node (who and where it is, and the
//! WorkloadGroup it registers in). The stream then sends the full state of
//! every type, and after each new snapshot the delta since what it last
//! sent; the agent answers each response with an ACK or a NACK naming its
//! nonce. After a NACK the next response is a full state again, so an agent
//! that refused a delta cannot drift.
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use trellis_api::topology;
use trellis_api::v1::discovery_server::Discovery;
use trellis_api::v1::{DiscoveryRequest, DiscoveryResponse, ProxyNode};
use trellis_identity::SpiffeId;

use super::mesh_caller;
use crate::discovery::{self, GatewayRegistration, Registration};
use crate::node::{now, Node};
use crate::push::horizon::{Gateways, Horizon};
use crate::push::response::{delta, full};
use crate::push::status::StreamStatus;
use crate::push::{Scope, Snapshot};
use crate::raft::state::registry::Conn;

/// Responses queued for one agent before the stream waits for it.
const QUEUE: usize = 4;

pub struct DiscoveryService(pub Arc<Node>);

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let node = self.0.clone();
        let id = mesh_caller(&node, &req)?;
        let Some((ns, _)) = id.workload_parts() else {
            return Err(Status::permission_denied(format!(
                "{id} is not a workload identity (spiffe://TD/ns/NS/sa/SA); only agents stream config"
            )));
        };
        let ns = ns.to_string();
        let remote = trellis_identity::grpc::peer_info(&req)
            .map(|p| p.remote_addr.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before the node was sent"))?;
        let proxy = first.node.ok_or_else(|| {
            Status::invalid_argument("node: the first request of a stream must carry the node")
        })?;
        check_node(&proxy, &ns)?;
        let stream_id = node.push.streams.next_id();
        let conn = Conn {
            node: node.id,
            stream: stream_id,
        };
        let registration =
            discovery::register(&node, &id, &proxy, first.health.as_ref(), remote, conn).await?;
        let gateway = discovery::register_gateway(&node, &id, &proxy, conn).await?;
        let horizon = discovery::horizon(&node, &id, &proxy);
        let labels = registration
            .as_ref()
            .map(|r| r.labels.clone())
            .unwrap_or_else(|| proxy.labels.clone().into_iter().collect());
        node.push.streams.open(
            stream_id,
            StreamStatus {
                proxy: format!("{}.{}", proxy.name, proxy.namespace),
                identity: id.to_string(),
                // Where it registered, else the address it says it has (it
                // may connect from another: loopback, a NAT), else the peer.
                address: registration
                    .as_ref()
                    .map(|r| r.address.clone())
                    .or_else(|| proxy.addresses.first().cloned())
                    .unwrap_or_else(|| remote.to_string()),
                workload_group: proxy.workload_group.clone(),
                connected_at: now() as i64,
                ..Default::default()
            },
        );
        tracing::info!(proxy = %proxy.name, namespace = %ns, identity = %id, stream = stream_id, "agent connected");
        let (tx, rx) = mpsc::channel(QUEUE);
        let s = AgentStream {
            node,
            id,
            stream_id,
            namespace: ns,
            labels,
            registration,
            gateway,
            horizon,
            tx,
            sent: None,
            scope: None,
            gateways: None,
            full_next: true,
            in_flight: VecDeque::new(),
            nonce: 0,
        };
        tokio::spawn(s.run(inbound));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The node must be in the namespace of the caller's identity, and say
/// where it is in words the registry can store.
fn check_node(p: &ProxyNode, ns: &str) -> Result<(), Status> {
    let bad = |field: &str, e: topology::TopologyError| {
        Status::invalid_argument(format!("node.{field}: {e}"))
    };
    for (field, value) in [("cluster", &p.cluster), ("network", &p.network)] {
        if !value.is_empty() {
            topology::validate_name(field, value).map_err(|e| bad(field, e))?;
        }
    }
    topology::Locality::parse(&p.locality).map_err(|e| bad("locality", e))?;
    if p.namespace != ns {
        return Err(Status::permission_denied(format!(
            "node.namespace: `{}` is not the namespace of this agent's identity ({ns})",
            p.namespace
        )));
    }
    if p.name.is_empty() || p.name.len() > 253 {
        return Err(Status::invalid_argument(
            "node.name: must be 1 to 253 characters",
        ));
    }
    Ok(())
}

struct AgentStream {
    node: Arc<Node>,
    id: SpiffeId,
    stream_id: u64,
    namespace: String,
    labels: BTreeMap<String, String>,
    registration: Option<Registration>,
    /// The gateway this stream registered, if it is an east-west gateway's.
    gateway: Option<GatewayRegistration>,
    horizon: Horizon,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    /// The version last sent.
    sent: Option<u64>,
    scope: Option<Scope>,
    /// The gateways the last response was computed with.
    gateways: Option<Arc<Gateways>>,
    /// Send everything next time (first push, after a NACK).
    full_next: bool,
    /// Responses not answered yet: (nonce, version).
    in_flight: VecDeque<(String, u64)>,
    nonce: u64,
}

impl AgentStream {
    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>) {
        let mut snapshots = self.node.push.subscribe();
        loop {
            let snap = snapshots.borrow_and_update().clone();
            if self.sent != Some(snap.version) && !self.push(&snap).await {
                break;
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { break },
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.answer(req),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(stream = self.stream_id, error = %e, "agent stream failed");
                        break;
                    }
                },
            }
        }
        self.node.push.streams.close(self.stream_id);
        tracing::info!(stream = self.stream_id, identity = %self.id, "agent disconnected");
        if let Some(r) = self.registration.take() {
            discovery::disconnected(&self.node, r).await;
        }
        if let Some(g) = self.gateway.take() {
            discovery::gateway_disconnected(&self.node, g).await;
        }
    }

    /// Sends what changed up to `snap`; false when the agent is gone.
    async fn push(&mut self, snap: &Arc<Snapshot>) -> bool {
        let scope =
            Scope::of(&self.namespace, &self.labels, &snap.sidecars).at(self.horizon.clone());
        // New gateways change how other networks' endpoints are sent: all
        // of them again.
        let rescoped =
            self.scope.as_ref() != Some(&scope) || self.gateways.as_ref() != Some(&snap.gateways);
        let changes = match self.sent {
            Some(v) if !self.full_next && !rescoped => snap.changes_since(v).map(|(c, _)| c),
            _ => None,
        };
        let deltas = match changes {
            Some(changes) => delta(&scope, &changes, &snap.gateways),
            None => full(&snap.full_view(&scope)),
        };
        self.scope = Some(scope);
        self.gateways = Some(snap.gateways.clone());
        self.full_next = false;
        self.sent = Some(snap.version);
        if deltas.is_empty() {
            // Nothing this agent sees changed: it is as current as if it
            // had ACKed, unless it still owes an answer.
            if self.in_flight.is_empty() {
                let v = snap.version;
                self.node.push.streams.update(self.stream_id, |s| {
                    s.sent_version = v;
                    s.acked_version = v;
                });
            }
            return true;
        }
        self.nonce += 1;
        let nonce = format!("{}-{}", snap.version, self.nonce);
        self.in_flight.push_back((nonce.clone(), snap.version));
        let v = snap.version;
        self.node
            .push
            .streams
            .update(self.stream_id, |s| s.sent_version = v);
        let resp = DiscoveryResponse {
            nonce,
            version: snap.version,
            deltas,
        };
        self.tx.send(Ok(resp)).await.is_ok()
    }

    /// Takes an ACK, a NACK or a health report.
    fn answer(&mut self, req: DiscoveryRequest) {
        if let Some(h) = req.health {
            if let Some(r) = &self.registration {
                discovery::report_health(&self.node, r, h.healthy, h.reason);
            }
        }
        if req.response_nonce.is_empty() {
            return;
        }
        let Some(at) = self
            .in_flight
            .iter()
            .position(|(n, _)| *n == req.response_nonce)
        else {
            return;
        };
        let (_, version) = self.in_flight[at].clone();
        self.in_flight.drain(..=at);
        if req.error.is_empty() {
            self.node
                .push
                .streams
                .update(self.stream_id, |s| s.acked_version = version);
        } else {
            tracing::warn!(stream = self.stream_id, identity = %self.id, version, error = %req.error, "agent refused a config version (NACK)");
            let at = now() as i64;
            self.node.push.streams.update(self.stream_id, |s| {
                s.nack = Some((version, req.error.clone(), at))
            });
            self.full_next = true;
        }
    }
}
