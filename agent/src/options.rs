//! The agent's settings: flags, each with a `TRELLIS_` environment
//! variable, one default and one line of doc.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use trellis_api::topology::{self, Locality};
use trellis_dataplane::discovery::Given;
use trellis_dataplane::identity::Source;
use trellis_dataplane::mesh::Settings;
use trellis_dataplane::telemetry::labels::{namespace_of, Workload};
use trellis_identity::SpiffeId;
use trellis_transport::connect::ConnectOpts;

use crate::dns;

/// Flags that cannot work together, or an identity the agent cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("no identity: pass --token (a VM join token), --kube-token-file (a pod's service-account token), or --cert-chain, --key and --roots")]
    NoIdentity,
    #[error("{flag} {addr}: with --capture {mode} {what} must listen on 127.0.0.1 or 0.0.0.0, where captured connections arrive (the agent listens on [::1] for IPv6 itself)")]
    CaptureListener {
        flag: &'static str,
        addr: SocketAddr,
        mode: &'static str,
        what: &'static str,
    },
    #[error("--inbound {addr}: with --capture {mode} give an IPv4 address (the agent listens on [::] for IPv6 itself)")]
    CaptureInbound {
        addr: SocketAddr,
        mode: &'static str,
    },
    #[error("--concurrency must be at least 1")]
    Concurrency,
    #[error(
        "the agent's certificate names `{0}`, not a workload identity spiffe://TD/ns/NS/sa/SA"
    )]
    NotAWorkload(SpiffeId),
}

/// How traffic reaches the outbound listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureMode {
    /// No capture: HTTP proxy mode and `--upstream` listeners only.
    None,
    /// iptables and ip6tables REDIRECT of the host's TCP (needs root).
    Iptables,
    /// The same rules in an nftables table of their own, `inet trellis` (needs root).
    Nftables,
}

impl CaptureMode {
    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            CaptureMode::None => "none",
            CaptureMode::Iptables => "iptables",
            CaptureMode::Nftables => "nftables",
        }
    }

    /// The netfilter front end that installs the rules, if any.
    pub fn backend(self) -> Option<crate::capture::Backend> {
        match self {
            CaptureMode::None => None,
            CaptureMode::Iptables => Some(crate::capture::Backend::Iptables),
            CaptureMode::Nftables => Some(crate::capture::Backend::Nftables),
        }
    }
}

/// An explicit upstream listener: a local port standing for one service port.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub listen: SocketAddr,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!("`{s}`: expected LISTEN_ADDR=HOST:PORT, e.g. 127.0.0.1:9080=reviews.default.svc.cluster.local:9080")
        };
        let (listen, target) = s.split_once('=').ok_or_else(usage)?;
        let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
        Ok(Upstream {
            listen: listen.parse().map_err(|_| usage())?,
            host: host.to_string(),
            port: port.parse().map_err(|_| usage())?,
        })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<trellis_api::config::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

/// A listen address, or `off`.
fn parse_listen_or_off(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("`{s}`: expected IP:PORT or `off`"))
}

/// IP:PORT, or an IP for port 53.
fn parse_dns_upstream(s: &str) -> Result<SocketAddr, String> {
    s.parse().or_else(|_| {
        s.parse::<IpAddr>()
            .map(|ip| SocketAddr::new(ip, dns::forward::DNS_PORT))
            .map_err(|_| format!("`{s}`: expected IP or IP:PORT"))
    })
}

