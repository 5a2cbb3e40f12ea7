//! Time until a write first succeeds: after a process starts, or after the
//! leader is killed.
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::task::JoinSet;

/// How often a new attempt starts. Attempts overlap, so the first success
/// is seen within about this much of when the system could first take it,
/// even while earlier attempts hang on a dead leader.
pub const EVERY: Duration = Duration::from_millis(20);
/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts `attempt()` every [`EVERY`], each bounded by [`ATTEMPT_TIMEOUT`],
/// until one succeeds; returns the time from `since` to that success.
/// Gives up `deadline` after `since`.
pub async fn first_success<F, Fut>(
    since: Instant,
    deadline: Duration,
    what: &str,
    mut attempt: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let end = tokio::time::Instant::from_std(since + deadline);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Dropping the set aborts the attempts still running.
    let mut attempts = JoinSet::new();
    let mut last_error = String::from("no attempt finished");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let fut = attempt();
                attempts.spawn(tokio::time::timeout(ATTEMPT_TIMEOUT, fut));
            }
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(Ok(()))) => return Ok(since.elapsed()),
                Ok(Ok(Err(e))) => last_error = format!("{e:#}"),
                Ok(Err(_)) => last_error = format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                Err(e) => last_error = e.to_string(),
            },
            _ = tokio::time::sleep_until(end) => {
                bail!("{what}: no write succeeded within {deadline:?}; last error: {last_error}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn returns_at_the_first_success_despite_hanging_attempts() {
        let n = Arc::new(AtomicU32::new(0));
        let since = Instant::now();
        let took = first_success(since, Duration::from_secs(5), "test", || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            async move {
                match i {
                    // The first attempt hangs, as a put to a dead leader does.
                    0 => std::future::pending().await,
                    1..=4 => bail!("no leader"),
                    _ => Ok(()),
                }
            }
        })
        .await
        .unwrap();
        assert!(took >= EVERY * 5, "{took:?}");
        assert!(took < ATTEMPT_TIMEOUT, "{took:?}");
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline_with_the_last_error() {
        let err = first_success(
            Instant::now(),
            Duration::from_millis(200),
            "test",
            || async { bail!("connection refused") },
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("connection refused"), "{err}");
    }
}
