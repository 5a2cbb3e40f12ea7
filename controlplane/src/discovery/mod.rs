//! The registry of workloads that register themselves (Istio's WorkloadGroup
//! auto-registration): an agent started with a token of a WorkloadGroup
//! registers its WorkloadEntry when its config stream opens ([`register`]),
//! reports its health by the group's probe ([`report_health`]), and is
//! marked disconnected when the stream ends ([`disconnected`]); the leader
//! removes entries whose agent stayed away longer than the grace period,
//! and marks disconnected those whose node no longer holds their stream
//! ([`sweep_forever`]). East-west gateways register alike, for their
//! network ([`gateway`]), and the sweep removes those whose stream is gone.
//!
//! A node cut off from the leader still takes registrations: what it
//! cannot commit within [`COMMIT_WAIT`] it holds in its push overlay
//! (pushed to its own agents, marked local) and keeps writing, with the
//! same write id, until it commits ([`commit_held`]). Every control-plane
//! node also stamps its cluster through Raft ([`stamp`]), so that the
//! others know how fresh its data is. A node started with `--kubernetes`
//! writes its cluster's Services and pods ([`kubernetes`]).
mod gateway;
pub mod kubernetes;
pub mod stamp;

pub use gateway::{gateway_disconnected, horizon, register_gateway, GatewayRegistration};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use trellis_api::config::{ApiVersion, Metadata, Resource, Spec, WorkloadEntry, WorkloadGroup};
use trellis_api::topology::{CLUSTER_LABEL, NETWORK_LABEL};
use trellis_api::v1::{Empty, HealthReport, ProxyNode};
use trellis_identity::SpiffeId;

use crate::config;
use crate::node::{now, Node, NodeError};
use crate::raft::state::registry::{workload_key, Conn, Health, WorkloadRecord, WORKLOAD_PREFIX};
use crate::raft::state::{Command, RegistryCommand};

/// A registered workload, as its stream knows it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub key: String,
    pub conn: Conn,
    pub address: String,
    /// The entry's labels (the group's and the agent's own).
    pub labels: BTreeMap<String, String>,
}

/// Where the control-plane node taking a registration is: the cluster
/// and network of an agent that did not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Home {
    pub cluster: String,
    pub network: String,
}

/// The WorkloadEntry an agent joining `group` stands for (pure): the
/// group's template, with the agent's address, the group's labels and
/// the agent's own on top, named `GROUP-ADDRESS` as Istio names them.
/// Its network and locality are the agent's, else the template's; an
/// agent that names no network or cluster is on those of its `home`
/// node. The network and the cluster are also its
/// `topology.istio.io/network` and `topology.istio.io/cluster` labels.
pub fn entry_for(
    group_name: &str,
    namespace: &str,
    group: &WorkloadGroup,
    proxy: &ProxyNode,
    address: &str,
    service_account: &str,
    home: &Home,
) -> Resource {
    let mut we: WorkloadEntry = group.template.clone().unwrap_or_default();
    we.address = address.to_string();
    if let Some(m) = &group.metadata {
        we.labels.extend(m.labels.clone());
    }
    we.labels.extend(proxy.labels.clone());
    we.ports.extend(proxy.ports.clone());
    we.service_account = Some(service_account.to_string());
    let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
    we.network = given(&proxy.network)
        .or(we.network.take())
        .or_else(|| given(&home.network));
    if let Some(l) = given(&proxy.locality) {
        we.locality = Some(l);
    }
    if let Some(n) = &we.network {
        we.labels.insert(NETWORK_LABEL.into(), n.clone());
    }
    if let Some(c) = given(&proxy.cluster).or_else(|| given(&home.cluster)) {
        we.labels.insert(CLUSTER_LABEL.into(), c);
    }
    let name = format!("{group_name}-{}", address.replace(['.', ':'], "-"));
    Resource {
        api_version: ApiVersion::NetworkingV1,
        metadata: Metadata {
            name,
            namespace: namespace.to_string(),
            labels: we.labels.clone(),
            annotations: group
                .metadata
                .as_ref()
                .map(|m| m.annotations.clone())
                .unwrap_or_default(),
        },
        spec: we.into(),
    }
}

