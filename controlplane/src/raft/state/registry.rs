//! The mesh's configuration and registry in the replicated key space:
//! Istio resources (`config/KIND/NS/NAME`), the virtual IPs allocated to
//! ServiceEntry hosts that have none (`vip/HOST`), workloads that
//! registered themselves through their agent (`workload/NS/NAME`), and the
//! east-west gateways connected now (`gateway/NETWORK/NAME`).
//!
//! Like the rest of the state these are pure functions of (store, command):
//! the proposer has parsed and validated the resources and says which hosts
//! need an address; the store decides who gets which address, so every
//! replica allocates alike.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{dec, enc, Response, Store};

pub const CONFIG_PREFIX: &str = "config/";
/// Where a Kubernetes cluster's discovery records are (`kube/CLUSTER/...`,
/// [`super::kubernetes`]).
pub const KUBE_PREFIX: &str = "kube/";
pub const VIP_PREFIX: &str = "vip/";
pub const WORKLOAD_PREFIX: &str = "workload/";
pub const GATEWAY_PREFIX: &str = "gateway/";

/// Virtual IPs for ServiceEntry hosts without addresses come from Istio's
/// auto-allocation range, 240.240.0.0/16 (class E: never routed).
const VIP_BASE: u32 = u32::from_be_bytes([240, 240, 0, 0]);
const VIP_COUNT: u32 = 1 << 16;

/// `config/KIND/NS/NAME`.
pub fn config_key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{CONFIG_PREFIX}{kind}/{namespace}/{name}")
}

/// `workload/NS/NAME`.
pub fn workload_key(namespace: &str, name: &str) -> String {
    format!("{WORKLOAD_PREFIX}{namespace}/{name}")
}

/// `gateway/NETWORK/NAME`.
pub fn gateway_key(network: &str, name: &str) -> String {
    format!("{GATEWAY_PREFIX}{network}/{name}")
}

/// (kind, namespace, name) of a `config/` key.
pub fn parse_config_key(key: &str) -> Option<(&str, &str, &str)> {
    let mut it = key.strip_prefix(CONFIG_PREFIX)?.splitn(3, '/');
    Some((it.next()?, it.next()?, it.next()?))
}

/// One stored resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// The resource as JSON, as `trellis get -o json` shows it.
    pub json: Vec<u8>,
    /// Hosts of a ServiceEntry without addresses: each gets a virtual IP.
    pub vip_hosts: Vec<String>,
}

/// The stream a registered workload's agent is connected through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Conn {
    pub node: u64,
    pub stream: u64,
}

/// A workload's health by its WorkloadGroup's probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    /// The group has no probe: healthy while connected.
    NoProbe,
    /// Not probed yet: not sent traffic until the first success.
    Pending,
    Healthy,
    Unhealthy(String),
}

impl Health {
    /// Whether the workload receives traffic.
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::NoProbe | Health::Healthy)
    }
}

/// A workload that registered itself (WorkloadGroup auto-registration).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    /// The WorkloadEntry resource as JSON.
    pub entry_json: Vec<u8>,
    /// The WorkloadGroup it registered in.
    pub group: String,
    pub conn: Conn,
    pub registered_at: u64,
    /// When its agent's stream ended; removed a grace period later unless
    /// the agent comes back.
    pub disconnected_at: Option<u64>,
    pub health: Health,
}

/// An east-west gateway whose config stream is open: where other
/// networks' agents reach its network's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    pub network: String,
    pub cluster: String,
    /// `IP:PORT` its listener is reached at from other networks.
    pub addresses: Vec<String>,
    pub conn: Conn,
    pub registered_at: u64,
}

/// What the agents may see of a [`WorkloadRecord`] change: one of the
/// registry commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Stores `upserts` and removes `deletes`, all or none: a delete of a
    /// resource that does not exist refuses the whole command.
    ApplyConfig {
        upserts: Vec<(String, StoredConfig)>,
        deletes: Vec<String>,
    },
    /// A workload registers (or re-registers through another stream).
    RegisterWorkload { key: String, record: WorkloadRecord },
    /// The probe result of the workload on stream `conn`.
    WorkloadHealth {
        key: String,
        conn: Conn,
        health: Health,
    },
    /// The stream `conn` of a workload ended at `now`.
    WorkloadDisconnected { key: String, conn: Conn, now: u64 },
    /// Removes workloads still disconnected on the stream they had.
    RemoveWorkloads { workloads: Vec<(String, Conn)> },
    /// An east-west gateway's stream opened (or moved to another node).
    RegisterGateway { key: String, record: GatewayRecord },
    /// The stream `conn` of a gateway ended: it is removed, unless it
    /// registered again through another stream meanwhile.
    GatewayDisconnected { key: String, conn: Conn },
}

