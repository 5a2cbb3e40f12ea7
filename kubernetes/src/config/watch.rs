//! [`Mirror`]: the Istio custom resources an API server holds, kept up to
//! date by one kube-rs watcher per kind that the server serves.
//!
//! Which kinds are served is asked of the API server's discovery, per
//! group of [`Spec::KINDS`], at the start and again at each
//! [`Mirror::refresh`] while some kind is missing: a CRD installed later
//! is picked up then. A kind whose group the server does not serve has no
//! objects; one whose group could not be asked (the server unreachable)
//! keeps [`Mirror::read`] from answering, so that a start never takes a
//! kind as empty when it may not be.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use kube::Client;
use serde_json::Value;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use trellis_api::config::Spec;

use super::Objects;
use crate::discovery::watch::{mirror, namespaced, Ctx};

#[derive(Default)]
struct State {
    /// By kind: (namespace, name) → the object.
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    /// The kinds listed completely at least once.
    listed: BTreeSet<&'static str>,
}

/// The custom resources of a cluster, as its watchers last saw them.
/// Dropping it stops the watchers.
pub struct Mirror {
    client: Client,
    state: Arc<Mutex<State>>,
    bump: Arc<signal::Sender<u64>>,
    generation: signal::Receiver<u64>,
    /// The kinds watched.
    watched: BTreeSet<&'static str>,
    /// Whether every group's answer is known (served or not).
    asked: bool,
    /// The kinds not served, as last logged.
    missing: BTreeSet<&'static str>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Mirror {
    /// Starts watching every kind `client`'s API server serves.
    pub async fn start(client: Client) -> Mirror {
        let (bump, generation) = signal::channel(0u64);
        let mut m = Mirror {
            client,
            state: Arc::default(),
            bump: Arc::new(bump),
            generation,
            watched: BTreeSet::new(),
            asked: false,
            missing: BTreeSet::new(),
            tasks: Vec::new(),
        };
        m.refresh().await;
        m
    }

    /// Asks the API server again for the kinds not watched yet, and
    /// watches those it now serves.
    pub async fn refresh(&mut self) {
        if self.watched.len() == Spec::KINDS.len() {
            return;
        }
        let mut asked = true;
        let mut missing = BTreeSet::new();
        let groups: BTreeSet<&str> = Spec::KINDS
            .iter()
            .filter_map(|k| Some(Spec::group_of(k)?.as_str()))
            .collect();
        for group in groups {
            let kinds: Vec<&'static str> = Spec::KINDS
                .iter()
                .filter(|k| Spec::group_of(k).map(|g| g.as_str()) == Some(group))
                .filter(|k| !self.watched.contains(*k))
                .copied()
                .collect();
            let served = match kube::discovery::group(&self.client, group).await {
                Ok(g) => Some(g),
                Err(kube::Error::Discovery(_)) => None,
                Err(e) => {
                    tracing::debug!(group, error = %e, "cannot ask the API server which Istio kinds it serves; asking again later");
                    asked = false;
                    continue;
                }
            };
            for kind in kinds {
                match served.as_ref().and_then(|g| g.recommended_kind(kind)) {
                    Some((resource, _)) => self.watch(kind, resource),
                    None => {
                        missing.insert(kind);
                    }
                }
            }
        }
        if asked && missing != self.missing {
            if !missing.is_empty() {
                tracing::info!(kinds = ?missing, "the API server serves no CRD of these Istio kinds (`trellis kube crds` prints them); they are watched once it does");
            }
            self.missing = missing;
        }
        self.asked |= asked;
    }

    fn watch(&mut self, kind: &'static str, resource: ApiResource) {
        tracing::info!(kind, version = %resource.api_version, "watching the cluster's Istio resources");
        self.watched.insert(kind);
        let ctx = Ctx {
            state: self.state.clone(),
            bump: self.bump.clone(),
            kind,
            listed: move |s: &mut State| {
                s.listed.insert(kind);
            },
        };
        let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
        self.tasks.push(tokio::spawn(mirror(
            api,
            ctx,
            namespaced,
            |o| serde_json::to_value(o).ok(),
            move |s: &mut State| s.objects.entry(kind).or_default(),
        )));
    }

    /// A receiver that sees every change.
    pub fn changes(&self) -> signal::Receiver<u64> {
        self.generation.clone()
    }

    /// `f` of the objects; `None` until the served kinds are known and
    /// each was listed once.
    pub fn read<T>(&self, f: impl FnOnce(&Objects) -> T) -> Option<T> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !self.asked || !self.watched.iter().all(|k| state.listed.contains(k)) {
            return None;
        }
        let objects: Objects = state
            .objects
            .iter()
            .flat_map(|(kind, objects)| {
                objects
                    .iter()
                    .map(|((ns, name), o)| ((*kind, ns.clone(), name.clone()), o.clone()))
            })
            .collect();
        Some(f(&objects))
    }
}