/// Registers the agent of a stream in its WorkloadGroup, if it names one.
/// The group must exist in the agent's namespace and run as the agent's
/// service account. `health` is the probe's result the agent already has
/// (sent on the first request of a stream that fails over or reconnects):
/// the entry starts with it rather than as not probed yet, since the agent
/// reports its health again only when it changes.
pub async fn register(
    node: &Arc<Node>,
    id: &SpiffeId,
    proxy: &ProxyNode,
    health: Option<&HealthReport>,
    remote: IpAddr,
    conn: Conn,
) -> Result<Option<Registration>, RegisterError> {
    if proxy.workload_group.is_empty() {
        return Ok(None);
    }
    let (ns, sa) = id
        .workload_parts()
        .ok_or_else(|| RegisterError::NotWorkload { id: id.clone() })?;
    let group = node
        .read_state(|s| config::workload_group(&s.store, ns, &proxy.workload_group))
        .ok_or_else(|| RegisterError::NoGroup {
            namespace: ns.to_string(),
            name: proxy.workload_group.clone(),
        })?;
    let group_sa = config::service_account(&group);
    if group_sa != sa {
        return Err(RegisterError::WrongServiceAccount {
            namespace: ns.to_string(),
            name: proxy.workload_group.clone(),
            service_account: group_sa.to_string(),
            id: id.clone(),
        });
    }
    let address = proxy
        .addresses
        .first()
        .cloned()
        .unwrap_or_else(|| remote.to_string());
    let home = node.read_state(|s| {
        let (cluster, network) = s.store.node_topology(node.id).unwrap_or_default();
        Home { cluster, network }
    });
    let entry = entry_for(
        &proxy.workload_group,
        ns,
        &group,
        proxy,
        &address,
        sa,
        &home,
    );
    let Spec::WorkloadEntry(we) = &entry.spec else {
        unreachable!("entry_for makes a WorkloadEntry");
    };
    let labels = we.labels.clone();
    let record = WorkloadRecord {
        entry_json: serde_json::to_vec(&entry).expect("a resource always serializes to JSON"),
        group: proxy.workload_group.clone(),
        conn,
        registered_at: now(),
        disconnected_at: None,
        health: match (&group.probe, health) {
            (None, _) => Health::NoProbe,
            (Some(_), None) => Health::Pending,
            (Some(_), Some(h)) => health_of(h.healthy, h.reason.clone()),
        },
    };
    let key = workload_key(ns, &entry.metadata.name);
    let cmd = register_once(&key, &record);
    let mut write = Box::pin({
        let node = node.clone();
        let cmd = cmd.clone();
        async move { node.write_once(cmd).await }
    });
    match tokio::time::timeout(COMMIT_WAIT, &mut write).await {
        Ok(Ok(_)) => tracing::info!(%key, %address, "workload registered"),
        Ok(Err(e)) if !e.is_retryable() => return Err(e.into()),
        pending => {
            // A write that failed is done; one still waiting goes on.
            let (why, in_flight) = match pending {
                Ok(Err(e)) => (e.message(), None),
                _ => (
                    format!("not committed within {COMMIT_WAIT:?}"),
                    Some(write as Write),
                ),
            };
            tracing::warn!(%key, %address, error = %why,
                "workload registered on this node only until the leader is reachable");
            node.push.overlay.hold(&key, record.clone());
            tokio::spawn(commit_held(
                node.clone(),
                key.clone(),
                record,
                cmd,
                in_flight,
            ));
        }
    }
    Ok(Some(Registration {
        key,
        conn,
        address,
        labels,
    }))
}

/// How long a registration waits for its commit before the node holds it
/// locally: an agent's workload is served by its node within this time,
/// whether or not the leader is reachable.
pub const COMMIT_WAIT: Duration = Duration::from_secs(1);