fn parse_domain(s: &str) -> Result<String, String> {
    topology::validate_domain(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_cluster(s: &str) -> Result<String, String> {
    topology::validate_name("cluster", s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_network(s: &str) -> Result<String, String> {
    topology::validate_name("network", s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_locality(s: &str) -> Result<Locality, String> {
    Locality::parse(s).map_err(|e| e.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))
}

/// `trellis-agent`: the mTLS proxy beside a workload.
#[derive(Parser, Clone, Debug)]
#[command(name = "trellis-agent", version)]
pub struct Options {
    /// VM join token (from `trellis token create --kind vm --identity NS/SA`): get a certificate from the control plane.
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A Kubernetes pod's projected service-account token with audience `trellis-ca` (a file, read anew on each try: the kubelet rotates it): get a certificate for its service account from --control-plane, trusted through --roots.
    #[arg(long, env = "TRELLIS_KUBE_TOKEN_FILE", conflicts_with_all = ["token", "cert_chain"], requires_all = ["roots", "control_plane"])]
    pub kube_token_file: Option<PathBuf>,
    /// Where key, certificate chain and trust bundle are kept (token modes).
    #[arg(
        long,
        env = "TRELLIS_DATA_DIR",
        default_value = "/var/lib/trellis-agent"
    )]
    pub data_dir: PathBuf,
    /// Certificate chain (PEM, leaf first) instead of a token.
    #[arg(long, env = "TRELLIS_CERT_CHAIN", requires_all = ["key", "roots"], conflicts_with = "token")]
    pub cert_chain: Option<PathBuf>,
    /// Private key (PEM) of --cert-chain.
    #[arg(long, env = "TRELLIS_KEY")]
    pub key: Option<PathBuf>,
    /// Trust bundle (PEM roots) of the mesh, with --cert-chain or --kube-token-file.
    #[arg(long, env = "TRELLIS_ROOTS")]
    pub roots: Option<PathBuf>,
    /// Istio resources (multi-document YAML: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, PeerAuthentication), reloaded when it changes, instead of config pushed by the control plane.
    #[arg(long, env = "TRELLIS_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Control-plane address to stream config from (repeatable; default: the addresses the join token gave; with --kube-token-file, the pod's cluster's nodes, which also issue its certificate).
    #[arg(
        long = "control-plane",
        env = "TRELLIS_CONTROL_PLANE",
        value_delimiter = ','
    )]
    pub control_plane: Vec<String>,
    /// This agent's name in its namespace, as `trellis proxy-status` shows it (default: WORKLOAD-ADDRESS).
    #[arg(long, env = "TRELLIS_NAME")]
    pub name: Option<String>,
    /// The WorkloadGroup (in this workload's namespace) to register in (default: the one the join token named).
    #[arg(long, env = "TRELLIS_WORKLOAD_GROUP")]
    pub workload_group: Option<String>,
    /// This workload's name in metrics (default: its `app` label, else its service account).
    #[arg(long, env = "TRELLIS_WORKLOAD")]
    pub workload: Option<String>,
    /// This workload's labels, KEY=VALUE (repeatable): `app`, `version`, selectors.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// This workload's addresses: endpoints in the config at one of them are this workload (repeatable; default: the inbound listener's address).
    #[arg(long = "address")]
    pub addresses: Vec<IpAddr>,
    /// Inbound listener (mTLS from other agents).
    #[arg(long, env = "TRELLIS_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// Outbound listener (captured connections and HTTP proxy mode).
    #[arg(long, env = "TRELLIS_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Explicit upstream listener LISTEN_ADDR=HOST:PORT (repeatable).
    #[arg(long = "upstream")]
    pub upstreams: Vec<Upstream>,
    /// Admin endpoints (/config_dump, /clusters, /certs, /stats, /ready, /logging).
    #[arg(long, env = "TRELLIS_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Metrics and health (/stats/prometheus, /healthz/ready).
    #[arg(long, env = "TRELLIS_METRICS", default_value = "0.0.0.0:15020")]
    pub metrics: SocketAddr,
    /// DNS proxy, UDP and TCP: mesh names answered, the rest forwarded; `off` turns it off.
    // Spelled out so that clap does not make it an optional flag: `off`
    // is the value that means none.
    #[arg(long, env = "TRELLIS_DNS", default_value = "127.0.0.1:15053", value_parser = parse_listen_or_off)]
    pub dns: ::std::option::Option<SocketAddr>,
    /// Resolver for names the mesh does not answer, IP or IP:PORT (repeatable; default: the `nameserver`s of /etc/resolv.conf).
    #[arg(long = "dns-upstream", env = "TRELLIS_DNS_UPSTREAM", value_delimiter = ',', value_parser = parse_dns_upstream)]
    pub dns_upstreams: Vec<SocketAddr>,
    /// How long one DNS upstream has to answer before the next is tried.
    #[arg(long, env = "TRELLIS_DNS_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub dns_timeout: Duration,
    /// The port other agents' inbound listeners are on.
    #[arg(long, env = "TRELLIS_PEER_INBOUND_PORT", default_value_t = 15006)]
    pub peer_inbound_port: u16,
    /// Where the application listens (inbound traffic goes to APP_HOST:PORT).
    #[arg(long, env = "TRELLIS_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: IpAddr,
    /// How the application's traffic reaches the agent.
    #[arg(long, env = "TRELLIS_CAPTURE", value_enum, default_value_t = CaptureMode::None)]
    pub capture: CaptureMode,
    /// Remove the capture rules of both front ends (iptables and ip6tables chains, nftables tables), whatever flags installed them, and exit: for after an agent that did not stop cleanly (systemd's `ExecStopPost=`).
    // No environment variable: set in an EnvironmentFile, it would turn
    // the agent into this. Not `exclusive`: clap counts the unit's
    // TRELLIS_* variables as flags given.
    #[arg(long)]
    pub remove_capture: bool,
    /// Install the capture rules --capture names (for the listeners the other flags give) and exit, leaving them in place: the init container of an injected pod, so that capture is there before the application starts.
    // No environment variable, as for --remove-capture.
    #[arg(long, conflicts_with = "remove_capture")]
    pub install_capture: bool,
    /// Ask the agent of process PID for a hot restart (it starts the agent binary anew, hands it its sockets and drains), wait until its successor serves, print its PID and exit; nonzero if it failed (the agent then serves on): for systemd's `ExecReload=`.
    // No environment variable, as for --remove-capture.
    #[arg(long, value_name = "PID", conflicts_with = "remove_capture")]
    pub hot_restart: Option<u32>,
    /// Inbound ports capture leaves alone, besides the agent's own (comma-separated).
    #[arg(
        long,
        env = "TRELLIS_CAPTURE_EXCLUDE_PORTS",
        value_delimiter = ',',
        default_value = "22"
    )]
    pub capture_exclude: Vec<u16>,
    /// DNS domain of service names (NAME.NS.svc.DOMAIN), for short names (default: the mesh's, pushed by the control plane, else cluster.local).
    #[arg(long, env = "TRELLIS_DOMAIN", value_parser = parse_domain)]
    pub domain: Option<String>,
    /// The cluster this workload is in (topology.istio.io/cluster; default: the one of the control-plane node it streams from).
    #[arg(long, env = "TRELLIS_CLUSTER", value_parser = parse_cluster)]
    pub cluster: Option<String>,
    /// The network this workload is on (topology.istio.io/network; default: the one of the control-plane node it streams from).
    #[arg(long, env = "TRELLIS_NETWORK", value_parser = parse_network)]
    pub network: Option<String>,
    /// This workload's locality, REGION[/ZONE[/SUBZONE]] (default: none).
    #[arg(long, env = "TRELLIS_LOCALITY", value_parser = parse_locality)]
    pub locality: Option<Locality>,
    /// TCP connect and TLS handshake timeout to upstreams.
    #[arg(long, env = "TRELLIS_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Write one JSON access-log line per request or connection to stdout.
    #[arg(long, env = "TRELLIS_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Proxy worker threads.
    #[arg(long, env = "TRELLIS_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// Largest request head a client may send, in KiB (request line or pseudo-headers, and headers; Envoy's `max_request_headers_kb`): larger ones get 431.
    #[arg(long, env = "TRELLIS_MAX_REQUEST_HEADERS_KB", default_value_t = crate::proxy::DEFAULT_MAX_HEADERS_KB, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub max_request_headers_kb: u32,
    /// Largest response head taken from an upstream, in KiB (status line and headers): a larger one is answered 502 (`UPE`).
    #[arg(long, env = "TRELLIS_MAX_RESPONSE_HEADERS_KB", default_value_t = crate::proxy::DEFAULT_MAX_HEADERS_KB, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub max_response_headers_kb: u32,
    /// How long a client has to send a whole request head from its first byte (HTTP/1.1; a new connection's first head, or HTTP/2 preface, from its accept) before the connection is closed; `0s` for no limit.
    #[arg(long, env = "TRELLIS_REQUEST_HEADERS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_headers_timeout: Duration,
    /// How long a client's HTTP connection may stay open with no request on it (HTTP/2: no stream) before it is closed (HTTP/2: GOAWAY); Envoy's `idle_timeout`; `0s` for no limit.
    #[arg(long, env = "TRELLIS_DOWNSTREAM_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub downstream_idle_timeout: Duration,
    /// Connections the inbound, outbound and upstream listeners hold open at once, together; past it new ones are closed as they are accepted.
    #[arg(long, env = "TRELLIS_MAX_DOWNSTREAM_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_downstream_connections: u32,
    /// On SIGTERM, how long in-flight requests and connections may take to finish after the listeners stop accepting.
    #[arg(long, env = "TRELLIS_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl Options {
    /// Where the certificate comes from.
    pub fn identity_source(&self) -> Source {
        if let (Some(token_file), Some(roots)) = (&self.kube_token_file, &self.roots) {
            return Source::Kubernetes {
                token_file: token_file.clone(),
                roots: roots.clone(),
                control_plane: self.control_plane.clone(),
                data_dir: self.data_dir.clone(),
            };
        }
        match (&self.cert_chain, &self.key, &self.roots) {
            (Some(chain), Some(key), Some(roots)) => Source::Files {
                chain: chain.clone(),
                key: key.clone(),
                roots: roots.clone(),
            },
            _ => Source::Token {
                token: self.token.clone(),
                data_dir: self.data_dir.clone(),
            },
        }
    }

    /// What the mesh view depends on, once the identity is known.
    pub fn mesh_settings(&self, id: &SpiffeId) -> Result<Settings, OptionsError> {
        let Some(namespace) = namespace_of(id) else {
            return Err(OptionsError::NotAWorkload(id.clone()));
        };
        let mut addresses = self.addresses.clone();
        if addresses.is_empty() && !self.inbound.ip().is_unspecified() {
            addresses.push(self.inbound.ip());
        }
        Ok(Settings {
            trust_domain: id.trust_domain().to_string(),
            domain: self
                .domain
                .clone()
                .unwrap_or_else(|| topology::DEFAULT_DOMAIN.to_string()),
            namespace: namespace.to_string(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            addresses,
            peer_inbound_port: self.peer_inbound_port,
            cluster: self.cluster.clone().unwrap_or_default(),
            network: self.network.clone().unwrap_or_default(),
            locality: self.locality.clone().unwrap_or_default(),
            principal: id.to_string(),
            workload_name: self.workload.clone(),
            workload_group: None,
        })
    }

    /// What the flags said of the domain, cluster and network: the rest
    /// comes from the control plane.
    pub fn given(&self) -> Given {
        Given {
            domain: self.domain.clone(),
            cluster: self.cluster.clone(),
            network: self.network.clone(),
        }
    }

    /// This workload as metric labels name it, from its flags (before its
    /// WorkloadGroup's labels are known: the mesh view has those).
    pub fn workload(&self, s: &Settings) -> Workload {
        Workload::new(
            &s.principal,
            &s.namespace,
            s.workload_name.as_deref(),
            &s.labels,
        )
    }

    /// Who this agent is, for the control plane: name, namespace, labels,
    /// addresses and the WorkloadGroup it registers in.
    pub fn proxy_node(
        &self,
        s: &Settings,
        me: &Workload,
        group: Option<&str>,
    ) -> trellis_api::v1::ProxyNode {
        let name = self.name.clone().unwrap_or_else(|| {
            let base = group.unwrap_or(&me.workload);
            match s.addresses.first() {
                Some(a) => format!("{base}-{}", a.to_string().replace(['.', ':'], "-")),
                None => base.to_string(),
            }
        });
        trellis_api::v1::ProxyNode {
            name,
            namespace: s.namespace.clone(),
            labels: s.labels.clone().into_iter().collect(),
            addresses: s.addresses.iter().map(ToString::to_string).collect(),
            workload_group: group.unwrap_or_default().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            cluster: s.cluster.clone(),
            network: s.network.clone(),
            locality: s.locality.to_string(),
            ..Default::default()
        }
    }

    /// Inbound ports capture leaves alone: the agent's own and the configured ones.
    pub fn capture_exclude_ports(&self) -> Vec<u16> {
        let mut v = vec![
            self.inbound.port(),
            self.outbound.port(),
            self.admin.port(),
            self.metrics.port(),
        ];
        v.extend(self.dns.map(|a| a.port()));
        v.extend(&self.capture_exclude);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Where the names the mesh does not answer go: `--dns-upstream`, else
    /// the `nameserver`s of /etc/resolv.conf; never the agent's own DNS
    /// listener. `mark` is the capture mark of the agent's sockets.
    pub fn dns_forwarder(&self, mark: Option<u32>) -> dns::Forwarder {
        let mut upstreams = self.dns_upstreams.clone();
        if upstreams.is_empty() {
            match std::fs::read_to_string(RESOLV_CONF) {
                Ok(text) => upstreams = dns::nameservers(&text),
                Err(e) => tracing::warn!(error = %e, "cannot read {RESOLV_CONF}"),
            }
        }
        upstreams.retain(|u| Some(*u) != self.dns);
        if upstreams.is_empty() {
            tracing::warn!(
                "no DNS upstream (see --dns-upstream): names outside the mesh get SERVFAIL"
            );
        }
        dns::Forwarder::new(
            upstreams,
            ConnectOpts {
                timeout: self.dns_timeout,
                mark,
                keepalive: None,
            },
        )
    }
}

/// Where the host's resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Checks flags that clap cannot: a source of identity must be given.
pub fn check(o: &Options) -> Result<(), OptionsError> {
    if o.token.is_none()
        && o.kube_token_file.is_none()
        && o.cert_chain.is_none()
        && !o.data_dir.join("cert-chain.pem").exists()
    {
        return Err(OptionsError::NoIdentity);
    }
    if o.capture.backend().is_some() {
        let mode = o.capture.name();
        // REDIRECT sends locally made IPv4 packets to 127.0.0.1; the agent
        // makes the IPv6 twins (on ::1, and :: inbound) itself.
        let local = [Ipv4Addr::LOCALHOST, Ipv4Addr::UNSPECIFIED].map(IpAddr::from);
        for (flag, what, addr) in [
            ("--outbound", "the outbound listener", Some(o.outbound)),
            ("--dns", "the DNS proxy", o.dns),
        ] {
            if let Some(addr) = addr.filter(|a| !local.contains(&a.ip())) {
                return Err(OptionsError::CaptureListener {
                    flag,
                    addr,
                    mode,
                    what,
                });
            }
        }
        if !o.inbound.is_ipv4() {
            return Err(OptionsError::CaptureInbound {
                addr: o.inbound,
                mode,
            });
        }
    }
    if o.concurrency == 0 {
        return Err(OptionsError::Concurrency);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Options {
        let argv = ["trellis-agent", "--token", "t"].iter().chain(args);
        Options::try_parse_from(argv).unwrap()
    }

    #[test]
    fn dns_listens_on_15053_unless_turned_off() {
        assert_eq!(parse(&[]).dns, Some("127.0.0.1:15053".parse().unwrap()));
        assert_eq!(parse(&["--dns", "off"]).dns, None);
        assert_eq!(
            parse(&["--dns", "0.0.0.0:53"]).dns,
            Some("0.0.0.0:53".parse().unwrap())
        );
        assert!(Options::try_parse_from(["trellis-agent", "--dns", "nope"]).is_err());
    }

    #[test]
    fn dns_upstreams_default_to_port_53_and_skip_the_agent_itself() {
        let o = parse(&[
            "--dns-upstream",
            "10.0.0.2",
            "--dns-upstream",
            "[fd00::1]:5353,127.0.0.1:15053",
        ]);
        assert_eq!(
            o.dns_upstreams,
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fd00::1]:5353".parse().unwrap(),
                "127.0.0.1:15053".parse().unwrap(),
            ]
        );
        let f = o.dns_forwarder(None);
        assert_eq!(f.upstreams(), &o.dns_upstreams[..2]);
    }

    #[test]
    fn a_pods_token_file_needs_the_roots_and_the_control_plane_and_no_other_identity() {
        let pod = [
            "trellis-agent",
            "--kube-token-file",
            "/var/run/secrets/tokens/trellis-ca",
            "--roots",
            "/etc/trellis/root-cert.pem",
            "--control-plane",
            "trellis.trellis-system.svc:15012",
        ];
        let o = Options::try_parse_from(pod).unwrap();
        check(&o).unwrap();
        let Source::Kubernetes {
            token_file,
            roots,
            control_plane,
            ..
        } = o.identity_source()
        else {
            panic!("not the pod's token: {:?}", o.identity_source());
        };
        assert_eq!(
            (token_file.to_str(), roots.to_str(), &control_plane[..]),
            (
                Some("/var/run/secrets/tokens/trellis-ca"),
                Some("/etc/trellis/root-cert.pem"),
                &["trellis.trellis-system.svc:15012".to_string()][..]
            )
        );
        for (without, words) in [(3, "--roots"), (5, "--control-plane")] {
            let argv = [&pod[..without], &pod[without + 2..]].concat();
            let e = Options::try_parse_from(argv).unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
        }
        let with_token = [&pod[..], &["--token", "t"]].concat();
        let e = Options::try_parse_from(with_token).unwrap_err().to_string();
        assert!(e.contains("cannot be used with"), "{e}");
    }

    #[test]
    fn capture_modes_are_named_as_their_flag_values() {
        for mode in CaptureMode::value_variants() {
            let flag = mode.to_possible_value().unwrap();
            assert_eq!(mode.name(), flag.get_name());
        }
    }

    #[test]
    fn captured_traffic_must_arrive_where_the_agent_listens() {
        let refused = |args: &[&str]| check(&parse(args)).unwrap_err().to_string();
        let e = refused(&["--capture", "iptables", "--dns", "10.1.2.3:15053"]);
        assert!(e.contains("127.0.0.1 or 0.0.0.0"), "{e}");
        let e = refused(&["--capture", "nftables", "--dns", "10.1.2.3:15053"]);
        assert!(e.contains("with --capture nftables the DNS proxy"), "{e}");
        let e = refused(&["--capture", "iptables", "--outbound", "[::1]:15001"]);
        assert!(e.starts_with("--outbound [::1]:15001: "), "{e}");
        let e = refused(&["--capture", "nftables", "--inbound", "[::]:15006"]);
        assert!(e.starts_with("--inbound [::]:15006: "), "{e}");
        check(&parse(&[
            "--inbound",
            "[::]:15006",
            "--outbound",
            "[::1]:15001",
        ]))
        .unwrap();
        check(&parse(&["--capture", "iptables"])).unwrap();
        check(&parse(&["--capture", "nftables"])).unwrap();
        check(&parse(&["--capture", "iptables", "--dns", "off"])).unwrap();
        check(&parse(&["--dns", "10.1.2.3:15053"])).unwrap();
    }

    #[test]
    fn where_the_workload_is_goes_to_the_control_plane_and_the_view() {
        let id = SpiffeId::workload("example.org", "default", "web");
        let o = parse(&[
            "--cluster",
            "west",
            "--network",
            "net-west",
            "--locality",
            "eu/eu-2",
        ]);
        let s = o.mesh_settings(&id).unwrap();
        assert_eq!(
            (s.cluster.as_str(), s.network.as_str()),
            ("west", "net-west")
        );
        assert_eq!(s.locality.zone, "eu-2");
        assert_eq!(
            s.domain, "cluster.local",
            "no --domain: the default until pushed"
        );
        let node = o.proxy_node(&s, &o.workload(&s), None);
        assert_eq!(
            (
                node.cluster.as_str(),
                node.network.as_str(),
                node.locality.as_str()
            ),
            ("west", "net-west", "eu/eu-2")
        );
        assert_eq!(o.given().domain, None);
        assert_eq!(o.given().cluster.as_deref(), Some("west"));
        // Not given: empty, for the control plane to fill in.
        let none = parse(&[]);
        let s = none.mesh_settings(&id).unwrap();
        let node = none.proxy_node(&s, &none.workload(&s), None);
        assert_eq!((node.cluster.as_str(), node.network.as_str()), ("", ""));
        assert_eq!(none.given(), Given::default());
        for (flag, value, words) in [
            ("--cluster", "a b", "cluster `a b`"),
            ("--network", "x-", "network `x-`"),
            ("--locality", "a/b/c/d", "more than three parts"),
            ("--domain", "Cluster.Local", "domain `Cluster.Local`"),
        ] {
            let argv = ["trellis-agent", "--token", "t", flag, value];
            let e = Options::try_parse_from(argv).unwrap_err().to_string();
            assert!(e.contains(words), "{flag} {value}: {e}");
        }
    }
}