/// What an apply did to each resource, in request order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl ApplyAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyAction::Created => "created",
            ApplyAction::Configured => "configured",
            ApplyAction::Unchanged => "unchanged",
            ApplyAction::Deleted => "deleted",
        }
    }
}

impl Store {
    /// Pairs under `prefix`, in key order.
    pub fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.map
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    pub fn config(&self, key: &str) -> Option<StoredConfig> {
        self.map.get(key).and_then(|b| dec(b))
    }

    pub fn workload(&self, key: &str) -> Option<WorkloadRecord> {
        self.map.get(key).and_then(|b| dec(b))
    }

    /// Every registered east-west gateway, by key, in key order.
    pub fn gateways(&self) -> Vec<(String, GatewayRecord)> {
        self.prefixed(GATEWAY_PREFIX)
            .filter_map(|(k, v)| Some((k.to_string(), dec(v)?)))
            .collect()
    }

    /// The virtual IP allocated to `host`.
    pub fn vip(&self, host: &str) -> Option<Ipv4Addr> {
        self.map
            .get(&format!("{VIP_PREFIX}{host}"))
            .and_then(|b| dec(b))
    }

    pub(super) fn apply_registry(
        &mut self,
        cmd: &RegistryCommand,
        changed: &mut Vec<String>,
    ) -> Response {
        match cmd {
            RegistryCommand::ApplyConfig { upserts, deletes } => {
                self.apply_config(upserts, deletes, changed)
            }
            RegistryCommand::RegisterWorkload { key, record } => {
                self.set(key.clone(), record, changed);
                Response::Ok
            }
            RegistryCommand::WorkloadHealth { key, conn, health } => {
                self.update_workload(key, *conn, changed, |r| r.health = health.clone())
            }
            RegistryCommand::WorkloadDisconnected { key, conn, now } => {
                self.update_workload(key, *conn, changed, |r| {
                    r.disconnected_at.get_or_insert(*now);
                })
            }
            RegistryCommand::RemoveWorkloads { workloads } => {
                for (key, conn) in workloads {
                    if self
                        .workload(key)
                        .is_some_and(|r| r.conn == *conn && r.disconnected_at.is_some())
                    {
                        self.map.remove(key);
                        changed.push(key.clone());
                    }
                }
                Response::Ok
            }
            RegistryCommand::RegisterGateway { key, record } => {
                self.set(key.clone(), record, changed);
                Response::Ok
            }
            RegistryCommand::GatewayDisconnected { key, conn } => {
                let current = self.map.get(key).and_then(|b| dec::<GatewayRecord>(b));
                if current.is_some_and(|r| r.conn == *conn) {
                    self.map.remove(key);
                    changed.push(key.clone());
                }
                Response::Ok
            }
        }
    }

    /// Changes the record of `key` if it is still on `conn` (a workload that
    /// moved to another stream is not touched by news of its old one).
    fn update_workload(
        &mut self,
        key: &str,
        conn: Conn,
        changed: &mut Vec<String>,
        f: impl FnOnce(&mut WorkloadRecord),
    ) -> Response {
        match self.workload(key) {
            Some(mut r) if r.conn == conn => {
                f(&mut r);
                self.set(key.to_string(), &r, changed);
                Response::Ok
            }
            _ => Response::Ok,
        }
    }

    fn apply_config(
        &mut self,
        upserts: &[(String, StoredConfig)],
        deletes: &[String],
        changed: &mut Vec<String>,
    ) -> Response {
        if let Some(missing) = deletes.iter().find(|k| !self.map.contains_key(*k)) {
            let what = parse_config_key(missing)
                .map(|(kind, ns, name)| format!("{kind} {ns}/{name}"))
                .unwrap_or_else(|| missing.clone());
            return Response::Refused(format!(
                "{what} not found; nothing was deleted (`trellis get` lists what is stored)"
            ));
        }
        let mut actions = Vec::with_capacity(upserts.len() + deletes.len());
        let mut vips_touched = false;
        for (key, value) in upserts {
            let old = self.config(key);
            vips_touched |= !value.vip_hosts.is_empty()
                || old.as_ref().is_some_and(|o| !o.vip_hosts.is_empty());
            actions.push(match old {
                Some(o) if o == *value => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Configured,
                None => ApplyAction::Created,
            });
            if actions.last() != Some(&ApplyAction::Unchanged) {
                self.set(key.clone(), value, changed);
            }
        }
        for key in deletes {
            vips_touched |= self.config(key).is_some_and(|o| !o.vip_hosts.is_empty());
            self.map.remove(key);
            changed.push(key.clone());
            actions.push(ApplyAction::Deleted);
        }
        if vips_touched {
            self.reallocate_vips(changed);
        }
        Response::Applied(actions)
    }

