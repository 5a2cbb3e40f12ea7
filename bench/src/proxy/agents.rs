//! The Trellis pair of `trellis-bench proxy`: a client-side agent on
//! 127.0.0.2 whose `--upstream` listeners stand for the echo service's two
//! ports, and a server-side agent on 127.0.0.3 in front of the echo server,
//! both with VM tokens from the control plane and one mesh file (a
//! ServiceEntry with one endpoint at the server agent's address).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use trellis_e2e::Cluster;

use super::{EchoPorts, Pair, Sides};
use crate::agent::{self, data_dir};
use crate::net::{check_free, wait_http_ok};

const CLIENT_IP: &str = "127.0.0.2";
const SERVER_IP: &str = "127.0.0.3";
/// Where the client agent listens for the application's HTTP and gRPC.
const HTTP_LISTEN: &str = "127.0.0.2:18080";
const GRPC_LISTEN: &str = "127.0.0.2:18090";
/// The service the upstream listeners stand for.
const SERVICE: &str = "echo.default.svc.cluster.local";

/// Its key, certificate chain and trust bundle, as the agent keeps them in
/// its data directory once it has its certificate (PEM).
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub key: PathBuf,
    pub chain: PathBuf,
    pub roots: PathBuf,
}

impl CertFiles {
    fn in_dir(dir: &Path) -> Self {
        Self {
            key: dir.join("key.pem"),
            chain: dir.join("cert-chain.pem"),
            roots: dir.join("root-cert.pem"),
        }
    }
}

/// The two running agents.
pub struct AgentPair {
    pub sides: Sides,
    pub client_certs: CertFiles,
    pub server_certs: CertFiles,
}

/// The mesh file both agents read.
fn mesh_yaml(echo: EchoPorts) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo, namespace: default}}
spec:
  hosts: [{SERVICE}]
  resolution: STATIC
  ports: [{{number: {http}, name: http}}, {{number: {grpc}, name: grpc}}]
  endpoints: [{{address: {SERVER_IP}, serviceAccount: server}}]
"#,
        http = echo.http,
        grpc = echo.grpc
    )
}

impl AgentPair {
    /// Starts both agents with tokens from `cp` (identities
    /// `default/client` and `default/server`), their data and logs in
    /// `dir`, and waits until both are ready. `log` is their `TRELLIS_LOG`.
    pub async fn start(
        cp: &Cluster,
        dir: &Path,
        echo: EchoPorts,
        log: &str,
    ) -> anyhow::Result<Self> {
        let mut ours = vec![HTTP_LISTEN.parse()?, GRPC_LISTEN.parse()?];
        for ip in [CLIENT_IP, SERVER_IP] {
            for port in [15000, 15001, 15006, 15020] {
                ours.push(format!("{ip}:{port}").parse()?);
            }
        }
        check_free(&ours)?;
        let config = dir.join("mesh.yaml");
        std::fs::write(&config, mesh_yaml(echo))?;
        let no_dns = ["--dns", "off"].map(String::from);
        let server = agent::spawn(cp, dir, Some(&config), log, "server", SERVER_IP, &no_dns)?;
        let mut client_args = no_dns.to_vec();
        for (listen, port) in [(HTTP_LISTEN, echo.http), (GRPC_LISTEN, echo.grpc)] {
            client_args.extend(["--upstream".into(), format!("{listen}={SERVICE}:{port}")]);
        }
        let client = agent::spawn(
            cp,
            dir,
            Some(&config),
            log,
            "client",
            CLIENT_IP,
            &client_args,
        )?;
        let mut pair = Self {
            sides: Sides::new("agent", client, server),
            client_certs: CertFiles::in_dir(&data_dir(dir, "client")),
            server_certs: CertFiles::in_dir(&data_dir(dir, "server")),
        };
        let sides = &mut pair.sides;
        for (ip, p) in [
            (SERVER_IP, &mut sides.server),
            (CLIENT_IP, &mut sides.client),
        ] {
            let admin: SocketAddr = format!("{ip}:15000").parse()?;
            wait_http_ok(admin, "/ready", p).await?;
        }
        Ok(pair)
    }
}

impl Pair for AgentPair {
    fn http_addr(&self) -> SocketAddr {
        HTTP_LISTEN.parse().expect("a socket address")
    }

    fn grpc_addr(&self) -> SocketAddr {
        GRPC_LISTEN.parse().expect("a socket address")
    }

    fn sides(&self) -> &Sides {
        &self.sides
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_file_names_both_ports_and_the_server_endpoint() {
        let y = mesh_yaml(EchoPorts {
            http: 30080,
            grpc: 30090,
        });
        let v: serde_json::Value = trellis_api::yaml::from_str(&y).unwrap();
        let spec = &v["spec"];
        assert_eq!(spec["hosts"][0].as_str(), Some(SERVICE));
        assert_eq!(spec["ports"][0]["number"].as_u64(), Some(30080));
        assert_eq!(spec["ports"][1]["name"].as_str(), Some("grpc"));
        assert_eq!(spec["endpoints"][0]["address"].as_str(), Some(SERVER_IP));
        assert_eq!(
            spec["endpoints"][0]["serviceAccount"].as_str(),
            Some("server")
        );
    }
}
