//! Waiting on a condition with a deadline, instead of sleeping for a
//! fixed time and hoping: [`wait_for`] in async code, [`wait_for_blocking`]
//! in plain threads.
use std::future::Future;
use std::time::Duration;

/// How often a condition is polled: often enough that a test waits little
/// past the moment it holds, seldom enough that a condition which runs a
/// command (curl, the CLI) does not load the machine.
pub const POLL: Duration = Duration::from_millis(50);

/// A condition that did not hold within its time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {waited:.1?} waiting for {what} (limit {timeout:?})")]
pub struct Timeout {
    /// What was waited for, as the caller named it.
    pub what: String,
    /// The limit the caller gave.
    pub timeout: Duration,
    /// How long it was waited for: the limit, or a little more when one
    /// poll of the condition took long.
    pub waited: Duration,
}

/// Polls `condition` every [`POLL`] until it returns `Some`, and returns
/// that; fails with [`Timeout`] naming `what` when it has not within
/// `timeout`. The condition is polled at least once, and once more at the
/// deadline.
///
/// The deadline is on tokio's clock, so that in a test with paused time it
/// passes as the test's time does.
pub async fn wait_for<T, F, Fut>(
    timeout: Duration,
    what: &str,
    mut condition: F,
) -> Result<T, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    use tokio::time::Instant;
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(v) = condition().await {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_string(),
                timeout,
                waited: now - start,
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// [`wait_for`] a plain condition for up to 5 s, panicking with the
/// [`Timeout`] if it does not hold: for unit tests, which fail that way.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let held = wait_for(Duration::from_secs(5), what, || {
        std::future::ready(condition().then_some(()))
    })
    .await;
    if let Err(timeout) = held {
        panic!("{timeout}");
    }
}

/// [`wait_for`] for code that is not async: sleeps the calling thread
/// between polls.
pub fn wait_for_blocking<T>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    use std::time::Instant;
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        if let Some(v) = condition() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Timeout {
                what: what.to_string(),
                timeout,
                waited: now - start,
            });
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_the_condition_holds() {
        let polls = Cell::new(0);
        let got = wait_for(Duration::from_secs(1), "three polls", || {
            polls.set(polls.get() + 1);
            let n = polls.get();
            async move { (n == 3).then_some(n * 10) }
        })
        .await;
        assert_eq!(got, Ok(30));
        assert_eq!(polls.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_condition_that_holds_at_once_is_polled_once_and_does_not_wait() {
        let start = tokio::time::Instant::now();
        let polls = Cell::new(0);
        let got = wait_for(Duration::ZERO, "nothing", || {
            polls.set(polls.get() + 1);
            async { Some(()) }
        })
        .await;
        assert_eq!(got, Ok(()));
        assert_eq!(polls.get(), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_on_tokios_clock_naming_what_and_how_long() {
        let start = tokio::time::Instant::now();
        let err = wait_for(Duration::from_secs(5), "the moon to turn blue", || async {
            None::<()>
        })
        .await
        .unwrap_err();
        // Paused time: exactly the limit passed, and no real second.
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(err.waited, Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            "timed out after 5.0s waiting for the moon to turn blue (limit 5s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_condition_is_polled_at_the_deadline() {
        // Holds from 120ms on; the limit is 120ms, not a multiple of POLL.
        let start = tokio::time::Instant::now();
        let got = wait_for(Duration::from_millis(120), "120ms", || async {
            (start.elapsed() >= Duration::from_millis(120)).then_some(())
        })
        .await;
        assert_eq!(got, Ok(()));
    }

    #[test]
    fn the_blocking_variant_polls_until_it_holds_then_times_out() {
        let mut polls = 0;
        let got = wait_for_blocking(Duration::from_secs(5), "two polls", || {
            polls += 1;
            (polls == 2).then_some("done")
        });
        assert_eq!(got, Ok("done"));

        let err = wait_for_blocking(Duration::from_millis(60), "never", || None::<()>).unwrap_err();
        assert!(err.waited >= Duration::from_millis(60), "{err}");
        assert!(err.to_string().starts_with("timed out after "), "{err}");
        assert!(
            err.to_string().ends_with(" waiting for never (limit 60ms)"),
            "{err}"
        );
    }
}