    /// Gives every host that needs a virtual IP one, keeping the addresses
    /// already given, and frees those of hosts no longer needing one. The
    /// lowest free address is taken, so replicas agree.
    /// ServiceEntries of the clusters' Istio resources need them too.
    pub(super) fn reallocate_vips(&mut self, changed: &mut Vec<String>) {
        let needed: BTreeSet<String> = self
            .prefixed(&format!("{CONFIG_PREFIX}ServiceEntry/"))
            .chain(self.prefixed(KUBE_PREFIX))
            .filter_map(|(_, v)| dec::<StoredConfig>(v))
            .flat_map(|c| c.vip_hosts)
            .collect();
        let held: BTreeMap<String, Ipv4Addr> = self
            .prefixed(VIP_PREFIX)
            .filter_map(|(k, v)| Some((k[VIP_PREFIX.len()..].to_string(), dec(v)?)))
            .collect();
        for host in held.keys().filter(|h| !needed.contains(*h)) {
            let k = format!("{VIP_PREFIX}{host}");
            self.map.remove(&k);
            changed.push(k);
        }
        let mut used: BTreeSet<u32> = held
            .iter()
            .filter(|(h, _)| needed.contains(*h))
            .map(|(_, ip)| u32::from(*ip))
            .collect();
        let mut next = 1u32;
        for host in needed.iter().filter(|h| !held.contains_key(*h)) {
            while next < VIP_COUNT - 1 && used.contains(&(VIP_BASE + next)) {
                next += 1;
            }
            if next >= VIP_COUNT - 1 {
                // Out of addresses: the host stays without one (reachable
                // by HTTP authority, not by DNS).
                break;
            }
            let ip = Ipv4Addr::from(VIP_BASE + next);
            used.insert(VIP_BASE + next);
            let k = format!("{VIP_PREFIX}{host}");
            self.map.insert(k.clone(), enc(&ip));
            changed.push(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state::Command;

    fn se(json: &str, hosts: &[&str]) -> StoredConfig {
        StoredConfig {
            json: json.as_bytes().to_vec(),
            vip_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn apply(
        s: &mut Store,
        upserts: Vec<(String, StoredConfig)>,
        deletes: Vec<String>,
    ) -> Response {
        let mut ch = Vec::new();
        s.apply(
            &Command::Registry(RegistryCommand::ApplyConfig { upserts, deletes }),
            &mut ch,
        )
    }

    #[test]
    fn apply_reports_created_configured_unchanged_deleted() {
        let mut s = Store::default();
        let a = config_key("VirtualService", "default", "a");
        let b = config_key("VirtualService", "default", "b");
        let r = apply(
            &mut s,
            vec![(a.clone(), se("1", &[])), (b.clone(), se("1", &[]))],
            vec![],
        );
        assert_eq!(
            r,
            Response::Applied(vec![ApplyAction::Created, ApplyAction::Created])
        );
        let r = apply(
            &mut s,
            vec![(a.clone(), se("1", &[])), (b.clone(), se("2", &[]))],
            vec![],
        );
        assert_eq!(
            r,
            Response::Applied(vec![ApplyAction::Unchanged, ApplyAction::Configured])
        );
        assert_eq!(
            apply(&mut s, vec![], vec![a.clone()]),
            Response::Applied(vec![ApplyAction::Deleted])
        );
        assert_eq!(s.config(&a), None);
        assert_eq!(s.config(&b), Some(se("2", &[])));
    }

    #[test]
    fn a_delete_of_something_missing_refuses_everything() {
        let mut s = Store::default();
        let a = config_key("VirtualService", "default", "a");
        let before = s.clone();
        let r = apply(
            &mut s,
            vec![(a.clone(), se("1", &[]))],
            vec![config_key("DestinationRule", "default", "nope")],
        );
        let Response::Refused(why) = r else {
            panic!("{r:?}")
        };
        assert!(
            why.contains("DestinationRule default/nope not found"),
            "{why}"
        );
        assert_eq!(s, before);
    }

    #[test]
    fn vips_are_stable_reused_and_freed() {
        let mut s = Store::default();
        let x = config_key("ServiceEntry", "default", "x");
        let y = config_key("ServiceEntry", "default", "y");
        apply(
            &mut s,
            vec![(x.clone(), se("x", &["a.example", "b.example"]))],
            vec![],
        );
        assert_eq!(s.vip("a.example"), Some(Ipv4Addr::new(240, 240, 0, 1)));
        assert_eq!(s.vip("b.example"), Some(Ipv4Addr::new(240, 240, 0, 2)));
        apply(&mut s, vec![(y.clone(), se("y", &["c.example"]))], vec![]);
        assert_eq!(s.vip("c.example"), Some(Ipv4Addr::new(240, 240, 0, 3)));
        // a.example goes away; its address is free again, the others keep theirs.
        apply(&mut s, vec![(x.clone(), se("x2", &["b.example"]))], vec![]);
        assert_eq!(s.vip("a.example"), None);
        assert_eq!(s.vip("b.example"), Some(Ipv4Addr::new(240, 240, 0, 2)));
        apply(
            &mut s,
            vec![(y.clone(), se("y2", &["c.example", "d.example"]))],
            vec![],
        );
        assert_eq!(s.vip("c.example"), Some(Ipv4Addr::new(240, 240, 0, 3)));
        assert_eq!(s.vip("d.example"), Some(Ipv4Addr::new(240, 240, 0, 1)));
        apply(&mut s, vec![], vec![x, y]);
        assert_eq!(s.prefixed(VIP_PREFIX).count(), 0);
    }

    fn record(conn: Conn) -> WorkloadRecord {
        WorkloadRecord {
            entry_json: b"{}".to_vec(),
            group: "g".into(),
            conn,
            registered_at: 1,
            disconnected_at: None,
            health: Health::Pending,
        }
    }

    #[test]
    fn news_of_an_old_stream_does_not_touch_a_reregistered_workload() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let key = workload_key("default", "w");
        let old = Conn { node: 1, stream: 1 };
        let new = Conn { node: 2, stream: 7 };
        let reg = |conn| {
            Command::Registry(RegistryCommand::RegisterWorkload {
                key: key.clone(),
                record: record(conn),
            })
        };
        s.apply(&reg(old), &mut ch);
        s.apply(&reg(new), &mut ch);
        let gone = |conn, now| {
            Command::Registry(RegistryCommand::WorkloadDisconnected {
                key: key.clone(),
                conn,
                now,
            })
        };
        s.apply(&gone(old, 10), &mut ch);
        s.apply(
            &Command::Registry(RegistryCommand::WorkloadHealth {
                key: key.clone(),
                conn: old,
                health: Health::Healthy,
            }),
            &mut ch,
        );
        assert_eq!(s.workload(&key), Some(record(new)));
        let remove = |conn| {
            Command::Registry(RegistryCommand::RemoveWorkloads {
                workloads: vec![(key.clone(), conn)],
            })
        };
        // Connected: not removed.
        s.apply(&remove(new), &mut ch);
        assert!(s.workload(&key).is_some());
        s.apply(&gone(new, 20), &mut ch);
        s.apply(&gone(new, 30), &mut ch);
        assert_eq!(s.workload(&key).unwrap().disconnected_at, Some(20));
        s.apply(&remove(new), &mut ch);
        assert_eq!(s.workload(&key), None);
    }

    #[test]
    fn a_gateway_is_removed_only_by_the_end_of_the_stream_it_registered_on() {
        let mut s = Store::default();
        let mut ch = Vec::new();
        let key = gateway_key("net-b", "gw-1");
        let record = |stream| GatewayRecord {
            network: "net-b".into(),
            cluster: "c2".into(),
            addresses: vec!["192.0.2.1:15443".into()],
            conn: Conn { node: 1, stream },
            registered_at: 5,
        };
        let register = |stream| {
            Command::Registry(RegistryCommand::RegisterGateway {
                key: key.clone(),
                record: record(stream),
            })
        };
        let gone = |stream| {
            Command::Registry(RegistryCommand::GatewayDisconnected {
                key: key.clone(),
                conn: Conn { node: 1, stream },
            })
        };
        s.apply(&register(1), &mut ch);
        // It reconnected before its old stream's end was written.
        s.apply(&register(2), &mut ch);
        s.apply(&gone(1), &mut ch);
        assert_eq!(s.gateways(), vec![(key.clone(), record(2))]);
        s.apply(&gone(2), &mut ch);
        assert_eq!(s.gateways(), vec![]);
        assert!(ch.contains(&key));
    }
}
