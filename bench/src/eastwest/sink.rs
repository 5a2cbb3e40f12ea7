//! The byte sink at the far end of `eastwest`'s TCP port, and the two
//! loads that use it: new connections per second (each a connection
//! through the client agent, the gateway and the server agent that carries
//! one empty message), and one long transfer.
//!
//! The protocol, per message: the client sends the length (8 bytes, big
//! endian) and that many bytes; the sink reads them all and answers one
//! byte. The client never half-closes, so nothing depends on how a proxy
//! carries a FIN, and the answer comes only once every byte went through.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::process::Usage;

/// What the sink answers to a message it read whole.
const ACK: u8 = 0xac;
/// The size of each write of a transfer.
const CHUNK: usize = 256 * 1024;
/// Longest one new-connection message may take before it counts as failed.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the sink on `listener` until dropped (the task is aborted with
/// the returned handle).
pub fn serve(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                // A peer that goes away mid-message is the load's failure
                // to count, not the sink's.
                let _ = sink(conn).await;
            });
        }
    })
}

async fn sink(mut conn: TcpStream) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut len = [0u8; 8];
        match conn.read_exact(&mut len).await {
            Ok(_) => {}
            // The client closed between messages: done.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut left = u64::from_be_bytes(len);
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = conn.read(&mut buf[..want]).await?;
            if n == 0 {
                bail!("closed with {left} bytes to come");
            }
            left -= n as u64;
        }
        conn.write_all(&[ACK]).await?;
    }
}

/// Sends one message of `len` bytes on `conn` and waits for its answer.
async fn message(conn: &mut TcpStream, len: u64) -> anyhow::Result<()> {
    conn.write_all(&len.to_be_bytes()).await?;
    let chunk = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        conn.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack)
        .await
        .context("no answer from the sink")?;
    if ack[0] != ACK {
        bail!("the sink answered {:#x}", ack[0]);
    }
    Ok(())
}

/// A new connection to `addr` carrying one empty message, then closed.
async fn one_connection(addr: SocketAddr) -> anyhow::Result<()> {
    let mut conn = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_nodelay(true)?;
    message(&mut conn, 0).await
}

/// One transfer, or the new connections of one round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Carried {
    /// Connections (new-connection load) or bytes (transfer) carried.
    pub count: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The measured time.
    pub window: Duration,
    /// CPU time of the watched process (the gateway) over the window.
    pub cpu: Duration,
}

impl Carried {
    pub fn per_second(&self) -> f64 {
        let s = self.window.as_secs_f64();
        if s > 0.0 {
            self.count as f64 / s
        } else {
            0.0
        }
    }

    /// CPU time per `unit` of what was carried (1 for a connection, 10^9
    /// for a GB).
    pub fn cpu_per(&self, unit: f64) -> Option<Duration> {
        (self.count > 0).then(|| self.cpu.div_f64(self.count as f64 / unit))
    }

    /// Adds a later round or transfer.
    pub fn merge(&mut self, other: Carried) {
        self.count += other.count;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.window += other.window;
        self.cpu += other.cpu;
    }
}

/// CPU time of `pid` so far (none watched: zero).
fn cpu_of(pid: Option<u32>) -> anyhow::Result<Duration> {
    pid.map_or(Ok(Duration::ZERO), |p| Ok(Usage::of(p)?.cpu))
}

/// Closed loop: `workers` each open a new connection to `addr`, carry an
/// empty message and close it, back to back, for `warmup` and then the
/// measured `measure`; the connections completed in the window are
/// counted, with the CPU time `pid` took meanwhile.
pub async fn connections(
    addr: SocketAddr,
    workers: usize,
    warmup: Duration,
    measure: Duration,
    pid: Option<u32>,
) -> anyhow::Result<Carried> {
    let from = Instant::now() + warmup;
    let until = from + measure;
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(async move {
            let mut seen = Carried::default();
            while Instant::now() < until {
                let r = tokio::time::timeout(CONN_TIMEOUT, one_connection(addr)).await;
                let done = Instant::now();
                let r =
                    r.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {CONN_TIMEOUT:?}")));
                if done < from || done >= until {
                    continue;
                }
                match r {
                    Ok(()) => seen.count += 1,
                    Err(e) => {
                        seen.errors += 1;
                        seen.first_error.get_or_insert(format!("{e:#}"));
                        // A failing path answers at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            seen
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let before = cpu_of(pid)?;
    tokio::time::sleep_until(until.into()).await;
    let cpu = cpu_of(pid)?.saturating_sub(before);
    let mut total = Carried::default();
    while let Some(seen) = set.join_next().await {
        total.merge(seen.context("a connection worker panicked")?);
    }
    total.window = measure;
    total.cpu = cpu;
    Ok(total)
}

/// One connection to `addr` carrying `bytes` in one message: the time from
/// the connect to the sink's answer, and the CPU time `pid` took.
pub async fn transfer(addr: SocketAddr, bytes: u64, pid: Option<u32>) -> anyhow::Result<Carried> {
    let before = cpu_of(pid)?;
    let start = Instant::now();
    let mut conn = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_nodelay(true)?;
    message(&mut conn, bytes)
        .await
        .with_context(|| format!("sending {bytes} bytes through {addr}"))?;
    let window = start.elapsed();
    Ok(Carried {
        count: bytes,
        window,
        cpu: cpu_of(pid)?.saturating_sub(before),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sink_answers_each_whole_message_and_connections_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener);
        let me = Some(std::process::id());
        let t = transfer(addr, 3 * CHUNK as u64 + 17, me).await.unwrap();
        assert_eq!(t.count, 3 * CHUNK as u64 + 17);
        assert!(t.window > Duration::ZERO && t.errors == 0);
        let c = connections(addr, 2, Duration::ZERO, Duration::from_millis(300), me)
            .await
            .unwrap();
        assert!(c.count > 0, "{c:?}");
        assert_eq!((c.errors, c.window), (0, Duration::from_millis(300)));
        server.abort();
        // Nothing listens any more: every connection fails, and says why.
        let _ = server.await;
        let c = connections(addr, 1, Duration::ZERO, Duration::from_secs(1), None)
            .await
            .unwrap();
        assert_eq!(c.count, 0);
        assert!(c.errors > 0, "{c:?}");
        assert!(c.first_error.unwrap().contains("connecting to"));
    }

    #[test]
    fn rates_and_cpu_per_unit() {
        let mut a = Carried {
            count: 2_000,
            window: Duration::from_secs(1),
            cpu: Duration::from_millis(100),
            ..Default::default()
        };
        a.merge(Carried {
            count: 2_000,
            errors: 1,
            first_error: Some("reset".into()),
            window: Duration::from_secs(1),
            cpu: Duration::from_millis(100),
        });
        assert_eq!(a.per_second(), 2_000.0);
        assert_eq!(a.cpu_per(1.0), Some(Duration::from_micros(50)));
        assert_eq!((a.errors, a.first_error.as_deref()), (1, Some("reset")));
        let gb = Carried {
            count: 500_000_000,
            window: Duration::from_secs(2),
            cpu: Duration::from_millis(300),
            ..Default::default()
        };
        assert_eq!(gb.cpu_per(1e9), Some(Duration::from_millis(600)));
        assert_eq!(Carried::default().cpu_per(1.0), None);
        assert_eq!(Carried::default().per_second(), 0.0);
    }
}
