//! [`Streams`]: the agents streaming from this node and where each stands
//! (versions sent and ACKed, the last NACK), for `trellis proxy-status`
//! and for the registry sweep to know which streams are alive.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use trellis_api::v1::ProxyStatus;

/// One stream's state.
#[derive(Clone, Debug, Default)]
pub struct StreamStatus {
    /// `name.namespace`.
    pub proxy: String,
    pub identity: String,
    pub address: String,
    pub workload_group: String,
    pub connected_at: i64,
    pub sent_version: u64,
    pub acked_version: u64,
    /// (version, reason, unix seconds) of the last NACK.
    pub nack: Option<(u64, String, i64)>,
}

/// The streams of this node.
#[derive(Default)]
pub struct Streams {
    open: Mutex<BTreeMap<u64, StreamStatus>>,
    next: AtomicU64,
}

impl Streams {
    /// A new stream id (unique on this node while it runs).
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn open(&self, id: u64, status: StreamStatus) {
        self.lock().insert(id, status);
    }

    pub fn update(&self, id: u64, f: impl FnOnce(&mut StreamStatus)) {
        if let Some(s) = self.lock().get_mut(&id) {
            f(s);
        }
    }

    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// How many streams are open.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    pub fn is_open(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Every open stream, as the API reports them.
    pub fn list(&self, node_id: u64) -> Vec<ProxyStatus> {
        self.lock()
            .iter()
            .map(|(id, s)| ProxyStatus {
                proxy: s.proxy.clone(),
                identity: s.identity.clone(),
                node_id,
                address: s.address.clone(),
                sent_version: s.sent_version,
                acked_version: s.acked_version,
                nack_version: s.nack.as_ref().map_or(0, |n| n.0),
                nack_error: s.nack.as_ref().map(|n| n.1.clone()).unwrap_or_default(),
                nack_at_unix: s.nack.as_ref().map_or(0, |n| n.2),
                connected_at_unix: s.connected_at,
                stream_id: *id,
                workload_group: s.workload_group.clone(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, StreamStatus>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
