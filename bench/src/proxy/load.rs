//! The request load of `trellis-bench proxy`, over HTTP/1.1 keep-alive or
//! gRPC over h2c, either open loop at a fixed rate or closed loop as fast
//! as the target answers.
//!
//! Open loop (wrk2's model): a pacer thread emits the scheduled send
//! instants (one every 1/rate s; it sleeps with the OS timer, which is
//! finer than tokio's 1 ms wheel, so requests do not bunch at millisecond
//! ticks) into a queue that the workers take from. A request's latency is
//! measured from its *scheduled* instant, so a target that stalls is
//! charged for the requests that waited behind the stall (no coordinated
//! omission). Closed loop: every worker sends its next request as soon as
//! the previous one is answered.
//!
//! Workers: one per HTTP/1.1 connection; for gRPC, concurrent calls
//! multiplexed over a few HTTP/2 connections (tonic channels).
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::StatusCode;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use trellis_echo::v1::echo_client::EchoClient;
use trellis_echo::v1::EchoRequest;

use crate::machine::{CpuShare, CpuTimes};
use crate::net;
use crate::pace::Pace;
use crate::process::Usage;

/// Longest a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The HTTP path requested: the echo server's cheapest answer.
pub const HTTP_PATH: &str = "/plain";

/// What the load speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `GET /plain` on keep-alive connections, one request at a time each.
    Http1,
    /// `trellis.echo.v1.Echo/Echo` calls over HTTP/2 connections.
    Grpc,
}

/// One load phase against one address.
#[derive(Clone, Debug)]
pub struct Phase {
    pub protocol: Protocol,
    pub pace: Pace,
    /// HTTP/1.1: connections (one worker each). gRPC: HTTP/2 connections.
    pub connections: usize,
    /// gRPC only: calls in flight at most (workers over the connections).
    pub streams: usize,
    pub warmup: Duration,
    pub measure: Duration,
}

/// What one phase saw in its measured window.
#[derive(Clone, Debug, Default)]
pub struct PhaseResult {
    /// Requests answered with success: scheduled in the window (open
    /// loop) or completed in it (closed loop).
    pub ok: u64,
    /// Requests answered with success within the window, whenever they
    /// were scheduled: the work the CPU time of the window paid for. Equal
    /// to `ok` but for the requests in flight at the window's edges, unless
    /// the target falls behind the rate: then its queue grows, and fewer
    /// are answered in the window than were scheduled in it.
    pub served: u64,
    /// Failed or timed-out requests, counted like `ok`.
    pub errors: u64,
    pub first_error: Option<String>,
    pub window: Duration,
    /// Latency of every successful request, sorted.
    pub latencies: Vec<Duration>,
    /// CPU time of each watched process over the window, in their order.
    pub cpu: Vec<Duration>,
    /// The whole machine over the window.
    pub machine: CpuShare,
}

impl PhaseResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// CPU time of watched process `i` over the window per request
    /// served in it.
    pub fn cpu_per_request(&self, i: usize) -> Option<Duration> {
        let cpu = self.cpu.get(i)?;
        (self.served > 0).then(|| cpu.div_f64(self.served as f64))
    }

    /// Adds a later round of the same phase: counts and CPU time add up,
    /// latencies join, and the machine's shares are averaged by window.
    pub fn merge(&mut self, round: PhaseResult) {
        let (a, b) = (self.window.as_secs_f64(), round.window.as_secs_f64());
        if a + b > 0.0 {
            let mean = |x: f64, y: f64| (x * a + y * b) / (a + b);
            self.machine = CpuShare {
                busy: mean(self.machine.busy, round.machine.busy),
                steal: mean(self.machine.steal, round.machine.steal),
            };
        }
        self.ok += round.ok;
        self.served += round.served;
        self.errors += round.errors;
        self.first_error = self.first_error.take().or(round.first_error);
        self.window += round.window;
        self.latencies.extend(round.latencies);
        self.latencies.sort_unstable();
        if self.cpu.is_empty() {
            self.cpu = round.cpu;
        } else {
            for (c, r) in self.cpu.iter_mut().zip(round.cpu) {
                *c += r;
            }
        }
    }

    /// Counts one request, sent (or scheduled, in open loop) at `sent` and
    /// answered at `done`, against the measured window [`from`, `until`).
    fn record(&mut self, window: Window, sent: Instant, done: Instant, r: Result<(), String>) {
        let in_window = done >= window.from && done < window.until;
        if in_window && r.is_ok() {
            self.served += 1;
        }
        let counted = if window.open_loop {
            sent >= window.from
        } else {
            in_window
        };
        if !counted {
            return;
        }
        match r {
            Ok(()) => {
                self.ok += 1;
                self.latencies.push(done - sent);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

/// The measured window of a phase.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: Instant,
    until: Instant,
    /// Requests are sent on a schedule: a request counts by when it was
    /// scheduled, not when it was answered.
    open_loop: bool,
}

/// A client of one worker: its own HTTP/1.1 connection, or a handle on a
/// shared HTTP/2 connection.
enum Client {
    Http1(net::Client),
    Grpc(EchoClient<Channel>),
}

impl Client {
    /// One request; `Err` says what went wrong.
    async fn call(&mut self) -> Result<(), String> {
        match self {
            Client::Http1(c) => match c.get(HTTP_PATH).await {
                Ok((StatusCode::OK, _)) => Ok(()),
                Ok((s, _)) => Err(format!("HTTP status {s}")),
                Err(e) => Err(format!("{e:#}")),
            },
            Client::Grpc(c) => c
                .echo(EchoRequest {
                    message: "ping".into(),
                })
                .await
                .map(drop)
                .map_err(|s| format!("gRPC status {:?}: {}", s.code(), s.message())),
        }
    }
}

/// A gRPC client on a new HTTP/2 connection to `addr`.
pub async fn grpc_connect(addr: SocketAddr) -> anyhow::Result<EchoClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr} (h2c)"))?;
    Ok(EchoClient::new(ch))
}

