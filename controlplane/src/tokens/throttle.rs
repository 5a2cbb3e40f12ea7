//! [`Throttle`]: slows down peers that keep presenting bad join tokens.

use std::collections::HashMap;

use super::error::TokenError;

/// Peers remembered at most, by default; see [`Throttle::with_max_peers`].
pub const DEFAULT_MAX_PEERS: usize = 10_000;

/// Per-peer failure counter with lockout, bounded in memory.
///
/// A peer (whatever key the caller chooses, usually the remote IP) that fails
/// `max_failures` times within `window_secs` of its first counted failure is
/// refused for `lockout_secs`. The 43-character secret cannot be guessed
/// anyway; this keeps a misbehaving or scanning peer from burning CPU on
/// hashing and from filling logs.
///
/// Usage: [`check`](Self::check) before looking at the token, then
/// [`record_failure`](Self::record_failure) or
/// [`record_success`](Self::record_success) with the outcome.
#[derive(Debug, Clone)]
pub struct Throttle {
    max_failures: u32,
    window_secs: u64,
    lockout_secs: u64,
    max_peers: usize,
    peers: HashMap<String, Entry>,
    next_sweep: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: u64,
    /// Refused while `now < locked_until`; 0 when never locked.
    locked_until: u64,
}

impl Entry {
    /// From this instant on, the entry carries no information and can go.
    fn forgettable_at(&self, window_secs: u64) -> u64 {
        self.window_start
            .saturating_add(window_secs)
            .max(self.locked_until)
    }
}

impl Throttle {
    /// `max_failures` of 0 is treated as 1 (lock out on the first failure).
    pub fn new(max_failures: u32, window_secs: u64, lockout_secs: u64) -> Throttle {
        Throttle {
            max_failures: max_failures.max(1),
            window_secs,
            lockout_secs,
            max_peers: DEFAULT_MAX_PEERS,
            peers: HashMap::new(),
            next_sweep: 0,
        }
    }

    /// Caps the number of peers remembered (at least 1). When full, the entry
    /// that would be forgotten soonest anyway is evicted to make room.
    pub fn with_max_peers(mut self, max_peers: usize) -> Throttle {
        self.max_peers = max_peers.max(1);
        self
    }

    /// Refuses a peer that is locked out, saying how long it must wait.
    pub fn check(&self, peer: &str, now: u64) -> Result<(), TokenError> {
        match self.peers.get(peer) {
            Some(e) if e.locked_until > now => Err(TokenError::Throttled {
                retry_after_secs: e.locked_until - now,
            }),
            _ => Ok(()),
        }
    }

    /// Counts a failed join attempt by `peer`.
    pub fn record_failure(&mut self, peer: &str, now: u64) {
        if now >= self.next_sweep {
            self.sweep(now);
        }
        if !self.peers.contains_key(peer) && self.peers.len() >= self.max_peers {
            self.sweep(now);
            if self.peers.len() >= self.max_peers {
                self.evict_one();
            }
        }
        let window_secs = self.window_secs;
        let e = self.peers.entry(peer.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: 0,
        });
        if e.locked_until > now {
            // Already refused; the caller skipped `check`. Extending the
            // lockout here would let a flood keep a shared address (NAT)
            // locked forever.
            return;
        }
        if now.saturating_sub(e.window_start) >= window_secs {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures >= self.max_failures {
            e.locked_until = now.saturating_add(self.lockout_secs);
            e.failures = 0;
            e.window_start = now;
        }
    }

