//! Telling systemd how the process is doing (`sd_notify(3)`), for units of
//! `Type=notify` with `WatchdogSec=`: `READY=1` once the binary does its
//! job, `WATCHDOG=1` at half the watchdog interval for as long as the
//! async runtime runs tasks (a wedged runtime stops feeding it, and
//! systemd restarts the service), `STOPPING=1` when a drain starts.
//!
//! Each message is one datagram to the socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` for an abstract socket); with no such variable —
//! not started by systemd — nothing is sent. Written here rather than
//! taken from a crate: the protocol is one datagram, and the crates add
//! dependencies for it.
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go; `None` from [`Notifier::from_env`] outside
/// systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for, if any: `$NOTIFY_SOCKET`, and
    /// `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or this process.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_none_or(|pid| pid == std::process::id())
            })
            .filter(|usec| *usec > 0)
            .map(Duration::from_micros);
        match Notifier::at(path.to_string_lossy().as_ref(), watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = ?path, error = %e, "NOTIFY_SOCKET cannot be used: systemd will not hear from this process");
                None
            }
        }
    }

    /// A notifier to `path` (`@name`: an abstract socket) that feeds a
    /// watchdog of `watchdog`, if any.
    pub fn at(path: &str, watchdog: Option<Duration>) -> std::io::Result<Notifier> {
        let to = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => SocketAddr::from_pathname(path)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            to,
            watchdog,
        })
    }

    /// Sends one message (`KEY=VALUE` lines); a failure is logged, never
    /// fatal: the service runs on without systemd hearing it.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.to) {
            tracing::warn!(error = %e, message, "telling systemd");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`: a drain has started.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// Feeds the watchdog, if systemd set one, from a task on the current
    /// runtime, at half its interval, until the process exits.
    pub fn feed_watchdog(self: &std::sync::Arc<Self>) {
        let Some(every) = self.watchdog.map(|w| w / 2) else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                me.send("WATCHDOG=1");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[tokio::test]
    async fn ready_stopping_and_the_watchdog_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("trellis-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Arc::new(
            Notifier::at(path.to_str().unwrap(), Some(Duration::from_millis(40))).unwrap(),
        );
        n.ready("serving");
        assert_eq!(received(&systemd), "READY=1\nSTATUS=serving");
        n.feed_watchdog();
        let sys = tokio::task::spawn_blocking(move || {
            let pings = [received(&systemd), received(&systemd)];
            (systemd, pings)
        });
        let (systemd, pings) = sys.await.unwrap();
        assert_eq!(pings, ["WATCHDOG=1", "WATCHDOG=1"]);
        n.stopping();
        // Watchdog pings may be queued before it.
        let mut last = received(&systemd);
        while last == "WATCHDOG=1" {
            last = received(&systemd);
        }
        assert_eq!(last, "STOPPING=1\nSTATUS=draining");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abstract_socket_is_named_with_an_at() {
        let name = format!("trellis-notify-test-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        systemd
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::at(&format!("@{name}"), None)
            .unwrap()
            .send("READY=1");
        assert_eq!(received(&systemd), "READY=1");
    }

    #[tokio::test]
    async fn without_a_watchdog_nothing_is_fed() {
        let name = format!("trellis-notify-nowd-{}", std::process::id());
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        Arc::new(Notifier::at(&format!("@{name}"), None).unwrap()).feed_watchdog();
        tokio::time::sleep(Duration::from_millis(100)).await;
        systemd.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        assert!(systemd.recv(&mut buf).is_err(), "a ping without a watchdog");
    }
}