/// How long a held registration waits between two tries to commit it.
const RETRY_HELD_EVERY: Duration = Duration::from_secs(1);

/// The write of `record` as a registration, with its write id.
fn register_once(key: &str, record: &WorkloadRecord) -> Command {
    Command::Registry(RegistryCommand::RegisterWorkload {
        key: key.to_string(),
        record: record.clone(),
    })
    .once(now())
}

type Write = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(u64, crate::raft::Response), NodeError>> + Send>,
>;

/// Commits the registration of `key` the node holds as `written` (the
/// write `cmd`, maybe still `in_flight`): retries the same write until it
/// commits, then lets it go from the overlay. A record the node changed
/// meanwhile (a health report) is written again, as a new write. Stops
/// when the node no longer holds `key` for the same stream (the agent
/// left), or the store refuses the write.
async fn commit_held(
    node: Arc<Node>,
    key: String,
    mut written: WorkloadRecord,
    mut cmd: Command,
    mut in_flight: Option<Write>,
) {
    let overlay = &node.push.overlay;
    loop {
        let res = match in_flight.take() {
            Some(w) => w.await,
            None => node.write_once(cmd.clone()).await,
        };
        let Some(held) = overlay.get(&key).filter(|h| h.conn == written.conn) else {
            return;
        };
        match res {
            Ok(_) if held == written => {
                overlay.release(&key, written.conn);
                tracing::info!(%key, "held workload registration committed");
                return;
            }
            Ok(_) => {}
            Err(e) if !e.is_retryable() => {
                overlay.release(&key, written.conn);
                tracing::warn!(%key, error = %e.message(), "a held workload registration was refused");
                return;
            }
            Err(e) => {
                tracing::debug!(%key, error = %e.message(), "held workload registration not committed yet");
                tokio::time::sleep(RETRY_HELD_EVERY).await;
            }
        }
        if held != written {
            cmd = register_once(&key, &held);
            written = held;
        }
    }
}

/// Why an agent's workload was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{id} is not a workload identity")]
    NotWorkload { id: SpiffeId },
    #[error(
        "node.workload_group: WorkloadGroup {namespace}/{name} does not exist; apply it, then \
         restart the agent"
    )]
    NoGroup { namespace: String, name: String },
    #[error(
        "node.workload_group: WorkloadGroup {namespace}/{name} runs as service account \
         `{service_account}`, and this agent is {id}"
    )]
    WrongServiceAccount {
        namespace: String,
        name: String,
        service_account: String,
        id: SpiffeId,
    },
    /// Writing the registration failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl From<RegisterError> for Status {
    fn from(e: RegisterError) -> Status {
        match e {
            RegisterError::NotWorkload { .. } | RegisterError::WrongServiceAccount { .. } => {
                Status::permission_denied(e.to_string())
            }
            RegisterError::NoGroup { .. } => Status::failed_precondition(e.to_string()),
            RegisterError::Node(e) => e.into(),
        }
    }
}

/// What an agent's probe report means for its entry.
fn health_of(healthy: bool, reason: String) -> Health {
    if healthy {
        Health::Healthy
    } else {
        Health::Unhealthy(if reason.is_empty() {
            "probe failed".into()
        } else {
            reason
        })
    }
}

