//! What the agent tests run on: [`Loopback`], a one-node control plane
//! and two agents on a loopback block of the test's own, with the mesh of
//! [`MESH`] from a config file; and the helpers the tests drive it with
//! (curl, raw concurrent requests, the server agent's access log).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, wait_for, Cluster, Proc};

/// The mesh, with `SERVER` and `BLACKHOLE` for the addresses of the
/// test's block. `web` (port 9081), `grpc` (9082, its one method routed
/// with a 300 ms timeout), `ws` (9083) and `secure` (9443, TLS: opaque to
/// the mesh) are served by third-party servers the tests start on the
/// server, behind the server's agent.
pub const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: SERVER, labels: {app: echo, version: v1}, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-slow: {exact: "1"}}}]
    timeout: 300ms
    route: [{destination: {host: echo}}]
  - match: [{headers: {x-delay: {exact: "1"}}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: flaky, namespace: default}
spec:
  hosts: [flaky.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: SERVER, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: default}
spec:
  hosts: [flaky]
  http: [{retries: {attempts: 2, retryOn: 5xx}, route: [{destination: {host: flaky}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky, namespace: default}
spec:
  host: flaky
  trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: narrow, namespace: default}
spec:
  hosts: [narrow.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: SERVER, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: narrow, namespace: default}
spec:
  host: narrow
  trafficPolicy: {connectionPool: {http: {maxConcurrentStreams: 100}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9081, name: http}]
  endpoints: [{address: SERVER, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc, namespace: default}
spec:
  hosts: [grpc.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9082, name: grpc}]
  endpoints: [{address: SERVER, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc, namespace: default}
spec:
  hosts: [grpc]
  http:
  - match: [{uri: {exact: /echo.Echo/Call}}]
    timeout: 300ms
    retries: {attempts: 0}
    route: [{destination: {host: grpc}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9443, name: https}]
  endpoints: [{address: SERVER, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ws, namespace: default}
spec:
  hosts: [ws.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9083, name: http}]
  endpoints: [{address: SERVER, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: blackhole, namespace: default}
spec:
  hosts: [blackhole.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: BLACKHOLE, serviceAccount: blackhole}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: blackhole, namespace: default}
spec:
  host: blackhole
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 250ms}}
"#;

/// Host numbers in the test's block.
const CLIENT: u8 = 11;
const SERVER: u8 = 12;
/// Takes TCP connections on the inbound port and never answers.
const BLACKHOLE: u8 = 14;
/// A host outside the mesh, for the tests' own servers.
const OUTSIDE: u8 = 15;
/// The agent ports on each host, and the echo server's on the server.
const AGENT_PORTS: [u16; 5] = [15000, 15001, 15006, 15020, 15053];

/// The port of `web`, where a test's own server listens on the server.
pub const WEB_PORT: u16 = 9081;
/// The client agent's explicit upstream port for `web`.
const WEB_UPSTREAM: u16 = 19081;
/// The port of `grpc`, and the client agent's upstream port for it.
pub const GRPC_PORT: u16 = 9082;
const GRPC_UPSTREAM: u16 = 19082;

/// Loopback block series of this test binary: `127.11.N.0/24`.
const SERIES: u8 = 11;

/// A one-node control plane issuing 16 s certificates (so that renewal
/// shows within a test), an echo server behind the server agent, and the
/// client agent in front of it with an explicit upstream to it
/// (`CLIENT:19080`); both agents read [`MESH`] from one file. Dropping it
/// stops everything.
pub struct Loopback {
    // Field order is drop order: the agents before the control plane.
    pub client: Proc,
    _server: Proc,
    _echo: Proc,
    pub cp: Cluster,
    pub dir: PathBuf,
    /// The config file both agents read.
    pub config: PathBuf,
    /// The client agent's arguments, but its token: to start it again.
    pub client_args: Vec<String>,
    pub block: Block,
}

impl Loopback {
    pub async fn start() -> anyhow::Result<Self> {
        let listeners: Vec<(u8, u16)> = [CLIENT, SERVER, BLACKHOLE]
            .iter()
            .flat_map(|&h| AGENT_PORTS.map(|p| (h, p)))
            .chain([
                (SERVER, 9080),
                (SERVER, WEB_PORT),
                (CLIENT, 19080),
                (CLIENT, WEB_UPSTREAM),
                (SERVER, GRPC_PORT),
                (CLIENT, GRPC_UPSTREAM),
                (SERVER, 9083),
                (SERVER, 9443),
                (OUTSIDE, 8443),
            ])
            .collect();
        let block = Block::take(SERIES, &listeners)?;
        let cp = Cluster::init(&["--cert-ttl-secs", "16"]).await?;
        let dir = cp.root.path().to_path_buf();
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, mesh(block))?;
        let server = block.ip(SERVER).to_string();
        let client = block.ip(CLIENT).to_string();

        let echo = Proc::spawn(
            "echo",
            Command::new(bin("trellis-echo")).args([
                "--http",
                &format!("{server}:9080"),
                "--name",
                "echo",
            ]),
            &dir.join("echo.log"),
        )?;
        let token = cp.token(&["--kind", "vm", "--identity", "default/echo"])?;
        let mut server_cmd = Command::new(bin("trellis-agent"));
        // Its access log shows which connection each request came over.
        server_cmd.args(["--token", &token]).args(agent_args(
            &server,
            &dir.join("server"),
            &config,
        ));
        let server_agent = Proc::spawn(
            "server-agent",
            &mut server_cmd,
            &dir.join("server-agent.log"),
        )?;
        // Single use: a restarted client agent goes on without it.
        let token = cp.token(&[
            "--kind",
            "vm",
            "--identity",
            "default/client",
            "--uses",
            "1",
        ])?;
        let mut client_args = agent_args(&client, &dir.join("client"), &config);
        client_args.extend([
            "--upstream".into(),
            format!("{client}:19080=echo.default.svc.cluster.local:9080"),
            "--upstream".into(),
            format!("{client}:{WEB_UPSTREAM}=web.default.svc.cluster.local:{WEB_PORT}"),
            "--upstream".into(),
            format!("{client}:{GRPC_UPSTREAM}=grpc.default.svc.cluster.local:{GRPC_PORT}"),
        ]);
        let mut client_cmd = Command::new(bin("trellis-agent"));
        client_cmd.args(["--token", &token]).args(&client_args);
        let client_agent = Proc::spawn(
            "client-agent",
            &mut client_cmd,
            &dir.join("client-agent.log"),
        )?;
        let lb = Loopback {
            client: client_agent,
            _server: server_agent,
            _echo: echo,
            cp,
            dir,
            config,
            client_args,
            block,
        };
        ready(&lb.server_admin()).await?;
        ready(&lb.client_admin()).await?;
        Ok(lb)
    }

    pub fn client_ip(&self) -> String {
        self.block.ip(CLIENT).to_string()
    }

    pub fn server_ip(&self) -> String {
        self.block.ip(SERVER).to_string()
    }

    /// Where `web`'s server listens: `SERVER:9081`.
    pub fn web_addr(&self) -> std::net::SocketAddr {
        (self.block.ip(SERVER), WEB_PORT).into()
    }

    pub fn blackhole_ip(&self) -> String {
        self.block.ip(BLACKHOLE).to_string()
    }

    pub fn client_admin(&self) -> String {
        format!("{}:15000", self.client_ip())
    }

    fn server_admin(&self) -> String {
        format!("{}:15000", self.server_ip())
    }

    /// The client agent's explicit upstream to echo: `http://CLIENT:19080/`.
    pub fn upstream(&self) -> String {
        format!("http://{}:19080/", self.client_ip())
    }

    /// The client agent's explicit upstream to web: `http://CLIENT:19081/`.
    pub fn web_upstream(&self) -> String {
        format!("http://{}:{WEB_UPSTREAM}/", self.client_ip())
    }

    /// The client agent's explicit upstream to grpc: `CLIENT:19082`.
    pub fn grpc_upstream(&self) -> String {
        format!("{}:{GRPC_UPSTREAM}", self.client_ip())
    }

    /// `SERVER:PORT`, where a service's server listens.
    pub fn server_addr(&self, port: u16) -> std::net::SocketAddr {
        (self.block.ip(SERVER), port).into()
    }

    /// `OUTSIDE:PORT`: an address outside the mesh.
    pub fn outside_addr(&self, port: u16) -> std::net::SocketAddr {
        (self.block.ip(OUTSIDE), port).into()
    }

    /// Where `grpc`'s server listens: `SERVER:9082`.
    pub fn grpc_addr(&self) -> std::net::SocketAddr {
        (self.block.ip(SERVER), GRPC_PORT).into()
    }

    /// The client agent's metrics, in Prometheus text.
    pub fn client_metrics(&self) -> String {
        curl(&[&format!(
            "http://{}:15020/stats/prometheus",
            self.client_ip()
        )])
    }

    /// The client agent's outbound port, an HTTP proxy.
    pub fn proxy(&self) -> String {
        format!("http://{}:15001", self.client_ip())
    }

    /// The server agent's log: its access log, one JSON line a request.
    pub fn server_log(&self) -> PathBuf {
        self.dir.join("server-agent.log")
    }

    /// Writes `yaml` ([`MESH`] or a change of it) to the agents' config
    /// file, with the block's addresses.
    pub fn write_config(&self, yaml: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(
            &self.config,
            with_addresses(yaml, self.block),
        )?)
    }

    /// Starts the client agent again, without a token: from what its data
    /// directory holds.
    pub async fn restart_client(&mut self) -> anyhow::Result<()> {
        self.restart_client_with(&[]).await
    }

    /// [`Loopback::restart_client`] with `extra` flags.
    pub async fn restart_client_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.restart_client_from(&bin("trellis-agent"), extra).await
    }

    /// [`Loopback::restart_client_with`], the agent binary at `exe`.
    pub async fn restart_client_from(&mut self, exe: &Path, extra: &[&str]) -> anyhow::Result<()> {
        self.restart_client_env(exe, extra, &[]).await
    }

    /// [`Loopback::restart_client_from`] with environment variables `env`.
    pub async fn restart_client_env(
        &mut self,
        exe: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.client.kill();
        let mut cmd = Command::new(exe);
        cmd.envs(env.iter().copied());
        cmd.args(&self.client_args).args(extra);
        self.client = Proc::spawn(
            "client-agent-2",
            &mut cmd,
            &self.dir.join("client-agent-2.log"),
        )?;
        ready(&self.client_admin()).await
    }
}

