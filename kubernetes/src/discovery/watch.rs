//! [`Mirror`]: what the API server holds of the kinds discovery reads,
//! kept up to date by one kube-rs watcher per kind.
//!
//! A watcher lists, then watches from the list's version; when the watch
//! is lost (a restarted API server, a version too old) it lists again.
//! A list replaces the kind's objects only once it is complete, so the
//! objects never go through an empty or partial state; and nothing is
//! read at all before every kind has been listed once. Each change bumps
//! a generation number that the writer waits on.
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

use super::slice::EndpointSlice;
use super::Objects;

/// The API group of EndpointSlice.
const SLICE_GROUP: &str = "discovery.k8s.io";

/// The kinds mirrored, in the order of [`State::listed`].
const KINDS: [&str; 5] = ["Service", "EndpointSlice", "Pod", "Node", "Namespace"];

#[derive(Default)]
struct State {
    objects: Objects,
    /// Each kind of [`KINDS`] was listed completely at least once.
    listed: [bool; 5],
}

/// The objects of a cluster, as its watchers last saw them. Dropping it
/// stops the watchers.
pub struct Mirror {
    state: Arc<Mutex<State>>,
    generation: signal::Receiver<u64>,
    /// `discovery.k8s.io/v1` or `/v1beta1`: what the server serves.
    pub slice_version: String,
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
    /// Starts watching the API server of `client`: first asks it which
    /// version of EndpointSlice it serves (the preferred one).
    pub async fn start(client: Client) -> anyhow::Result<Mirror> {
        let group = kube::discovery::group(&client, SLICE_GROUP)
            .await
            .with_context(|| format!("asking the API server for the {SLICE_GROUP} API group"))?;
        let (slices, _) = group.recommended_kind("EndpointSlice").with_context(|| {
            format!("the API server serves no EndpointSlice in {SLICE_GROUP} (Kubernetes 1.17 or later has it)")
        })?;
        let slice_version = slices.api_version.clone();
        let state = Arc::new(Mutex::new(State::default()));
        let (bump, generation) = signal::channel(0u64);
        let bump = Arc::new(bump);
        let ctx = |index: usize| Ctx {
            state: state.clone(),
            bump: bump.clone(),
            kind: KINDS[index],
            listed: move |s: &mut State| s.listed[index] = true,
        };
        let tasks = vec![
            tokio::spawn(mirror(
                Api::<Service>::all(client.clone()),
                ctx(0),
                namespaced,
                Some,
                |s| &mut s.objects.services,
            )),
            tokio::spawn(mirror(
                Api::<DynamicObject>::all_with(client.clone(), &slices),
                ctx(1),
                namespaced,
                to_slice,
                |s| &mut s.objects.slices,
            )),
            tokio::spawn(mirror(
                Api::<Pod>::all(client.clone()),
                ctx(2),
                namespaced,
                Some,
                |s| &mut s.objects.pods,
            )),
            tokio::spawn(mirror(
                Api::<Node>::all(client.clone()),
                ctx(3),
                |o: &Node| Some(o.name_any()),
                Some,
                |s| &mut s.objects.nodes,
            )),
            tokio::spawn(mirror(
                Api::<Namespace>::all(client),
                ctx(4),
                |o: &Namespace| Some(o.name_any()),
                Some,
                |s| &mut s.objects.namespaces,
            )),
        ];
        Ok(Mirror {
            state,
            generation,
            slice_version,
            tasks,
        })
    }

    /// A receiver that sees every change.
    pub fn changes(&self) -> signal::Receiver<u64> {
        self.generation.clone()
    }

    /// `f` of the objects; `None` until every kind was listed once.
    pub fn read<T>(&self, f: impl FnOnce(&Objects) -> T) -> Option<T> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.listed.iter().all(|l| *l).then(|| f(&state.objects))
    }

    /// The kinds not listed yet (for a log line).
    pub fn unlisted(&self) -> Vec<&'static str> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        KINDS
            .iter()
            .zip(state.listed)
            .filter(|(_, l)| !l)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// What one kind's watcher writes to: the mirror's state `S`, where
/// `listed` records that `kind` was listed completely.
pub(crate) struct Ctx<S, L> {
    pub(crate) state: Arc<Mutex<S>>,
    pub(crate) bump: Arc<signal::Sender<u64>>,
    pub(crate) kind: &'static str,
    pub(crate) listed: L,
}

impl<S, L: Fn(&mut S)> Ctx<S, L> {
    fn update(&self, f: impl FnOnce(&mut S)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.bump.send_modify(|g| *g += 1);
    }
}

pub(crate) fn namespaced<K: Resource>(o: &K) -> Option<(String, String)> {
    Some((o.meta().namespace.clone()?, o.meta().name.clone()?))
}

/// An EndpointSlice of either version, from its JSON.
fn to_slice(o: DynamicObject) -> Option<EndpointSlice> {
    let json = serde_json::to_value(&o).ok()?;
    match serde_json::from_value(json) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(slice = %o.name_any(), error = %e, "cannot read an EndpointSlice; left out");
            None
        }
    }
}