/// Records a health report of a registered workload (in the background:
/// the stream goes on meanwhile). A held registration takes it locally;
/// a report the leader cannot take is held with the workload's record
/// until it commits.
pub fn report_health(node: &Arc<Node>, r: &Registration, healthy: bool, reason: String) {
    let health = health_of(healthy, reason);
    let conn = r.conn;
    if node
        .push
        .overlay
        .update(&r.key, |h| h.health = health.clone())
    {
        return;
    }
    let cmd = Command::Registry(RegistryCommand::WorkloadHealth {
        key: r.key.clone(),
        conn,
        health: health.clone(),
    });
    let node = node.clone();
    let key = r.key.clone();
    tokio::spawn(async move {
        match node.write(cmd).await {
            Ok(_) => {}
            Err(e) if e.is_retryable() => {
                let Some(mut record) = node
                    .read_state(|s| s.store.workload(&key))
                    .filter(|w| w.conn == conn)
                else {
                    return;
                };
                tracing::warn!(%key, error = %e.message(),
                    "workload health held on this node until the leader is reachable");
                record.health = health;
                node.push.overlay.hold(&key, record.clone());
                let cmd = register_once(&key, &record);
                commit_held(node.clone(), key, record, cmd, None).await;
            }
            Err(e) => tracing::warn!(error = %e.message(), "recording a workload's health"),
        }
    });
}

/// Records that a registered workload's stream ended (a held registration
/// is let go: its agent left before it was committed).
pub async fn disconnected(node: &Arc<Node>, r: Registration) {
    node.push.overlay.release(&r.key, r.conn);
    let cmd = Command::Registry(RegistryCommand::WorkloadDisconnected {
        key: r.key.clone(),
        conn: r.conn,
        now: now(),
    });
    if let Err(e) = node.write(cmd).await {
        // The sweep finds it anyway: its stream is gone.
        tracing::warn!(key = %r.key, error = %e.message(), "recording a workload's disconnection");
    }
}

/// How often the leader looks for departed workloads.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Sweeps in a row a node must fail to answer before its workloads are
/// taken as disconnected.
const UNREACHABLE_SWEEPS: u32 = 3;

/// A node that did not answer a sweep: how many in a row, since when, and
/// whether its cluster was heard from since.
#[derive(Clone, Copy)]
struct Silent {
    sweeps: u32,
    since: u64,
    cluster_spoke: bool,
}

/// Whether the workloads of a node that stopped answering are taken as
/// disconnected (pure, but for counting in `silent`): after
/// [`UNREACHABLE_SWEEPS`], and only if its cluster was heard from since it
/// went silent, counted again from then. A cluster silent as a whole is
/// cut off, or down: its workloads are kept, pushed as not ready once it
/// is stale, until it answers again or is removed; a partition does not
/// unregister them. The stamp that ends its silence may be the node's own,
/// as a cut heals: the count starts again, and the node, back, answers the
/// next sweeps; one that is down stays silent while the others stamp.
fn silent_node_gone(silent: &mut Silent, cluster_heard_from: Option<u64>) -> bool {
    match cluster_heard_from {
        None => silent.sweeps >= UNREACHABLE_SWEEPS,
        Some(at) if !silent.cluster_spoke && at > silent.since => {
            silent.cluster_spoke = true;
            silent.sweeps = 0;
            false
        }
        Some(_) => silent.cluster_spoke && silent.sweeps >= UNREACHABLE_SWEEPS,
    }
}

/// On the leader, every second: workloads disconnected longer than the
/// grace period are removed; workloads whose stream is no longer open on
/// their node (it restarted, or stayed unreachable) are marked
/// disconnected.
pub async fn sweep_forever(node: Arc<Node>) {
    let mut unreachable: HashMap<u64, Silent> = HashMap::new();
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        if node.leader().map(|(id, _)| id) != Some(node.id) {
            unreachable.clear();
            continue;
        }
        if let Err(e) = sweep(&node, &mut unreachable).await {
            tracing::warn!(error = %e.message(), "workload registry sweep");
        }
    }
}