    /// Forgets `peer`'s failures after it joined successfully.
    pub fn record_success(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    /// Number of peers currently remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Drops entries whose window and lockout have both passed. Runs at most
    /// once per window (plus when the map is full), so the cost is amortised.
    fn sweep(&mut self, now: u64) {
        let window_secs = self.window_secs;
        self.peers
            .retain(|_, e| e.forgettable_at(window_secs) > now);
        self.next_sweep = now.saturating_add(window_secs.max(1));
    }

    fn evict_one(&mut self) {
        let window_secs = self.window_secs;
        let victim = self
            .peers
            .iter()
            .min_by_key(|(_, e)| e.forgettable_at(window_secs))
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.peers.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(t: &Throttle, peer: &str, now: u64) -> Option<u64> {
        match t.check(peer, now) {
            Ok(()) => None,
            Err(TokenError::Throttled { retry_after_secs }) => Some(retry_after_secs),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn locks_out_after_max_failures_in_window() {
        let mut t = Throttle::new(3, 60, 300);
        t.record_failure("10.0.0.1", 1000);
        t.record_failure("10.0.0.1", 1010);
        assert_eq!(retry_after(&t, "10.0.0.1", 1010), None);
        t.record_failure("10.0.0.1", 1020);
        assert_eq!(retry_after(&t, "10.0.0.1", 1020), Some(300));
        assert_eq!(retry_after(&t, "10.0.0.1", 1319), Some(1));
        assert_eq!(retry_after(&t, "10.0.0.1", 1320), None);
        // Other peers are unaffected.
        assert_eq!(retry_after(&t, "10.0.0.2", 1020), None);
        let msg = t.check("10.0.0.1", 1100).unwrap_err().to_string();
        assert!(msg.contains("retry in 220s"), "{msg}");
    }

    #[test]
    fn failures_outside_window_do_not_accumulate() {
        let mut t = Throttle::new(3, 60, 300);
        // A window starts at the first failure counted in it: 0 and 59
        // share one, then 119, 179 and 239 each start a new one.
        for now in [0, 59, 119, 179, 239] {
            t.record_failure("p", now);
        }
        assert_eq!(retry_after(&t, "p", 240), None);
        t.record_failure("p", 241);
        t.record_failure("p", 242);
        assert_eq!(retry_after(&t, "p", 242), Some(300));
    }

    #[test]
    fn success_clears_failures() {
        let mut t = Throttle::new(2, 60, 300);
        t.record_failure("p", 0);
        t.record_success("p");
        t.record_failure("p", 1);
        assert_eq!(retry_after(&t, "p", 1), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn failures_during_lockout_do_not_extend_it() {
        let mut t = Throttle::new(1, 60, 100);
        t.record_failure("p", 0);
        t.record_failure("p", 50);
        assert_eq!(retry_after(&t, "p", 50), Some(50));
        assert_eq!(retry_after(&t, "p", 100), None);
        // After the lockout the count starts again.
        t.record_failure("p", 100);
        assert_eq!(retry_after(&t, "p", 100), Some(100));
    }

    #[test]
    fn zero_max_failures_means_one() {
        let mut t = Throttle::new(0, 60, 10);
        t.record_failure("p", 0);
        assert_eq!(retry_after(&t, "p", 0), Some(10));
    }

    #[test]
    fn stale_entries_are_forgotten() {
        let mut t = Throttle::new(5, 60, 300);
        for i in 0..100 {
            t.record_failure(&format!("peer{i}"), 0);
        }
        assert_eq!(t.len(), 100);
        t.record_failure("late", 61);
        assert_eq!(t.len(), 1, "windows of the first 100 peers have passed");
    }

    #[test]
    fn locked_entries_survive_sweep_until_lockout_ends() {
        let mut t = Throttle::new(2, 10, 1000);
        t.record_failure("locked", 0);
        t.record_failure("locked", 1); // locked until 1001
        t.record_failure("other", 500); // sweeps; forgettable at 510
        assert_eq!(t.len(), 2, "the lockout outlives the window");
        assert_eq!(retry_after(&t, "locked", 500), Some(501));
        t.record_failure("other2", 1001);
        assert_eq!(t.len(), 1, "only other2 remains");
        assert_eq!(retry_after(&t, "locked", 1001), None);
    }

    #[test]
    fn map_is_capped_and_evicts_soonest_forgotten() {
        let mut t = Throttle::new(2, 60, 600).with_max_peers(3);
        t.record_failure("a", 0);
        t.record_failure("a", 1); // locked until 601
        t.record_failure("b", 10);
        t.record_failure("c", 20);
        t.record_failure("d", 30); // full: evicts b (forgettable at 70)
        assert_eq!(t.len(), 3);
        assert_eq!(retry_after(&t, "a", 30), Some(571), "lockout kept");
        t.record_failure("c", 31);
        t.record_failure("b", 32); // b is new again: evicts d (90)
        t.record_failure("b", 33);
        assert_eq!(retry_after(&t, "b", 33), Some(600));
        assert_eq!(retry_after(&t, "c", 33), Some(598));
        assert_eq!(t.len(), 3);

        let mut big = Throttle::new(5, 3600, 3600);
        for i in 0..(DEFAULT_MAX_PEERS + 500) {
            big.record_failure(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255), 5);
        }
        assert_eq!(big.len(), DEFAULT_MAX_PEERS);
    }
}
