//! Config push: what every node sends to each agent streaming from it
//! (xDS semantics with Trellis's own messages, `trellis.v1.Discovery`).
//!
//! The flow: the state machine tells [`Push`] which keys each applied batch
//! changed; changes are debounced ([`DEBOUNCE_QUIET`], at most
//! [`DEBOUNCE_MAX`]) into a new [`Snapshot`] (items by namespace, with the
//! change sets of recent versions), published on a watch channel. Each
//! agent's stream (the `Discovery` service, in `api`) computes from it
//! what its agent sees ([`Scope`]: its namespace and Sidecar) and sends
//! the delta since the version it last sent, or everything on connect,
//! after a NACK or when it fell too far behind ([`response`]). Agents ACK
//! or NACK each response; [`Streams`] keeps that for `trellis
//! proxy-status`.
//!
//! Split horizon ([`horizon`]): an agent is sent the endpoints of other
//! networks behind their east-west gateways.
//!
//! Besides the replica, a node pushes its own view ([`local`]): the
//! registrations it took while it could not reach the leader, and which
//! clusters are stale, checked every [`STALE_CHECK_EVERY`].
//!
//! [`item`], [`scope`], [`horizon`], [`snapshot`] and [`response`] are pure functions
//! of the replica's state; [`Push`] is the task that runs them after each
//! change. Nothing here uses the node or the gRPC services.
pub mod horizon;
pub mod item;
pub mod local;
pub mod response;
pub mod scope;
pub mod snapshot;
pub mod status;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

pub use item::{Item, Type};
pub use local::Overlay;
pub use scope::Scope;
pub use snapshot::Snapshot;
pub use status::Streams;

use crate::raft::state_machine::Changed;
use crate::raft::SharedState;
use snapshot::{Builder, Local};

/// A push waits for the store to be quiet this long...
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(30);
/// ...but no longer than this after the first change.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(300);
/// How often a node checks whether a cluster crossed the staleness
/// threshold, either way.
pub const STALE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The pushable state of a node and its streams.
pub struct Push {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    pub streams: Streams,
    /// Registrations this node holds until they are committed.
    pub overlay: Overlay,
}

impl Push {
    /// Starts keeping snapshots of `state`, as node `me` pushes them;
    /// another cluster not heard from for longer than `stale_after` has
    /// its registered endpoints pushed as not ready.
    pub fn start(state: SharedState, me: u64, stale_after: Duration) -> Push {
        let started = Instant::now();
        let (overlay, held) = Overlay::new();
        let local = Local {
            overlay: overlay.clone(),
            stale_after,
        };
        let (changes, mut builder) = {
            let mut st = state.write().unwrap_or_else(|p| p.into_inner());
            let rx = st.watch();
            (rx, Builder::new(&st, me, local))
        };
        let first = builder
            .publish(None)
            .expect("a first snapshot is always made");
        tracing::info!(
            version = first.version,
            items = first.items(),
            took_ms = started.elapsed().as_millis() as u64,
            "push snapshot built"
        );
        let (tx, rx) = watch::channel(first);
        let events = Events {
            changes,
            held,
            tick: tokio::time::interval(STALE_CHECK_EVERY),
        };
        tokio::spawn(keep_snapshots(state, events, builder, tx));
        Push {
            snapshots: rx,
            streams: Streams::default(),
            overlay,
        }
    }

    /// The latest snapshot, and a receiver told of the next ones.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }
}

/// Whether a changed key can matter to agents.
pub(crate) fn relevant(key: &str) -> bool {
    use crate::raft::state::cluster::{CLUSTER_PREFIX, DOMAIN_KEY, NODE_PREFIX};
    use crate::raft::state::kubernetes::KUBE_PREFIX;
    use crate::raft::state::registry::{CONFIG_PREFIX, GATEWAY_PREFIX, WORKLOAD_PREFIX};
    use crate::raft::state::MESH_KEY;
    [
        CONFIG_PREFIX,
        WORKLOAD_PREFIX,
        KUBE_PREFIX,
        CLUSTER_PREFIX,
        NODE_PREFIX,
        GATEWAY_PREFIX,
    ]
    .iter()
    .any(|p| key.starts_with(p))
        || key == MESH_KEY
        || key == DOMAIN_KEY
}

/// What makes a node push again.
struct Events {
    /// The replica changed.
    changes: mpsc::UnboundedReceiver<Changed>,
    /// A key of the overlay changed.
    held: mpsc::UnboundedReceiver<String>,
    /// Time to check the clusters' freshness.
    tick: tokio::time::Interval,
}

enum Event {
    Store(Changed),
    Held(String),
    Tick,
}

impl Events {
    /// The next event; `None` when the replica is gone.
    async fn next(&mut self) -> Option<Event> {
        tokio::select! {
            c = self.changes.recv() => c.map(Event::Store),
            Some(k) = self.held.recv() => Some(Event::Held(k)),
            _ = self.tick.tick() => Some(Event::Tick),
        }
    }
}

/// The changes gathered for the next snapshot.
#[derive(Default)]
struct Pending {
    /// Changed keys that can matter to agents.
    keys: Vec<String>,
    /// The membership changed: the bundle lists the control-plane nodes.
    membership: bool,
    /// The whole state was replaced: read it all again.
    reload: bool,
    /// Check the clusters' freshness.
    tick: bool,
}

impl Pending {
    fn take(&mut self, event: Event) {
        let change = match event {
            Event::Store(c) => c,
            Event::Held(key) => return self.keys.push(key),
            Event::Tick => {
                self.tick = true;
                return;
            }
        };
        match change {
            Changed::Keys {
                keys, membership, ..
            } => {
                // Hosts are made canonical with the domain: every item again.
                self.reload |= keys
                    .iter()
                    .any(|k| k == crate::raft::state::cluster::DOMAIN_KEY);
                self.keys.extend(keys.into_iter().filter(|k| relevant(k)));
                self.membership |= membership;
            }
            Changed::All { .. } => self.reload = true,
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.membership && !self.reload
    }
}

async fn keep_snapshots(
    state: SharedState,
    mut events: Events,
    mut builder: Builder,
    tx: watch::Sender<Arc<Snapshot>>,
) {
    loop {
        let mut pending = Pending::default();
        let Some(first) = events.next().await else {
            return;
        };
        pending.take(first);
        if pending.tick {
            let st = state.read().unwrap_or_else(|p| p.into_inner());
            // A cluster crossed the threshold: every endpoint again.
            pending.reload |= builder.restale(&st, crate::raft::now());
        }
        if pending.is_empty() {
            continue;
        }
        let deadline = Instant::now() + DEBOUNCE_MAX;
        loop {
            let wait = DEBOUNCE_QUIET.min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, events.next()).await {
                Ok(Some(e)) => pending.take(e),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let Pending {
            mut keys, reload, ..
        } = pending;
        keys.sort_unstable();
        keys.dedup();
        let started = Instant::now();
        {
            let st = state.read().unwrap_or_else(|p| p.into_inner());
            if reload {
                builder.reload(&st);
            } else {
                builder.apply(&st, &keys);
            }
        }
        let last = tx.borrow().clone();
        if let Some(snap) = builder.publish(Some(&last)) {
            tracing::debug!(
                version = snap.version,
                keys = keys.len(),
                items = snap.items(),
                took = ?started.elapsed(),
                "new push snapshot"
            );
            let _ = tx.send(snap);
        }
    }
}
