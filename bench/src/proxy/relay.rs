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
use trellis_e2e::Proc;

use super::{direct, EchoPorts, Pair, Sides};
use crate::net::{check_free, wait_http_ok};

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
                match l.accept().await {
                    Ok((client, _)) => {
                        tokio::spawn(relay(client, target));
                    }
                    // Out of descriptors, say: the next accept may work.
                    Err(e) => {
                        eprintln!("accepting on {listen}: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    // The accept loops never end; one that panicked ends the relay.
    match accepting.join_next().await {
        Some(Err(e)) => Err(e.into()),
        _ => Ok(()),
    }
}

async fn relay(mut client: TcpStream, target: SocketAddr) {
    let mut upstream = match TcpStream::connect(target).await {
        Ok(u) => u,
        Err(e) => {
            eprintln!("connecting to {target}: {e}");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        if e.kind() != std::io::ErrorKind::ConnectionReset {
            eprintln!("relaying to {target}: {e}");
        }
    }
}

const CLIENT_IP: [u8; 4] = [127, 0, 0, 6];
const SERVER_IP: [u8; 4] = [127, 0, 0, 7];
const HTTP_PORT: u16 = 18080;
const GRPC_PORT: u16 = 18090;

/// A client-side relay on 127.0.0.6 and a server-side one on 127.0.0.7,
/// each forwarding an HTTP/1.1 and a gRPC port.
pub struct RelayPair {
    pub sides: Sides,
}

impl RelayPair {
    pub async fn start(dir: &Path, echo: EchoPorts) -> anyhow::Result<Self> {
        let at = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        let (server_http, server_grpc) = (at(SERVER_IP, HTTP_PORT), at(SERVER_IP, GRPC_PORT));
        let (http, grpc) = (at(CLIENT_IP, HTTP_PORT), at(CLIENT_IP, GRPC_PORT));
        check_free(&[server_http, server_grpc, http, grpc])?;
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
        let mut server = spawn(
            "server",
            [
                (server_http, direct(echo.http)),
                (server_grpc, direct(echo.grpc)),
            ],
        )?;
        wait_http_ok(server_http, "/plain", &mut server).await?;
        let mut client = spawn("client", [(http, server_http), (grpc, server_grpc)])?;
        wait_http_ok(http, "/plain", &mut client).await?;
        Ok(Self {
            sides: Sides::new("relay", client, server),
        })
    }
}

impl Pair for RelayPair {
    fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((CLIENT_IP, HTTP_PORT))
    }

    fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from((CLIENT_IP, GRPC_PORT))
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use trellis_e2e::free_port;

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
