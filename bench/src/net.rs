//! The loopback plumbing of the test beds: fixed addresses checked free
//! before use, and HTTP/1.1 requests to see whether a process is ready
//! (an agent's or an Envoy's admin `/ready`) or a path answers, and a
//! keep-alive client of the loads.
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use trellis_e2e::{wait_for, Proc};

use crate::process::tail;

/// How long a process may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The authority every HTTP/1.1 request names: the echo service of
/// `proxy` (an admin endpoint ignores it).
pub const AUTHORITY: &str = "echo.default.svc.cluster.local";

/// Fails if something listens on one of `addrs` already (say, the
/// proxies of a benchmark still running): it would answer for ours.
pub fn check_free(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    for a in addrs {
        std::net::TcpListener::bind(a).with_context(|| {
            format!("cannot listen on {a}: is another `trellis-bench` running?")
        })?;
    }
    Ok(())
}

/// Waits until `GET path` on `addr` answers 200, failing early if `p`
/// exits.
pub async fn wait_http_ok(addr: SocketAddr, path: &str, p: &mut Proc) -> anyhow::Result<()> {
    let what = format!("http://{addr}{path} to answer 200");
    let r = wait_for(START_TIMEOUT, &what, || {
        let alive = p.check_running();
        async move {
            if let Err(e) = alive {
                return Some(Err(e));
            }
            let mut conn = http1_connect(addr).await.ok()?;
            let (status, _) = http1_get(&mut conn, path).await.ok()?;
            (status == StatusCode::OK).then_some(Ok(()))
        }
    })
    .await;
    r.and_then(|r| r)
        .with_context(|| format!("log of {}:\n{}", addr, tail(&p.output(), 30)))
}

/// A new HTTP/1.1 keep-alive connection to `addr`.
pub async fn http1_connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    // Ends when the sender is dropped or the peer closes.
    tokio::spawn(conn);
    Ok(sender)
}

/// `GET path` on an HTTP/1.1 connection; the status and the whole body.
pub async fn http1_get(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let req = Request::get(path)
        .header(HOST, AUTHORITY)
        .body(Empty::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    // Read to the end, or the connection cannot take the next request.
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A keep-alive HTTP/1.1 client of one address that connects again after
/// a failed request.
pub struct Client {
    addr: SocketAddr,
    conn: Option<SendRequest<Empty<Bytes>>>,
}

impl Client {
    /// Connects on its first request.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// Connected now, so that a target that is not there fails here.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            conn: Some(http1_connect(addr).await?),
        })
    }

    /// `GET path`: the status and body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut sender = match self.conn.take() {
            Some(s) => s,
            None => http1_connect(self.addr).await?,
        };
        let r = http1_get(&mut sender, path)
            .await
            .with_context(|| format!("GET http://{}{path}", self.addr))?;
        // Kept only if it carried this request: a broken one is replaced.
        self.conn = Some(sender);
        Ok(r)
    }
}
