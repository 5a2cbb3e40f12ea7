//! The WorkloadGroup readiness probe, run by the agent against its own
//! application as Kubernetes runs a pod's: `httpGet` (a status in 200..400
//! passes), `tcpSocket` (a connect passes) or `exec` (exit status 0
//! passes), every `periodSeconds` (10), each try within `timeoutSeconds`
//! (1), `successThreshold` (1) passes in a row to be ready and
//! `failureThreshold` (3) failures in a row to be unready. The result goes
//! to the control plane, which sends no traffic to an unready workload.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use trellis_api::config::ReadinessProbe;
use trellis_api::v1::HealthReport;

use super::Resources;
use crate::Shared;

/// Probes for as long as the agent runs, for the group `group` of
/// `namespace` as the control plane pushes it.
pub async fn run(
    held: Arc<Shared<Resources>>,
    namespace: String,
    group: String,
    app_host: IpAddr,
    tx: watch::Sender<Option<HealthReport>>,
) {
    let mut tally = Tally::default();
    let mut delayed = false;
    loop {
        let probe = held
            .load()
            .group(&namespace, &group)
            .and_then(|g| g.probe.clone());
        let Some(p) = probe else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        if !delayed {
            delayed = true;
            tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
        }
        let timeout = secs(p.timeout_seconds, 1);
        let result = match tokio::time::timeout(timeout, check(&p, app_host)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        if let Some(report) = tally.add(&p, result) {
            tracing::info!(healthy = report.healthy, reason = %report.reason, "readiness changed");
            let _ = tx.send(Some(report));
        }
        tokio::time::sleep(secs(p.period_seconds, 10)).await;
    }
}

fn secs(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.map_or(default, |s| s.max(0) as u64))
}

/// Consecutive results, and the state they add up to.
#[derive(Default)]
struct Tally {
    successes: u32,
    failures: u32,
    healthy: Option<bool>,
}

impl Tally {
    /// Counts `result`; the new report when the state changes.
    fn add(&mut self, p: &ReadinessProbe, result: Result<(), String>) -> Option<HealthReport> {
        let need = |v: Option<i32>, d: u32| v.map_or(d, |n| n.max(1) as u32);
        let (healthy, reason) = match result {
            Ok(()) => {
                self.successes += 1;
                self.failures = 0;
                (self.successes >= need(p.success_threshold, 1)).then(|| (true, String::new()))?
            }
            Err(why) => {
                self.failures += 1;
                self.successes = 0;
                // Until the first success a workload is not ready anyway.
                let enough =
                    self.failures >= need(p.failure_threshold, 3) || self.healthy.is_none();
                enough.then_some((false, why))?
            }
        };
        if self.healthy == Some(healthy) {
            return None;
        }
        self.healthy = Some(healthy);
        Some(HealthReport { healthy, reason })
    }
}

async fn check(p: &ReadinessProbe, app_host: IpAddr) -> Result<(), String> {
    if let Some(h) = &p.http_get {
        let host = h.host.clone().unwrap_or_else(|| app_host.to_string());
        let port = u16::try_from(h.port).map_err(|_| format!("bad port {}", h.port))?;
        let path = h.path.as_deref().unwrap_or("/");
        let mut s = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("GET http://{host}:{port}{path}: {e}"))?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: trellis-probe\r\nConnection: close\r\n");
        for hd in &h.http_headers {
            req.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)
            .await
            .map_err(|e| format!("GET http://{host}:{port}{path}: {e}"))?;
        let status: u16 = std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("GET http://{host}:{port}{path}: not an HTTP answer"))?;
        return if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("GET http://{host}:{port}{path} answered {status}"))
        };
    }
    if let Some(t) = &p.tcp_socket {
        let host = t.host.clone().unwrap_or_else(|| app_host.to_string());
        let port = u16::try_from(t.port).map_err(|_| format!("bad port {}", t.port))?;
        return TcpStream::connect((host.as_str(), port))
            .await
            .map(drop)
            .map_err(|e| format!("connect {host}:{port}: {e}"));
    }
    if let Some(e) = &p.exec {
        let (cmd, args) = e.command.split_first().ok_or("exec: no command")?;
        let status = tokio::process::Command::new(cmd)
            .args(args)
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|err| format!("exec {cmd}: {err}"))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("exec {cmd}: {status}"))
        };
    }
    if p.grpc.is_some() {
        return Err("gRPC probes are not supported by this agent; use httpGet or tcpSocket".into());
    }
    Err("the probe has no handler".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(success: i32, failure: i32) -> ReadinessProbe {
        ReadinessProbe {
            success_threshold: Some(success),
            failure_threshold: Some(failure),
            ..Default::default()
        }
    }

    #[test]
    fn thresholds() {
        let p = probe(2, 2);
        let mut t = Tally::default();
        let fail = || Err("down".to_string());
        // Not ready before the first success, said at once.
        assert_eq!(t.add(&p, fail()).map(|r| r.healthy), Some(false));
        assert_eq!(t.add(&p, Ok(())), None);
        assert_eq!(t.add(&p, Ok(())).map(|r| r.healthy), Some(true));
        assert_eq!(t.add(&p, fail()), None);
        assert_eq!(t.add(&p, Ok(())), None);
        assert_eq!(t.add(&p, fail()), None);
        let r = t.add(&p, fail()).unwrap();
        assert_eq!((r.healthy, r.reason.as_str()), (false, "down"));
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_real_sockets() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz ");
                let status = if ok { "200 OK" } else { "503 Unavailable" };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let http = |path: &str| {
            trellis_api::yaml::from_str::<ReadinessProbe>(&format!(
                "{{httpGet: {{path: {path}, port: {port}}}}}"
            ))
            .unwrap()
        };
        assert_eq!(check(&http("/healthz"), ip).await, Ok(()));
        let err = check(&http("/other"), ip).await.unwrap_err();
        assert!(err.ends_with("answered 503"), "{err}");
        let tcp: ReadinessProbe =
            trellis_api::yaml::from_str(&format!("{{tcpSocket: {{port: {port}}}}}")).unwrap();
        assert_eq!(check(&tcp, ip).await, Ok(()));
        let closed: ReadinessProbe = trellis_api::yaml::from_str("{tcpSocket: {port: 1}}").unwrap();
        assert!(check(&closed, ip).await.is_err());
        let exec: ReadinessProbe =
            trellis_api::yaml::from_str("{exec: {command: [\"false\"]}}").unwrap();
        assert!(check(&exec, ip).await.is_err());
        let exec: ReadinessProbe =
            trellis_api::yaml::from_str("{exec: {command: [\"true\"]}}").unwrap();
        assert_eq!(check(&exec, ip).await, Ok(()));
    }
}
