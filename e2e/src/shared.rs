//! [`Shared`]: one fixture for the tests of a binary that only read it,
//! when starting one per test would cost more than the tests themselves.
//!
//! The test harness runs no code after the last test, and a `static` is
//! never dropped, so a fixture kept in one would leave its processes,
//! namespaces and firewall rules behind. A `Shared` holds its fixture
//! weakly instead: the first test that asks starts it, each test holds it
//! while it runs, and the last one out drops it. Should every test let go
//! at once (one thread between two tests while the other runs a test that
//! does not use it), the next test starts it again: slower, never wrong.
//! So the tests of a binary with a `Shared` fixture should all use it.
use std::future::Future;
use std::sync::{Arc, Weak};

use tokio::sync::Mutex;

/// A fixture started by the first test that asks for it, dropped when no
/// test holds it any more.
pub struct Shared<T> {
    slot: Mutex<Weak<T>>,
}

impl<T> Shared<T> {
    pub const fn new() -> Self {
        Self {
            slot: Mutex::const_new(Weak::new()),
        }
    }

    /// The running fixture, or one `start` starts (while other tests
    /// asking wait for it). If `start` fails, the next test tries again.
    pub async fn get<F, Fut>(&self, start: F) -> anyhow::Result<Arc<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(running) = slot.upgrade() {
            return Ok(running);
        }
        let started = Arc::new(start().await?);
        *slot = Arc::downgrade(&started);
        Ok(started)
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    static STARTS: AtomicUsize = AtomicUsize::new(0);

    struct Fixture;

    async fn start() -> anyhow::Result<Fixture> {
        STARTS.fetch_add(1, Ordering::SeqCst);
        Ok(Fixture)
    }

    #[tokio::test]
    async fn started_once_while_held_and_again_once_let_go() {
        static SHARED: Shared<Fixture> = Shared::new();
        let a = SHARED.get(start).await.unwrap();
        let b = SHARED.get(start).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(STARTS.load(Ordering::SeqCst), 1);
        drop((a, b));
        let _c = SHARED.get(start).await.unwrap();
        assert_eq!(STARTS.load(Ordering::SeqCst), 2);
        let failed = SHARED
            .get(|| async { anyhow::bail!("not this time") })
            .await;
        assert!(failed.is_ok(), "a running fixture is not started again");
    }
}
