//! Graceful shutdown: a [`Signal`] tells every [`Watch`] to drain (stop
//! accepting, finish what is in flight) and waits, up to a deadline, until
//! the last watch is gone. Listeners and their connections each hold a
//! watch for as long as they run.
use std::time::Duration;

use tokio::sync::watch;

/// A new signal and the first watch on it.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    (Signal(tx), Watch(rx))
}

/// Starts a drain and waits for it.
#[derive(Debug)]
pub struct Signal(watch::Sender<bool>);

/// Held by what must finish before a drain is complete; tells when to.
#[derive(Clone, Debug)]
pub struct Watch(watch::Receiver<bool>);

impl Signal {
    /// Tells every watch to drain, then waits until all of them are
    /// dropped or `deadline` has passed. Whether everything finished.
    pub async fn drain(self, deadline: Duration) -> bool {
        self.0.send_replace(true);
        tokio::time::timeout(deadline, self.0.closed())
            .await
            .is_ok()
    }
}

impl Watch {
    /// Returns once a drain has started (at once if it has).
    pub async fn signalled(&mut self) {
        // An error means the signal was dropped without a drain: then
        // nothing will ever ask for one.
        if self.0.wait_for(|draining| *draining).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Returns at the first SIGINT or SIGTERM: when a data-plane binary
/// starts its drain.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_every_watch_and_no_longer_than_its_deadline() {
        let (signal, watch) = channel();
        let mut held = watch.clone();
        let worker = tokio::spawn(async move {
            held.signalled().await;
            // Finishing in-flight work takes a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(held);
        });
        drop(watch);
        assert!(signal.drain(Duration::from_secs(10)).await);
        worker.await.unwrap();

        let (signal, watch) = channel();
        let stuck = tokio::spawn(async move {
            let _held = watch;
            std::future::pending::<()>().await;
        });
        let start = tokio::time::Instant::now();
        assert!(!signal.drain(Duration::from_secs(3)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        stuck.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_whose_signal_is_dropped_never_fires() {
        let (signal, mut watch) = channel();
        drop(signal);
        let fired = tokio::time::timeout(Duration::from_secs(60), watch.signalled()).await;
        assert!(fired.is_err());
    }
}
