//! The floor of the proxy benchmark: two null TCP relays in the proxies'
//! place. Each copies bytes between a client connection and one it opens
//! to its target, on one tokio thread like the proxies, with no TLS, no
//! HTTP and no routing, so its CPU per request is what the two loopback
//! hops, the system calls and the sleeps between requests cost on this
//! machine before a proxy does any work of its own.
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use trellis_e2e::{free_port, Proc};

use crate::proxy::{tail, wait_http_ok, EchoPorts, Pair};

/// `trellis-bench relay`: the relay process.
#[derive(clap::Args)]
pub struct Args {
    /// `LISTEN=TARGET`: accept on LISTEN, relay each connection to TARGET;
    /// repeatable.
    #[arg(long = "forward", required = true, value_parser = parse_forward)]
    forwards: Vec<(SocketAddr, SocketAddr)>,
}

fn parse_forward(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (listen, target) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected LISTEN=TARGET"))?;
    let addr = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("{a:?}: {e}"));
    Ok((addr(listen)?, addr(target)?))
}

/// Relays until killed, on the caller's (current-thread) runtime.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let mut accepting = tokio::task::JoinSet::new();
    for (listen, target) in args.forwards {
        let l = TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        accepting.spawn(async move {
            loop {
                let (client, _) = l.accept().await?;
                tokio::spawn(relay(client, target));
            }
        });
    }
    match accepting.join_next().await {
        Some(r) => r?,
        None => Ok(()),
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A client-side and a server-side relay, each forwarding an HTTP/1.1 and
/// a gRPC port; on free ports of 127.0.0.1.
pub struct RelayPair {
    client: Proc,
    server: Proc,
    http: SocketAddr,
    grpc: SocketAddr,
}

impl RelayPair {
    pub async fn start(dir: &Path, echo: EchoPorts) -> anyhow::Result<Self> {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (server_http, server_grpc) = (local(free_port()), local(free_port()));
        let (http, grpc) = (local(free_port()), local(free_port()));
        let spawn = |side: &str, forwards: [(SocketAddr, SocketAddr); 2]| {
            let mut cmd = Command::new(std::env::current_exe()?);
            cmd.arg("relay");
            for (listen, target) in forwards {
                cmd.args(["--forward", &format!("{listen}={target}")]);
            }
            Proc::spawn(
                &format!("{side} relay"),
                &mut cmd,
                &dir.join(format!("{side}-relay.log")),
            )
        };
        let server = spawn(
            "server",
            [
                (server_http, local(echo.http)),
                (server_grpc, local(echo.grpc)),
            ],
        )?;
        let mut client = spawn("client", [(http, server_http), (grpc, server_grpc)])?;
        wait_http_ok(http, "/plain", &mut client).await?;
        Ok(Self {
            client,
            server,
            http,
            grpc,
        })
    }

    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.client.check_running()?;
        self.server.check_running()
    }

    pub fn logs(&self, lines: usize) -> String {
        format!(
            "--- client relay ---\n{}\n--- server relay ---\n{}",
            tail(&self.client.output(), lines),
            tail(&self.server.output(), lines)
        )
    }
}

impl Pair for RelayPair {
    fn http_addr(&self) -> SocketAddr {
        self.http
    }

    fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    fn pids(&self) -> anyhow::Result<[u32; 2]> {
        Ok([
            self.client.pid().context("the client relay was killed")?,
            self.server.pid().context("the server relay was killed")?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_through_a_relay_both_ways() {
        // The target: answers each chunk with it upper-cased.
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = target.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = target.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n].to_ascii_uppercase()).await.unwrap();
            }
        });
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        tokio::spawn(serve(Args {
            forwards: vec![(listen, to)],
        }));
        let mut c = trellis_e2e::wait_for(
            std::time::Duration::from_secs(5),
            "the relay to listen",
            || async { TcpStream::connect(listen).await.ok() },
        )
        .await
        .unwrap();
        for word in ["ping", "pong"] {
            c.write_all(word.as_bytes()).await.unwrap();
            let mut got = [0u8; 4];
            let read = c.read_exact(&mut got);
            tokio::time::timeout(std::time::Duration::from_secs(5), read)
                .await
                .expect("an answer through the relay")
                .unwrap();
            assert_eq!(&got, word.to_uppercase().as_bytes());
        }
    }

    #[test]
    fn a_forward_is_two_addresses() {
        let want: (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert_eq!(parse_forward("127.0.0.1:1=127.0.0.1:2"), Ok(want));
        assert!(parse_forward("127.0.0.1:1")
            .unwrap_err()
            .contains("LISTEN=TARGET"));
        assert!(parse_forward("127.0.0.1:1=nowhere").is_err());
    }
}
