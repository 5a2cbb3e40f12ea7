//! An optional deadline on a future, without the cost of
//! `match limit { Some(t) => timeout(t, fut).await, None => fut.await }`:
//! an `async fn` keeps room for `fut` in both arms (a value moved into
//! the awaited `Timeout` keeps its own slot too), and the request path
//! nests two of them, so the outbound request future had grown past
//! 16 KB, copied on every spawn. [`within`] holds `fut` once.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

pin_project_lite::pin_project! {
    /// See [`within`].
    pub struct Within<F> {
        #[pin]
        fut: F,
        #[pin]
        sleep: Option<Sleep>,
    }
}

/// `fut`'s output, or `None` if `limit` (when given) passes first.
pub fn within<F: Future>(limit: Option<Duration>, fut: F) -> Within<F> {
    Within {
        fut,
        sleep: limit.map(tokio::time::sleep),
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => sleep.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn output_before_the_limit_none_after_it_and_no_limit_waits() {
        let done_in = |d| async move {
            tokio::time::sleep(d).await;
            7
        };
        assert_eq!(within(Some(2 * SECOND), done_in(SECOND)).await, Some(7));
        let start = tokio::time::Instant::now();
        assert_eq!(within(Some(SECOND), done_in(2 * SECOND)).await, None);
        assert_eq!(start.elapsed(), SECOND);
        assert_eq!(within(None, done_in(3600 * SECOND)).await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_ready_at_once_wins_over_a_zero_limit() {
        assert_eq!(within(Some(Duration::ZERO), async { 1 }).await, Some(1));
    }
}
