//! HTTP/1.1 upgrades (WebSocket and others) through the proxy: the request
//! goes on a connection of its own, and after `101 Switching Protocols` the
//! two upgraded connections are spliced.
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{self, Body};
use super::failure::Failure;
use trellis_dataplane::telemetry::Flag;

/// The protocol an HTTP/1.1 request asks to upgrade to, if it does.
pub fn wants_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    upgrade_of(req.version(), req.headers())
}

/// [`wants_upgrade`] on a request's version and headers.
pub fn upgrade_of(version: http::Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let conn_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    conn_upgrade.then(|| headers.get(header::UPGRADE).cloned())?
}

/// Puts back the two headers an upgrade needs after hop-by-hop stripping.
pub fn restore_request_headers(h: &mut HeaderMap, upgrade: &HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, upgrade.clone());
}

/// Where an upgrade request goes: a fresh connection `io` to the next hop
/// at `addr`, which may answer with a head of up to `max_response_headers`
/// bytes.
pub struct Hop<I> {
    pub io: I,
    pub addr: std::net::SocketAddr,
    pub max_response_headers: u32,
}

/// Sends the upgrade request `req` to `hop`; on `101`, splices
/// `downstream`'s upgraded connection with this one.
pub async fn send_on<I>(
    hop: Hop<I>,
    req: Request<Body>,
    upgrade: HeaderValue,
    downstream: OnUpgrade,
) -> Result<Response<Body>, Flag>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Hop {
        io,
        addr,
        max_response_headers,
    } = hop;
    let (mut sender, conn) = super::h1_pool::client_builder(max_response_headers)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| Flag::UpstreamConnectFailure)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection failed");
        }
    });
    let mut req = req;
    super::h1_pool::prepare(&mut req, addr);
    restore_request_headers(req.headers_mut(), &upgrade);
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| Failure::of_hyper(&e).flag())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp.map(body::incoming));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((down, up)) => {
                let mut down = TokioIo::new(down);
                let mut up = TokioIo::new(up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    Ok(resp.map(body::incoming))
}
