//! The gateway's settings: flags, each with a `TRELLIS_` environment
//! variable, one default and one line of doc.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use trellis_api::topology;

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trellis_api::config::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn parse_cluster(s: &str) -> Result<String, String> {
    topology::validate_name("cluster", s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `trellis-eastwest`: carries other networks' mTLS connections to this
/// network's endpoints, by SNI, without terminating TLS.
#[derive(Parser, Clone, Debug)]
#[command(name = "trellis-eastwest", version)]
pub struct Options {
    /// Gateway join token (from `trellis token create --kind gateway --network NET`): gets the gateway's certificate, which names its network.
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where key, certificate chain, trust bundle and the config cache are kept.
    #[arg(
        long,
        env = "TRELLIS_DATA_DIR",
        default_value = "/var/lib/trellis-eastwest"
    )]
    pub data_dir: PathBuf,
    /// Control-plane address to stream config from (repeatable; default: the addresses the join token gave).
    #[arg(
        long = "control-plane",
        env = "TRELLIS_CONTROL_PLANE",
        value_delimiter = ','
    )]
    pub control_plane: Vec<String>,
    /// The listener other networks' agents connect to.
    #[arg(long, env = "TRELLIS_LISTEN", default_value = "0.0.0.0:15443")]
    pub listen: SocketAddr,
    /// IP:PORT at which other networks reach the listener, registered with the control plane (repeatable; default: --listen, if it is not a wildcard address).
    #[arg(long, env = "TRELLIS_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<SocketAddr>,
    /// Health (/healthz/ready), as Istio's gateways serve it.
    #[arg(long, env = "TRELLIS_HEALTH", default_value = "0.0.0.0:15021")]
    pub health: SocketAddr,
    /// Metrics (/stats/prometheus) and health.
    #[arg(long, env = "TRELLIS_METRICS", default_value = "0.0.0.0:15020")]
    pub metrics: SocketAddr,
    /// Admin endpoints (/config_dump, /clusters, /certs, /stats, /ready, /logging).
    #[arg(long, env = "TRELLIS_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// This gateway's name among its network's gateways, as `trellis proxy-status` shows it (default: eastwest-NETWORK-ADDRESS).
    #[arg(long, env = "TRELLIS_NAME")]
    pub name: Option<String>,
    /// The cluster this gateway is in (default: the one of the control-plane node it streams from).
    #[arg(long, env = "TRELLIS_CLUSTER", value_parser = parse_cluster)]
    pub cluster: Option<String>,
    /// The port the endpoints' agents take mTLS on (their inbound listener).
    #[arg(long, env = "TRELLIS_PEER_INBOUND_PORT", default_value_t = 15006)]
    pub peer_inbound_port: u16,
    /// TCP connect timeout to endpoints.
    #[arg(long, env = "TRELLIS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Endpoints a connection tries, each once, when one does not accept it (refused, or no answer within --connect-timeout) before it is closed.
    #[arg(long, env = "TRELLIS_CONNECT_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub connect_attempts: u32,
    /// A connection with no byte either way for this long is closed; `0s` for never.
    #[arg(long, env = "TRELLIS_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How long a client has to send its whole TLS ClientHello.
    #[arg(long, env = "TRELLIS_HELLO_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub hello_timeout: Duration,
    /// Connections held open at once; past it new ones are closed at once (counted as `overloaded`).
    #[arg(long, env = "TRELLIS_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// On SIGTERM, how long open connections may take to finish after the listener stops accepting.
    #[arg(long, env = "TRELLIS_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Write one JSON access-log line per connection to stdout.
    #[arg(long, env = "TRELLIS_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Worker threads.
    #[arg(long, env = "TRELLIS_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
}

impl Options {
    /// Where other networks reach the gateway; empty when it cannot tell.
    pub fn advertised(&self) -> Vec<SocketAddr> {
        if !self.advertise.is_empty() {
            return self.advertise.clone();
        }
        if self.listen.ip().is_unspecified() {
            return Vec::new();
        }
        vec![self.listen]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_advertised_unless_it_is_a_wildcard() {
        let o = |args: &[&str]| {
            Options::try_parse_from(std::iter::once("trellis-eastwest").chain(args.iter().copied()))
                .unwrap()
        };
        assert!(o(&[]).advertised().is_empty());
        assert_eq!(
            o(&["--listen", "10.0.0.1:15443"]).advertised(),
            vec!["10.0.0.1:15443".parse().unwrap()]
        );
        assert_eq!(
            o(&["--advertise", "192.0.2.1:443,192.0.2.2:443"])
                .advertised()
                .len(),
            2
        );
        assert!(Options::try_parse_from(["x", "--cluster", "Bad Name"]).is_err());
    }
}
