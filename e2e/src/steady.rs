//! A steady client: GETs a URL at a fixed rate over HTTP/1.1 keep-alive
//! (hyper's pooled client), and counts every request that failed (an error
//! or a status other than 200), to measure what a client sees while an
//! agent restarts. Used by the hot-restart tests and `trellis-bench
//! upgrade`.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What a steady client saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub failed: u64,
    /// The first few failures, when and why, for the report.
    pub errors: Vec<String>,
}

/// A running steady client; [`Steady::stop`] ends it.
pub struct Steady {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Steady {
    /// Starts GETting `url` `rate` times a second, each request waited for
    /// before the next (one keep-alive connection while answers are fast),
    /// each allowed `timeout`.
    pub fn start(url: &str, rate: u32, timeout: Duration) -> anyhow::Result<Steady> {
        let uri: hyper::Uri = url.parse()?;
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, t, f, e) = (stop.clone(), total.clone(), failed.clone(), errors.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let got = tokio::time::timeout(timeout, async {
                    let resp = client
                        .get(uri.clone())
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                    let status = resp.status();
                    resp.into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("reading the body: {e}"))?;
                    if status != 200 {
                        return Err(format!("status {status}"));
                    }
                    Ok(())
                })
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
                t.fetch_add(1, Ordering::Relaxed);
                if let Err(msg) = got {
                    f.fetch_add(1, Ordering::Relaxed);
                    let mut errs = e.lock().unwrap_or_else(|p| p.into_inner());
                    if errs.len() < 10 {
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        errs.push(format!("at {:.3} s (Unix time): {msg}", at.as_secs_f64()));
                    }
                }
            }
        });
        Ok(Steady {
            stop,
            total,
            failed,
            errors,
            task,
        })
    }

    /// What it saw so far.
    pub fn counts(&self) -> Counts {
        Counts {
            total: self.total.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Stops it after the request in flight; what it saw.
    pub async fn stop(mut self) -> Counts {
        self.stop.store(true, Ordering::Relaxed);
        let counts = self.counts();
        let _ = (&mut self.task).await;
        Counts {
            total: self.total.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            ..counts
        }
    }
}