async fn sweep(node: &Arc<Node>, unreachable: &mut HashMap<u64, Silent>) -> Result<(), NodeError> {
    let records: Vec<(String, WorkloadRecord)> = node.read_state(|s| {
        s.store
            .prefixed(WORKLOAD_PREFIX)
            .filter_map(|(k, _)| Some((k.to_string(), s.store.workload(k)?)))
            .collect()
    });
    let now = now();
    let grace = node.settings.workload_grace.as_secs();
    let expired: Vec<(String, Conn)> = records
        .iter()
        .filter(|(_, r)| {
            r.disconnected_at
                .is_some_and(|t| now.saturating_sub(t) >= grace)
        })
        .map(|(k, r)| (k.clone(), r.conn))
        .collect();
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "removing departed workloads");
        node.write(Command::Registry(RegistryCommand::RemoveWorkloads {
            workloads: expired,
        }))
        .await?;
    }
    // Streams each node holds, asked once per sweep.
    let mut open: HashMap<u64, Option<HashSet<u64>>> = HashMap::new();
    let addrs: HashMap<u64, String> = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect();
    // Connected workloads, and the gateways (registered while connected):
    // their stream must still be open on their node.
    let gateways: Vec<(String, Conn)> = node.read_state(|s| {
        s.store
            .gateways()
            .into_iter()
            .map(|(k, r)| (k, r.conn))
            .collect()
    });
    let connected = records
        .iter()
        .filter(|(_, r)| r.disconnected_at.is_none())
        .map(|(k, r)| (k.clone(), r.conn, false))
        .chain(gateways.into_iter().map(|(k, c)| (k, c, true)));
    for (key, conn, gateway) in connected {
        // A silent node counts one more sweep when first asked in this one.
        let (held, asked) = match open.get(&conn.node) {
            Some(h) => (h.clone(), false),
            None => {
                let h = streams_of(node, conn.node, addrs.get(&conn.node)).await;
                open.insert(conn.node, h.clone());
                (h, true)
            }
        };
        let gone = match held {
            Some(streams) => {
                unreachable.remove(&conn.node);
                !streams.contains(&conn.stream)
            }
            None => {
                let n = unreachable.entry(conn.node).or_insert(Silent {
                    sweeps: 0,
                    since: now,
                    cluster_spoke: false,
                });
                if asked {
                    n.sweeps += 1;
                }
                let heard = node.read_state(|s| {
                    let cluster = s.store.node_record(conn.node)?.cluster;
                    s.store.heard_from(&cluster)
                });
                silent_node_gone(n, heard)
            }
        };
        let cmd = match (gone, gateway) {
            (false, _) => continue,
            (true, false) => RegistryCommand::WorkloadDisconnected { key, conn, now },
            (true, true) => RegistryCommand::GatewayDisconnected { key, conn },
        };
        node.write(Command::Registry(cmd)).await?;
    }
    Ok(())
}