/// Runs `phase` against `addr`: warm-up, then the measured window, over
/// which the CPU time of `pids` is also read.
pub async fn run(addr: SocketAddr, phase: &Phase, pids: &[u32]) -> anyhow::Result<PhaseResult> {
    let clients = connect(addr, phase).await?;
    let start = Instant::now();
    let from = start + phase.warmup;
    let until = from + phase.measure;

    let queue = match phase.pace {
        Pace::Rate(rate) => Some(Arc::new(Mutex::new(pace(rate, start, until)))),
        Pace::Max => None,
    };
    let window = Window {
        from,
        until,
        open_loop: queue.is_some(),
    };
    let mut workers = JoinSet::new();
    for client in clients {
        workers.spawn(work(client, queue.clone(), window));
    }
    drop(queue);
    let watch = tokio::spawn(watch(pids.to_vec(), from, until));

    let mut total = PhaseResult::default();
    let joined = tokio::time::timeout(until - start + REQUEST_TIMEOUT * 2, async {
        while let Some(seen) = workers.join_next().await {
            total.merge(seen.context("a load worker panicked")?);
        }
        anyhow::Ok(())
    })
    .await;
    joined.context("the load workers did not stop in time")??;
    total.window = phase.measure;
    (total.cpu, total.machine) = watch.await.context("the CPU watcher panicked")??;
    Ok(total)
}

/// The phase's workers' clients, connected.
async fn connect(addr: SocketAddr, phase: &Phase) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    match phase.protocol {
        Protocol::Http1 => {
            for _ in 0..phase.connections {
                clients.push(Client::Http1(net::Client::connect(addr).await?));
            }
        }
        Protocol::Grpc => {
            let mut channels = Vec::new();
            for _ in 0..phase.connections {
                channels.push(grpc_connect(addr).await?);
            }
            for i in 0..phase.streams {
                clients.push(Client::Grpc(channels[i % channels.len()].clone()));
            }
        }
    }
    Ok(clients)
}

/// The schedule: from `start`, one instant every 1/`rate` s until `until`,
/// each sent into the returned queue when it comes (from a thread of its
/// own, which sleeps with the OS's high-resolution timer).
pub(crate) fn pace(rate: u32, start: Instant, until: Instant) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for i in 0u64.. {
            let at = start + Duration::from_nanos(i * 1_000_000_000 / u64::from(rate));
            if at >= until {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            // Closed: the run was dropped.
            if tx.send(at).is_err() {
                break;
            }
        }
    });
    rx
}

