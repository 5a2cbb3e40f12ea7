//! Graceful shutdown: a [`Signal`] tells every [`Watch`] to drain (stop
//! accepting, finish what is in flight) and waits, up to a deadline, until
//! the last watch is gone; past the deadline it tells them to close
//! whatever they still hold. Listeners and their connections each hold a
//! watch for as long as they run.
use std::time::Duration;

use tokio::sync::watch;

/// A new signal and the first watch on it.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(State::Serving);
    (Signal(tx), Watch(rx))
}

/// Where a drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Serving,
    /// Finish what is in flight; take nothing new.
    Draining,
    /// The deadline passed: close what is still open.
    Closing,
}

/// Starts a drain and waits for it.
#[derive(Debug)]
pub struct Signal(watch::Sender<State>);

/// Held by what must finish before a drain is complete; tells when to.
#[derive(Clone, Debug)]
pub struct Watch(watch::Receiver<State>);

impl Signal {
    /// Tells every watch to drain, then waits until all of them are
    /// dropped or `deadline` has passed, when it tells those left to
    /// close ([`Watch::closing`]). Whether everything finished.
    pub async fn drain(self, deadline: Duration) -> bool {
        self.0.send_replace(State::Draining);
        let finished = tokio::time::timeout(deadline, self.0.closed())
            .await
            .is_ok();
        if !finished {
            self.0.send_replace(State::Closing);
        }
        finished
    }
}

impl Watch {
    /// Returns once a drain has started (at once if it has).
    pub async fn signalled(&mut self) {
        // An error means the signal was dropped without a drain: then
        // nothing will ever ask for one.
        self.reached(State::Draining).await;
    }

    /// Whether a drain has started.
    pub fn draining(&self) -> bool {
        *self.0.borrow() >= State::Draining
    }

    /// Returns once the drain's deadline has passed: what is still open
    /// is to be closed now.
    pub async fn closing(&mut self) {
        self.reached(State::Closing).await;
    }

    async fn reached(&mut self, state: State) {
        if self.0.wait_for(|s| *s >= state).await.is_err() {
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
        assert!(!held.draining());
        let worker = tokio::spawn(async move {
            held.signalled().await;
            assert!(held.draining());
            // Finishing in-flight work takes a while.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(held);
        });
        drop(watch);
        assert!(signal.drain(Duration::from_secs(10)).await);
        worker.await.unwrap();

        let (signal, mut watch) = channel();
        // Held past the deadline, then told to close.
        let stuck = tokio::spawn(async move {
            watch.closing().await;
            tokio::time::Instant::now()
        });
        let start = tokio::time::Instant::now();
        assert!(!signal.drain(Duration::from_secs(3)).await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(stuck.await.unwrap() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_whose_signal_is_dropped_never_fires() {
        let (signal, mut watch) = channel();
        drop(signal);
        let fired = tokio::time::timeout(Duration::from_secs(60), watch.signalled()).await;
        assert!(fired.is_err());
    }
}