/// The streams open on node `id`; `None` when it cannot be asked.
async fn streams_of(node: &Arc<Node>, id: u64, addr: Option<&String>) -> Option<HashSet<u64>> {
    if id == node.id {
        return Some(
            node.push
                .streams
                .list(id)
                .iter()
                .map(|s| s.stream_id)
                .collect(),
        );
    }
    let mut c = node.peer_client(addr?).ok()?;
    let r = tokio::time::timeout(Duration::from_secs(1), c.proxy_status(Empty {}))
        .await
        .ok()?
        .ok()?;
    Some(r.into_inner().proxies.iter().map(|p| p.stream_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::config::parse_documents;

    #[test]
    fn the_entry_is_the_template_with_the_agents_address_and_labels() {
        let rs = parse_documents(
            "apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: reviews-v1, namespace: prod}
spec:
  metadata: {labels: {app: reviews, version: v1}, annotations: {team: books}}
  template: {serviceAccount: reviews, ports: {http: 9080}, network: vm-net}
",
        )
        .unwrap();
        let Spec::WorkloadGroup(g) = &rs[0].spec else {
            panic!()
        };
        let proxy = ProxyNode {
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("version".to_string(), "v1b".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let home = Home {
            cluster: "east".into(),
            network: "net-east".into(),
        };
        let r = entry_for(
            "reviews-v1",
            "prod",
            g,
            &proxy,
            "10.0.0.7",
            "reviews",
            &home,
        );
        assert_eq!(r.metadata.name, "reviews-v1-10-0-0-7");
        assert_eq!(r.metadata.namespace, "prod");
        assert_eq!(
            r.metadata.annotations.get("team").map(String::as_str),
            Some("books")
        );
        let Spec::WorkloadEntry(we) = &r.spec else {
            panic!()
        };
        assert_eq!(we.address, "10.0.0.7");
        assert_eq!(we.ports.get("http"), Some(&9080));
        assert_eq!(we.network.as_deref(), Some("vm-net"));
        assert_eq!(we.service_account.as_deref(), Some("reviews"));
        let labels: Vec<(&str, &str)> = we
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("app", "reviews"),
                (CLUSTER_LABEL, "east"),
                (NETWORK_LABEL, "vm-net"),
                ("version", "v1b"),
                ("zone", "a")
            ]
        );
        // What is stored reads back and validates.
        let json = serde_json::to_vec(&r).unwrap();
        let back = crate::config::from_json(&json).unwrap();
        back.validate().unwrap();
        assert_eq!(back, r);
    }

    /// A node silent since 100, swept once a second: when its workloads
    /// are taken as disconnected, by when its cluster was heard from.
    #[test]
    fn a_silent_node_loses_its_workloads_only_while_its_cluster_is_heard_from() {
        let gone_after = |heard: Option<u64>| {
            let mut silent = Silent {
                sweeps: 0,
                since: 100,
                cluster_spoke: false,
            };
            (1..=10).find(|_| {
                silent.sweeps += 1;
                silent_node_gone(&mut silent, heard)
            })
        };
        // No cluster record: gone after the usual sweeps.
        assert_eq!(gone_after(None), Some(3));
        // The whole cluster silent: kept.
        assert_eq!(gone_after(Some(100)), None);
        assert_eq!(gone_after(Some(50)), None);
        // Its cluster spoke since: counted again from then, so that a node
        // whose own stamp it was (a cut healing) has the sweeps to answer.
        assert_eq!(gone_after(Some(200)), Some(4));
    }

    /// (agent's network, template's, agent's cluster, agent's locality) →
    /// (entry's network, cluster label, locality).
    #[test]
    fn the_agent_says_where_it_is_else_the_template_else_its_node() {
        let home = Home {
            cluster: "east".into(),
            network: "net-east".into(),
        };
        type Row<'a> = (
            (&'a str, &'a str, &'a str, &'a str),
            (&'a str, &'a str, &'a str),
        );
        let rows: [Row; 4] = [
            (("", "", "", ""), ("net-east", "east", "")),
            (("", "vm-net", "", ""), ("vm-net", "east", "")),
            (
                ("own", "vm-net", "west", "eu/eu-1"),
                ("own", "west", "eu/eu-1"),
            ),
            (("own", "", "", "eu"), ("own", "east", "eu")),
        ];
        for ((network, template_network, cluster, locality), want) in rows {
            let group = WorkloadGroup {
                template: Some(WorkloadEntry {
                    network: (!template_network.is_empty()).then(|| template_network.into()),
                    locality: Some("us/us-1".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let proxy = ProxyNode {
                network: network.into(),
                cluster: cluster.into(),
                locality: locality.into(),
                ..Default::default()
            };
            let r = entry_for("g", "ns", &group, &proxy, "10.0.0.1", "sa", &home);
            let Spec::WorkloadEntry(we) = &r.spec else {
                panic!()
            };
            let label = |k: &str| we.labels.get(k).map(String::as_str).unwrap_or_default();
            let got = (
                we.network.as_deref().unwrap_or_default(),
                label(CLUSTER_LABEL),
                we.locality.as_deref().unwrap_or_default(),
            );
            let want_locality = if want.2.is_empty() { "us/us-1" } else { want.2 };
            assert_eq!(
                got,
                (want.0, want.1, want_locality),
                "{network:?} {cluster:?}"
            );
            assert_eq!(label(NETWORK_LABEL), want.0);
        }
    }
}