/// [`MESH`] with the addresses of `block`.
pub fn mesh(block: Block) -> String {
    with_addresses(MESH, block)
}

fn with_addresses(yaml: &str, block: Block) -> String {
    yaml.replace("SERVER", &block.ip(SERVER).to_string())
        .replace("BLACKHOLE", &block.ip(BLACKHOLE).to_string())
}

/// An agent on `ip` with its data in `data` and its config from `config`.
pub fn agent_args(ip: &str, data: &Path, config: &Path) -> Vec<String> {
    [
        "--data-dir",
        &data.display().to_string(),
        "--config-file",
        &config.display().to_string(),
        "--inbound",
        &format!("{ip}:15006"),
        "--outbound",
        &format!("{ip}:15001"),
        "--admin",
        &format!("{ip}:15000"),
        "--metrics",
        &format!("{ip}:15020"),
        "--dns",
        &format!("{ip}:15053"),
        "--app-host",
        ip,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The value of the series of `metric` in `metrics` whose labels include
/// all of `labels` (`name="value"` each), summed.
pub fn series(metrics: &str, metric: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `curl -s ARGS`: what it printed.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status code of `curl ARGS` (0: no response).
pub fn status(args: &[&str]) -> u16 {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend(args);
    curl(&a).trim().parse().unwrap_or(0)
}

/// Waits until the agent with admin address `admin` is ready.
pub async fn ready(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/ready");
    wait_for(Duration::from_secs(20), &url, || async {
        (status(&[&url]) == 200).then_some(())
    })
    .await
}

/// `n` requests at once through the client agent's proxy port (`proxy`,
/// `IP:15001`), each to `url/I` and held `delay_ms` by the echo server;
/// whether each got a 200.
pub fn concurrent(
    proxy: &str,
    url: &str,
    delay_ms: u32,
    n: u64,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<bool>>> {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    (0..n)
        .map(|i| {
            let req = format!(
                "GET {url}/{i} HTTP/1.1\r\nHost: {host}\r\n\
                 x-echo-delay-ms: {delay_ms}\r\nConnection: close\r\n\r\n"
            );
            let proxy = proxy.to_string();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(proxy).await?;
                s.write_all(req.as_bytes()).await?;
                let mut resp = Vec::new();
                s.read_to_end(&mut resp).await?;
                anyhow::Ok(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"))
            })
        })
        .collect()
}

/// Of the requests in an agent's inbound access log (`log`) whose path
/// starts with `prefix`, how many came over each connection that carried
/// any.
pub fn logged_by_connection(log: &Path, prefix: &str) -> Vec<usize> {
    inbound_requests_by_connection(log)
        .values()
        .map(|paths| paths.iter().filter(|p| p.starts_with(prefix)).count())
        .filter(|&n| n > 0)
        .collect()
}

/// The requests in an agent's inbound access log (`log`), by the
/// connection they came over (its downstream address): their paths.
pub fn inbound_requests_by_connection(log: &Path) -> BTreeMap<String, Vec<String>> {
    let mut by_conn: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reporter"] != "destination" || v["protocol"] == "tcp" {
            continue;
        }
        let conn = v["downstream_remote_address"].as_str().unwrap_or_default();
        let path = v["path"].as_str().unwrap_or_default();
        by_conn
            .entry(conn.to_string())
            .or_default()
            .push(path.to_string());
    }
    by_conn
}

/// The SHA-256 of the certificate the agent with admin address `admin`
/// serves with.
pub fn cert_sha(admin: &str) -> String {
    let certs: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("http://{admin}/certs")])).unwrap_or_default();
    certs["cert_chain"][0]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
