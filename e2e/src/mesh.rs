//! A mesh on network namespaces: a control plane in the root namespace on
//! the bridge address, and hosts that each run a workload ([`trellis-echo`])
//! behind a `trellis-agent` with iptables (or nftables) capture, all started from VM join
//! tokens the way an operator would. Used by the data-plane e2e tests.
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;

use crate::netns::{Host, Net};
use crate::process::Proc;
use crate::{bins, wait_for, Cluster};

/// A control plane, a network, and the processes started on its hosts.
pub struct MeshEnv {
    // Field order is drop order: processes, then namespaces, then the
    // control plane they talk to.
    procs: Vec<(String, Proc)>,
    pub net: Net,
    pub cp: Cluster,
}

impl MeshEnv {
    /// A one-node control plane listening on a new network's bridge address.
    pub async fn new(label: &str) -> anyhow::Result<Self> {
        let net = Net::new(label)?;
        let mut cp = Cluster::new(&[])?;
        cp.host = net.gateway().to_string();
        cp.spawn_init()?;
        cp.wait_ready(1).await?;
        cp.wait_writable(1).await?;
        Ok(Self {
            procs: Vec::new(),
            net,
            cp,
        })
    }

    /// A new host on the network.
    pub fn host(&mut self, name: &str) -> anyhow::Result<Host> {
        self.net.host(name)
    }

    /// Writes `yaml` to a file in the test directory.
    pub fn write(&self, name: &str, yaml: &str) -> anyhow::Result<PathBuf> {
        let p = self.cp.root.path().join(name);
        std::fs::write(&p, yaml)?;
        Ok(p)
    }

    /// Starts `program args` inside `host`, stopped when the env drops.
    pub fn spawn(
        &mut self,
        host: &Host,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let log = self.log_path(host, name);
        let mut cmd = host.command(bins::bin(program));
        cmd.args(args);
        self.procs
            .push((proc_key(host, name), Proc::spawn(name, &mut cmd, &log)?));
        Ok(())
    }

    /// Stops (SIGTERM) the process `name` started in `host` and waits for
    /// its exit.
    pub fn terminate(&mut self, host: &Host, name: &str) -> anyhow::Result<ExitStatus> {
        let key = proc_key(host, name);
        let (_, p) = self
            .procs
            .iter_mut()
            .find(|(k, _)| *k == key)
            .with_context(|| format!("no {key} started"))?;
        p.terminate()
    }

    /// Kills (SIGKILL) the process `name` started in `host`.
    pub fn kill(&mut self, host: &Host, name: &str) {
        let key = proc_key(host, name);
        for (k, p) in &mut self.procs {
            if *k == key {
                p.kill();
            }
        }
    }

    /// The log of a process started with [`MeshEnv::spawn`].
    pub fn log(&self, host: &Host, name: &str) -> String {
        std::fs::read_to_string(self.log_path(host, name)).unwrap_or_default()
    }

    /// Where process `name` of `host` logs.
    fn log_path(&self, host: &Host, name: &str) -> PathBuf {
        self.cp
            .root
            .path()
            .join(format!("{}-{name}.log", host.name))
    }

    /// Starts `trellis-echo` in `host` with `args`.
    pub fn echo(&mut self, host: &Host, args: &[&str]) -> anyhow::Result<()> {
        self.spawn(host, "echo", "trellis-echo", args)
    }

    /// Starts an agent in `host` with a VM token for `identity` (`NS/SA`),
    /// iptables capture (unless `args` pass another `--capture`) and the
    /// resources in the file `config` (or, with `None`, its config from the
    /// control plane), plus `args`; waits until it is ready.
    pub async fn agent(
        &mut self,
        host: &Host,
        identity: &str,
        config: Option<&std::path::Path>,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let token = self.cp.token(&["--kind", "vm", "--identity", identity])?;
        self.agent_with_token(host, &token, config, args).await
    }

    /// [`MeshEnv::agent`] with a token made by the caller (e.g. for a
    /// workload group: the agent then registers its workload entry).
    pub async fn agent_with_token(
        &mut self,
        host: &Host,
        token: &str,
        config: Option<&std::path::Path>,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let data = self
            .cp
            .root
            .path()
            .join(format!("{}-agent-data", host.name));
        let addr = host.addr.to_string();
        let mut all: Vec<&str> = vec!["--token", token];
        if !args.contains(&"--capture") {
            all.extend(["--capture", "iptables"]);
        }
        let config = config.map(|c| c.display().to_string());
        if let Some(c) = &config {
            all.extend(["--config-file", c]);
        }
        let data = data.display().to_string();
        all.extend(["--address", &addr, "--data-dir", &data]);
        all.extend(args);
        self.spawn(host, "agent", "trellis-agent", &all)?;
        let h = host.clone();
        let what = format!("agent in {} ready", host.name);
        let r = wait_for(Duration::from_secs(20), &what, || {
            let h = h.clone();
            async move {
                tokio::task::spawn_blocking(move || h.sh("curl -sf 127.0.0.1:15000/ready").ok())
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await;
        r.with_context(|| self.log(host, "agent")).map(|_| ())
    }
}

/// How [`MeshEnv`] knows process `name` of `host`.
fn proc_key(host: &Host, name: &str) -> String {
    format!("{}/{name}", host.name)
}
