//! The write load: concurrent clients, each on its own connection, each
//! doing sequential puts of distinct keys; latencies are kept whole and
//! sorted for percentiles.
use std::time::{Duration, Instant};

use anyhow::Context;

use super::cluster::Client;
use crate::report::percentile;

/// Longest a single put may take before it counts as failed.
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

/// Shape of the load.
#[derive(Clone, Debug)]
pub struct Load {
    pub value_size: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What the clients saw during the measured window.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Puts that completed inside the window.
    pub committed: u64,
    /// Puts that completed, warm-up included.
    pub all_committed: u64,
    /// Puts that failed or timed out inside the window.
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// Latency of every committed put, sorted.
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.committed as f64 / self.window.as_secs_f64()
    }

    /// The `p`-th percentile (0–100) by the nearest-rank method.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        percentile(&self.latencies, p)
    }
}

/// Runs one task per client for warm-up plus the measured window and
/// merges what they saw in the window. Keys are `bench/CLIENT/SEQ`.
pub async fn run(clients: Vec<Client>, load: &Load) -> anyhow::Result<LoadResult> {
    let start = Instant::now();
    let from = start + load.warmup;
    let until = from + load.measure;
    let value = vec![b'x'; load.value_size];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let value = value.clone();
        tasks.spawn(async move {
            let mut seen = LoadResult::default();
            let mut seq = 0u64;
            while Instant::now() < until {
                let key = format!("bench/{i}/{seq}");
                seq += 1;
                let t0 = Instant::now();
                let r = tokio::time::timeout(PUT_TIMEOUT, client.put(key, value.clone())).await;
                let t1 = Instant::now();
                let in_window = t1 >= from && t1 <= until;
                match r {
                    Ok(Ok(())) => {
                        seen.all_committed += 1;
                        if in_window {
                            seen.committed += 1;
                            seen.latencies.push(t1 - t0);
                        }
                    }
                    Ok(Err(e)) => failed(&mut seen, in_window, e.to_string()).await,
                    Err(_) => {
                        failed(
                            &mut seen,
                            in_window,
                            format!("timed out after {PUT_TIMEOUT:?}"),
                        )
                        .await
                    }
                }
            }
            seen
        });
    }
    let mut total = LoadResult {
        window: load.measure,
        ..Default::default()
    };
    let joined = tokio::time::timeout(load.warmup + load.measure + PUT_TIMEOUT * 2, async {
        while let Some(r) = tasks.join_next().await {
            let r = r.context("a load client panicked")?;
            total.committed += r.committed;
            total.all_committed += r.all_committed;
            total.errors += r.errors;
            total.first_error = total.first_error.take().or(r.first_error);
            total.latencies.extend(r.latencies);
        }
        anyhow::Ok(())
    })
    .await;
    joined.context("the load clients did not stop in time")??;
    total.latencies.sort_unstable();
    Ok(total)
}

async fn failed(seen: &mut LoadResult, in_window: bool, error: String) {
    if in_window {
        seen.errors += 1;
        seen.first_error.get_or_insert(error);
    }
    // A failing node answers at once: do not spin on it.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_per_second_of_window() {
        let r = LoadResult {
            committed: 31_000,
            window: Duration::from_secs(10),
            ..Default::default()
        };
        assert_eq!(r.per_second(), 3100.0);
    }
}
