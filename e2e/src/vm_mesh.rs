//! A booted Debian 12 ([`Vm`]) in a mesh: the VM is a workload of the
//! WorkloadGroup `reviews` (its server, `trellis-echo` copied into the
//! root, runs as a unit of its own), and `ratings` is a workload in a
//! network namespace on the same bridge, with its own agent with capture;
//! PeerAuthentication STRICT mesh-wide, so plaintext fails. The agent in
//! the VM is the installed `trellis-agent` package, set up by
//! [`VmMesh::join`]. Used by `tests/vm_mesh.rs` and `trellis-bench vm`.
//!
//! The resolv.conf of the VM and of `ratings` names a server no host has:
//! every mesh name they resolve is answered by their agent's DNS, which
//! capture redirects DNS to.
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;

use crate::mesh::MeshEnv;
use crate::netns::Host;
use crate::vm::Vm;

/// reviews (the VM's group) and ratings (the host side's), and mTLS
/// required between workloads.
pub const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: ratings}
spec:
  metadata: {labels: {app: ratings}}
  template: {serviceAccount: ratings}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#;

/// The two services' URLs, as their clients call them.
pub const REVIEWS_URL: &str = "http://reviews.default.svc.cluster.local:9080/";
pub const RATINGS_URL: &str = "http://ratings.default.svc.cluster.local:9080/";

/// Where the server of the VM is installed, and its unit.
const SERVER: &str = "/usr/local/bin/trellis-echo";
const SERVER_UNIT: &str = "/etc/systemd/system/reviews.service";

/// The control plane, `ratings` with its agent, and the booted VM. The
/// VM goes first (field order is drop order), the namespaces and the
/// control plane with `env`.
pub struct VmMesh {
    pub vm: Vm,
    /// The VM's network namespace.
    pub vm_host: Host,
    pub ratings: Host,
    pub env: MeshEnv,
}

impl VmMesh {
    /// A control plane with [`MESH`] and [`crate::REVIEWS`], `ratings`
    /// serving behind its agent, and a booted VM (named `name`: unique)
    /// with its server running, the agent not installed yet. `label`
    /// names the namespaces.
    pub async fn start(label: &str, name: &str) -> anyhow::Result<VmMesh> {
        let mut env = MeshEnv::new(label).await?;
        let mesh = env.write("mesh.yaml", &format!("{}---{MESH}", crate::REVIEWS))?;
        env.cp.cli(&["apply", "-f", &mesh.display().to_string()])?;
        let vm_host = env.host("vm")?;
        let ratings = env.host("ratings")?;
        let nowhere = nowhere(&env);
        let resolv = format!("nameserver {nowhere}\noptions timeout:2 attempts:1\n");
        ratings.set_resolv_conf(&resolv)?;
        env.echo(&ratings, &["--http", "127.0.0.1:9080", "--name", "ratings"])?;
        env.agent(
            &ratings,
            "default/ratings",
            None,
            &["--workload-group", "ratings"],
        )
        .await?;
        let log = env.cp.root.path().join("vm-console.log");
        let vm = Vm::boot(name, &vm_host.netns, &log)?;
        std::fs::write(vm.path("/etc/resolv.conf"), resolv)?;
        // The same Debian 12 as the host: the harness's binary runs there.
        std::fs::copy(crate::bin("trellis-echo"), vm.path(SERVER))?;
        // On every address: without capture, or with it and mTLS not
        // required, plaintext from outside would reach it.
        std::fs::write(
            vm.path(SERVER_UNIT),
            format!(
                "[Unit]\nDescription=reviews (trellis-echo)\n\
                 [Service]\nExecStart={SERVER} --http 0.0.0.0:9080 --name reviews\n\
                 DynamicUser=yes\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
        )?;
        vm.sh("systemctl daemon-reload && systemctl enable --now reviews")?;
        Ok(VmMesh {
            vm,
            vm_host,
            ratings,
            env,
        })
    }

    /// `dpkg -i` of the agent's package from `debs`.
    pub fn install_agent(&self, debs: &Path) -> anyhow::Result<String> {
        self.vm
            .install(&crate::vm::deb(debs, "trellis-agent")?)
            .context("installing trellis-agent")
    }

    /// A join token for a workload of group reviews, as an operator
    /// makes it on the control plane.
    pub fn token(&self) -> anyhow::Result<String> {
        self.env
            .cp
            .token(&["--kind", "vm", "--workload-group", "default/reviews"])
    }

    /// Joins the VM to the mesh with `token` ([`VmMesh::token`]), with
    /// iptables capture: `trellis vm join --token T --capture iptables`,
    /// which redeems the token, writes /etc/trellis/agent.env and returns
    /// once the unit's agent is READY (`Type=notify`).
    pub fn join(&self, token: &str) -> anyhow::Result<()> {
        self.vm
            .sh(&format!(
                "trellis vm join --token {token} --capture iptables"
            ))
            .with_context(|| self.journal())
            .map(drop)
    }

    /// The end of the agent's journal in the VM, for failure messages.
    pub fn journal(&self) -> String {
        self.vm
            .sh("journalctl -u trellis-agent --no-pager -n 60")
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    /// `curl -sf URL` inside the VM: the answer, or the error.
    pub fn call_from_vm(&self, url: &str) -> anyhow::Result<String> {
        self.vm.sh(&format!("curl -sf -m 5 {url}"))
    }

    /// `curl -sf URL` in `ratings`: the answer, or the error.
    pub fn call_from_ratings(&self, url: &str) -> anyhow::Result<String> {
        self.ratings.sh(&format!("curl -sf -m 5 {url}"))
    }
}

/// An address on `env`'s network that no host has (.254).
fn nowhere(env: &MeshEnv) -> Ipv4Addr {
    let [a, b, c, _] = env.net.gateway().octets();
    Ipv4Addr::new(a, b, c, 254)
}
