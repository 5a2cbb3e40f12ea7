//! Plain HTTP/1.1 GETs: the demo's traffic and its look at the agents'
//! admin endpoints, over pooled keep-alive connections.
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The most of an answer that is read: reports and `/clusters` are a few KiB.
const MAX_BODY: usize = 4 << 20;

/// A client for plain `http://` URLs.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// Each GET, from connecting to the end of the body, takes at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// GETs `url`: its status and body.
    pub async fn get(&self, url: &str) -> anyhow::Result<(u16, Bytes)> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let exchange = async {
            let resp = self.client.get(uri).await?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
                .to_bytes();
            anyhow::Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r.map_err(|e| anyhow::anyhow!("GET {url}: {e:#}")),
            Err(_) => anyhow::bail!("GET {url}: no answer within {:?}", self.timeout),
        }
    }

    /// The body of `url` if it answers 200.
    pub async fn get_ok(&self, url: &str) -> Option<String> {
        match self.get(url).await {
            Ok((200, body)) => Some(String::from_utf8_lossy(&body).into_owned()),
            _ => None,
        }
    }
}