/// Mirrors the objects of `api` into the map `map` picks, keyed by `key`,
/// converted by `value`.
pub(crate) async fn mirror<S, L, K, Key, V>(
    api: Api<K>,
    ctx: Ctx<S, L>,
    key: impl Fn(&K) -> Option<Key>,
    value: impl Fn(K) -> Option<V>,
    map: impl Fn(&mut S) -> &mut BTreeMap<Key, V>,
) where
    L: Fn(&mut S),
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    Key: Ord,
{
    let kind = ctx.kind;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut listing = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                if !failing {
                    tracing::warn!(kind, error = %e, "watching the API server failed; the records stay as they are until it lists again");
                }
                failing = true;
                continue;
            }
        };
        let Some(update) = step(&mut listing, event, &key, &value) else {
            continue;
        };
        if failing && matches!(update, Update::Replace(_)) {
            tracing::info!(kind, "listed again after a lost watch");
            failing = false;
        }
        ctx.update(|s| {
            if update.apply(map(s)) {
                (ctx.listed)(s);
            }
        });
    }
}

/// What a watcher's event does to a kind's objects.
#[derive(Debug, PartialEq, Eq)]
enum Update<Key, V> {
    /// A list ended: these are the objects now; those not listed were
    /// deleted meanwhile.
    Replace(BTreeMap<Key, V>),
    Set(Key, V),
    Remove(Key),
}

impl<Key: Ord, V> Update<Key, V> {
    /// Applies it to `objects`; `true` when it was a complete list.
    fn apply(self, objects: &mut BTreeMap<Key, V>) -> bool {
        match self {
            Update::Replace(listed) => {
                *objects = listed;
                return true;
            }
            Update::Set(k, v) => {
                objects.insert(k, v);
            }
            Update::Remove(k) => {
                objects.remove(&k);
            }
        }
        false
    }
}

/// The update `event` makes (pure): the objects of a list are gathered in
/// `listing` and replace the kind's at its end, never before; an object
/// `value` cannot use is removed.
fn step<K, Key, V>(
    listing: &mut Option<BTreeMap<Key, V>>,
    event: Event<K>,
    key: impl Fn(&K) -> Option<Key>,
    value: impl Fn(K) -> Option<V>,
) -> Option<Update<Key, V>>
where
    Key: Ord,
{
    match event {
        Event::Init => {
            *listing = Some(BTreeMap::new());
            None
        }
        Event::InitApply(o) => {
            let (l, k) = (listing.as_mut()?, key(&o)?);
            l.insert(k, value(o)?);
            None
        }
        Event::InitDone => Some(Update::Replace(listing.take().unwrap_or_default())),
        Event::Apply(o) => {
            let k = key(&o)?;
            Some(match value(o) {
                Some(v) => Update::Set(k, v),
                None => Update::Remove(k),
            })
        }
        Event::Delete(o) => Some(Update::Remove(key(&o)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects are (name, value); value 0 cannot be used.
    fn run(objects: &mut BTreeMap<String, u32>, events: Vec<Event<(&str, u32)>>) -> Vec<bool> {
        let mut listing = None;
        let key = |o: &(&str, u32)| Some(o.0.to_string());
        let value = |o: (&str, u32)| (o.1 != 0).then_some(o.1);
        events
            .into_iter()
            .filter_map(|e| step(&mut listing, e, key, value))
            .map(|u| u.apply(objects))
            .collect()
    }

    #[test]
    fn a_list_again_replaces_the_objects_at_its_end_only() {
        let mut objects = BTreeMap::new();
        let lists = run(
            &mut objects,
            vec![
                Event::Init,
                Event::InitApply(("a", 1)),
                Event::InitApply(("b", 1)),
                Event::InitDone,
                Event::Apply(("c", 1)),
                Event::Apply(("a", 2)),
                Event::Delete(("b", 1)),
            ],
        );
        assert_eq!(lists, [true, false, false, false]);
        assert_eq!(objects, [("a".into(), 2), ("c".into(), 1)].into());
        // The watch is lost; while it lists again nothing changes, and at
        // the end what was deleted meanwhile (c) is gone.
        let mut during = objects.clone();
        run(
            &mut during,
            vec![
                Event::Init,
                Event::InitApply(("a", 3)),
                Event::InitApply(("d", 1)),
            ],
        );
        assert_eq!(during, objects, "nothing changes before the list ends");
        let lists = run(
            &mut objects,
            vec![
                Event::Init,
                Event::InitApply(("a", 3)),
                Event::InitApply(("d", 1)),
                Event::InitDone,
            ],
        );
        assert_eq!(lists, [true]);
        assert_eq!(objects, [("a".into(), 3), ("d".into(), 1)].into());
        // An object that turns unusable goes.
        run(&mut objects, vec![Event::Apply(("d", 0))]);
        assert_eq!(objects, [("a".into(), 3)].into());
    }
}
