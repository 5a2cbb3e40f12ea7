//! The steady load of `failover`: `GET /` through the client agent at a
//! fixed rate, open loop (the schedule is `proxy`'s pacer), every request
//! recorded with its scheduled instant and who answered it: an echo of
//! cluster-1, one of cluster-2, or nobody.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::StatusCode;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;
use trellis_echo::Report;

use crate::multinet::{NET_A, NET_B};
use crate::net::Client;
use crate::proxy::load::pace;

/// Longest a request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Keep-alive connections to the client agent, one worker each.
const CONNECTIONS: usize = 8;
/// How long the load may run at most.
const LONGEST_RUN: Duration = Duration::from_secs(24 * 3600);

/// Who answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An endpoint in the client's cluster.
    Local,
    /// An endpoint in the other cluster, through its gateway.
    Remote,
    /// Nobody: an error status, a broken connection or no answer in time.
    Failed,
}

impl Outcome {
    /// Of a response: the echo names its cluster as its version.
    pub fn of(status: StatusCode, body: &Bytes) -> Outcome {
        if status != StatusCode::OK {
            return Outcome::Failed;
        }
        match serde_json::from_slice::<Report>(body) {
            Ok(r) if r.workload.version == NET_A.cluster => Outcome::Local,
            Ok(r) if r.workload.version == NET_B.cluster => Outcome::Remote,
            _ => Outcome::Failed,
        }
    }
}

/// One request: when it was scheduled, and who answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub sent: Instant,
    pub outcome: Outcome,
}

/// The load, running until dropped.
pub struct Load {
    records: Arc<Mutex<Vec<Record>>>,
    _workers: JoinSet<()>,
}

impl Load {
    /// `rate` requests per second to `addr`, from now.
    pub async fn start(addr: SocketAddr, rate: u32) -> anyhow::Result<Load> {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(Client::connect(addr).await?);
        }
        let start = Instant::now();
        let queue = Arc::new(AsyncMutex::new(pace(rate, start, start + LONGEST_RUN)));
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut workers = JoinSet::new();
        for mut client in clients {
            let (queue, records) = (queue.clone(), records.clone());
            workers.spawn(async move {
                // Ends when the load is dropped (and the pacer with the queue).
                while let Some(sent) = queue.lock().await.recv().await {
                    let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, client.get("/")).await
                    {
                        Ok(Ok((status, body))) => Outcome::of(status, &body),
                        _ => Outcome::Failed,
                    };
                    let mut r = records.lock().unwrap_or_else(|p| p.into_inner());
                    r.push(Record { sent, outcome });
                }
            });
        }
        Ok(Load {
            records,
            _workers: workers,
        })
    }

    /// The requests scheduled at or after `from` and answered (or failed)
    /// so far, in the order they were scheduled.
    pub fn since(&self, from: Instant) -> Vec<Record> {
        let all = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let mut r: Vec<Record> = all.iter().filter(|r| r.sent >= from).copied().collect();
        r.sort_by_key(|r| r.sent);
        r
    }
}

/// When the run of `outcome` that ends `records` began, if it spans at
/// least `span` (the traffic has settled there).
pub fn settled(records: &[Record], outcome: Outcome, span: Duration) -> Option<Instant> {
    let start = records
        .iter()
        .rposition(|r| r.outcome != outcome)
        .map_or(0, |i| i + 1);
    let (first, last) = (records.get(start)?, records.last()?);
    (last.sent - first.sent >= span).then_some(first.sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_clusters_apart_by_the_echos_version() {
        let body = |version: &str| {
            Bytes::from(format!(
                r#"{{"service":"svc","version":"{version}","identity":"","host":"h","method":"GET","path":"/","proto":"HTTP/1.1","headers":{{}},"body_bytes":0}}"#
            ))
        };
        assert_eq!(
            Outcome::of(StatusCode::OK, &body("cluster-1")),
            Outcome::Local
        );
        assert_eq!(
            Outcome::of(StatusCode::OK, &body("cluster-2")),
            Outcome::Remote
        );
        assert_eq!(
            Outcome::of(StatusCode::SERVICE_UNAVAILABLE, &body("cluster-1")),
            Outcome::Failed
        );
        assert_eq!(
            Outcome::of(StatusCode::OK, &Bytes::from("no healthy upstream")),
            Outcome::Failed
        );
        assert_eq!(
            Outcome::of(StatusCode::OK, &body("cluster-3")),
            Outcome::Failed
        );
    }

    #[test]
    fn settles_on_a_run_that_ends_the_records_and_is_long_enough() {
        let t0 = Instant::now();
        let at = |ms: u64, outcome| Record {
            sent: t0 + Duration::from_millis(ms),
            outcome,
        };
        use Outcome::*;
        let r = [
            at(0, Local),
            at(100, Failed),
            at(200, Remote),
            at(900, Remote),
            at(1300, Remote),
        ];
        let ms = Duration::from_millis;
        assert_eq!(settled(&r, Remote, ms(1000)), Some(t0 + ms(200)));
        assert_eq!(settled(&r, Remote, ms(1200)), None);
        assert_eq!(settled(&r, Local, ms(0)), None);
        assert_eq!(settled(&r[..1], Local, ms(0)), Some(t0));
        assert_eq!(settled(&[], Local, ms(0)), None);
    }
}