/// One worker: takes scheduled instants from `queue` (open loop) or sends
/// back to back until the window ends (closed loop).
async fn work(
    mut client: Client,
    queue: Option<Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>>,
    window: Window,
) -> PhaseResult {
    let mut seen = PhaseResult::default();
    loop {
        let sent = match &queue {
            Some(q) => match q.lock().await.recv().await {
                Some(at) => at,
                None => break,
            },
            None if Instant::now() >= window.until => break,
            None => Instant::now(),
        };
        let r = match tokio::time::timeout(REQUEST_TIMEOUT, client.call()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        let failed = r.is_err();
        seen.record(window, sent, Instant::now(), r);
        if failed {
            // A failing target answers at once: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    seen
}

/// CPU time of `pids` and of the machine between `from` and `until`.
async fn watch(
    pids: Vec<u32>,
    from: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<Duration>, CpuShare)> {
    let cpu_of = |pids: &[u32]| -> anyhow::Result<Vec<Duration>> {
        pids.iter().map(|&p| Ok(Usage::of(p)?.cpu)).collect()
    };
    tokio::time::sleep_until(from.into()).await;
    let (before, machine) = (cpu_of(&pids)?, CpuTimes::now()?);
    tokio::time::sleep_until(until.into()).await;
    let after = cpu_of(&pids)?;
    let cpu = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    Ok((cpu, CpuTimes::now()?.share_since(machine)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pacer_emits_the_schedule_at_the_rate() {
        let start = Instant::now();
        let until = start + Duration::from_millis(200);
        let mut rx = pace(1000, start, until);
        let mut got = Vec::new();
        while let Some(at) = rx.recv().await {
            // Never before its instant.
            assert!(Instant::now() >= at);
            got.push(at);
        }
        assert_eq!(got.len(), 200);
        assert_eq!(got[1] - got[0], Duration::from_millis(1));
        assert_eq!(got[199] - got[0], Duration::from_millis(199));
    }

    #[test]
    fn cpu_per_request() {
        let r = PhaseResult {
            ok: 9_000,
            served: 10_000,
            window: Duration::from_secs(10),
            cpu: vec![Duration::from_secs(1), Duration::from_millis(500)],
            ..Default::default()
        };
        assert_eq!(r.per_second(), 900.0);
        assert_eq!(r.cpu_per_request(0), Some(Duration::from_micros(100)));
        assert_eq!(r.cpu_per_request(1), Some(Duration::from_micros(50)));
        assert_eq!(r.cpu_per_request(2), None);
        let none = PhaseResult::default();
        assert_eq!(none.cpu_per_request(0), None);
    }

    #[test]
    fn rounds_of_a_phase_add_up() {
        let ms = Duration::from_millis;
        let round = |ok, lat: Vec<u64>, cpu: Vec<u64>, steal, err: Option<&str>| PhaseResult {
            ok,
            served: ok + 1,
            errors: u64::from(err.is_some()),
            first_error: err.map(String::from),
            window: Duration::from_secs(2),
            latencies: lat.into_iter().map(ms).collect(),
            cpu: cpu.into_iter().map(ms).collect(),
            machine: CpuShare { busy: 50.0, steal },
        };
        let mut total = PhaseResult::default();
        total.merge(round(3, vec![1, 5, 9], vec![100, 40], 10.0, None));
        total.merge(round(2, vec![2, 7], vec![60, 20], 30.0, Some("refused")));
        total.merge(round(1, vec![3], vec![40, 40], 20.0, Some("reset")));
        assert_eq!((total.ok, total.served, total.errors), (6, 9, 2));
        assert_eq!(total.window, Duration::from_secs(6));
        assert_eq!(total.latencies, [1, 2, 3, 5, 7, 9].map(ms));
        assert_eq!(total.cpu, [ms(200), ms(100)]);
        assert_eq!(total.first_error.as_deref(), Some("refused"));
        // Averaged over equal windows, not the worst round's.
        assert!((total.machine.steal - 20.0).abs() < 1e-9);
        assert!((total.machine.busy - 50.0).abs() < 1e-9);
        assert_eq!(total.per_second(), 1.0);
        assert_eq!(total.cpu_per_request(0), Some(ms(200).div_f64(9.0)));
    }

    #[test]
    fn a_request_counts_by_its_schedule_and_its_cpu_by_when_it_was_served() {
        let from = Instant::now();
        let until = from + Duration::from_secs(10);
        let ms = |n| from + Duration::from_millis(n);
        let before = from - Duration::from_millis(500);
        let open = Window {
            from,
            until,
            open_loop: true,
        };
        let mut r = PhaseResult::default();
        // Scheduled before the window, answered in it: served, not counted.
        r.record(open, before, ms(100), Ok(()));
        // Scheduled in it, answered after it (a queue that grew): counted,
        // not served.
        r.record(open, ms(9_000), ms(12_000), Ok(()));
        // Both in it.
        r.record(open, ms(1_000), ms(1_002), Ok(()));
        // A failure is counted, never served.
        r.record(open, ms(2_000), ms(2_001), Err("refused".into()));
        assert_eq!((r.ok, r.served, r.errors), (2, 2, 1));
        assert_eq!(
            r.latencies,
            [Duration::from_millis(3_000), Duration::from_millis(2)]
        );
        assert_eq!(r.first_error.as_deref(), Some("refused"));

        let closed = Window {
            open_loop: false,
            ..open
        };
        let mut r = PhaseResult::default();
        r.record(closed, before, ms(100), Ok(()));
        r.record(closed, ms(9_000), ms(12_000), Ok(()));
        assert_eq!((r.ok, r.served), (1, 1));
        assert_eq!(r.latencies, [Duration::from_millis(600)]);
    }
}
