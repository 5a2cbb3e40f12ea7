//! A real Kubernetes API server for the Kubernetes tests: `kube-apiserver`
//! v1.20 (built once from Debian's source package by `e2e/kube/build.sh`,
//! cached in [`CACHED_BIN`]) over its own etcd, on loopback, with RBAC,
//! client certificates, a static admin token and service-account signing
//! keys (so TokenReview works). Optionally `kube-controller-manager` too
//! (it makes EndpointSlices from pods; there is no kubelet, so a test
//! binds pods to Node objects and sets their status itself).
//!
//! Dropping a [`KubeCluster`] stops its processes and removes its files.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::Proc;

/// Where `e2e/kube/build.sh` keeps the binaries between runs.
pub const CACHED_BIN: &str = "/var/cache/trellis-kube/bin";

/// How long the API server has to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why this machine cannot run an API server here, or `None` when it can.
pub fn unavailable() -> Option<&'static str> {
    if let Some(why) = crate::netns::unavailable() {
        return Some(why);
    }
    if !crate::on_path("etcd") {
        return Some("no etcd (Debian package etcd-server)");
    }
    if !crate::on_path("openssl") {
        return Some("no openssl");
    }
    None
}

/// The directory holding `kube-apiserver` and `kube-controller-manager`,
/// built first when missing (a few minutes, once per machine).
pub fn binaries() -> anyhow::Result<PathBuf> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let bin = PathBuf::from(CACHED_BIN);
    if !bin.join("kube-apiserver").exists() || !bin.join("kube-controller-manager").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/build.sh");
        let out = Command::new(&script)
            .arg(&bin)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(bin)
}

/// What to start besides etcd and the API server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Also run `kube-controller-manager` (EndpointSlices from pods,
    /// service-account tokens, garbage collection).
    pub controller_manager: bool,
    /// The service IP range (`--service-cluster-ip-range`); 10.96.0.0/16
    /// when unset.
    pub service_cidr: Option<String>,
}

/// A running API server and its etcd.
pub struct KubeCluster {
    pub name: String,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// A kubeconfig with the admin client certificate (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The cluster's CA certificate (PEM): it signed the API server's and
    /// the admin's certificates.
    pub ca: PathBuf,
    /// The issuer of the cluster's service-account tokens.
    pub issuer: String,
    /// A bearer token of the admin (`--token-auth-file`).
    pub admin_token: String,
    /// The API server's port (on every address of this machine).
    pub port: u16,
    /// The `kubernetes` Service's address (the first of the service
    /// range), in the API server's certificate.
    pub service_ip: Ipv4Addr,
    dir: tempfile::TempDir,
    // Dropped in this order: the controller manager, the API server, etcd.
    kcm: Option<Proc>,
    apiserver: Proc,
    etcd: Proc,
}

impl KubeCluster {
    /// Starts etcd and the API server (and the controller manager when
    /// asked), and waits until the API server is ready.
    pub fn start(name: &str, options: Options) -> anyhow::Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-kube-{name}-"))
            .tempdir()?;
        let d = dir.path();
        let pki = d.join("pki");
        std::fs::create_dir_all(&pki)?;
        let service_cidr = options
            .service_cidr
            .clone()
            .unwrap_or_else(|| "10.96.0.0/16".to_string());
        let service_ip = first_ip(&service_cidr)?;
        make_pki(&pki, name, service_ip)?;
        let admin_token = format!("admin-token-{name}");
        std::fs::write(
            pki.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,system:masters\n"),
        )?;

        let etcd_client = crate::free_port();
        let etcd_peer = crate::free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = Proc::spawn(
            &format!("etcd {name}"),
            Command::new("etcd")
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .args(["--listen-client-urls", &etcd_url])
                .args(["--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("{name}={peer_url}")])
                .args(["--log-level", "warn"]),
            &d.join("etcd.log"),
        )?;

        let port = crate::free_port();
        let server = format!("https://127.0.0.1:{port}");
        let issuer = format!("https://kubernetes.default.svc.{name}");
        let apiserver = Proc::spawn(
            &format!("kube-apiserver {name}"),
            Command::new(bin.join("kube-apiserver"))
                .current_dir(d)
                .arg(format!("--etcd-servers={etcd_url}"))
                // Every address: pods (network namespaces) reach it
                // through their bridge's address (the test kubelet sends
                // the `kubernetes` Service's address there).
                .args(["--bind-address=0.0.0.0", "--advertise-address=127.0.0.1"])
                .arg(format!("--secure-port={port}"))
                .args(["--insecure-port=0", "--endpoint-reconciler-type=none"])
                .args([
                    "--tls-cert-file=pki/apiserver.crt",
                    "--tls-private-key-file=pki/apiserver.key",
                    "--client-ca-file=pki/ca.crt",
                    "--token-auth-file=pki/tokens.csv",
                    "--authorization-mode=RBAC",
                ])
                .arg(format!("--service-account-issuer={issuer}"))
                .arg(format!("--api-audiences={issuer}"))
                .args([
                    "--service-account-signing-key-file=pki/sa.key",
                    "--service-account-key-file=pki/sa.pub",
                ])
                .arg(format!("--service-cluster-ip-range={service_cidr}"))
                .arg(format!("--cert-dir={}", d.join("certs").display())),
            &d.join("apiserver.log"),
        )?;

        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: {name}, cluster: {{server: \"{server}\", certificate-authority: {ca}}}}}]\n\
                 users: [{{name: admin, user: {{client-certificate: {crt}, client-key: {key}}}}}]\n\
                 contexts: [{{name: {name}, context: {{cluster: {name}, user: admin}}}}]\n\
                 current-context: {name}\n",
                ca = pki.join("ca.crt").display(),
                crt = pki.join("admin.crt").display(),
                key = pki.join("admin.key").display(),
            ),
        )?;

        let mut cluster = Self {
            name: name.to_string(),
            server,
            kubeconfig,
            ca: pki.join("ca.crt"),
            issuer,
            admin_token,
            port,
            service_ip,
            kcm: None,
            apiserver,
            etcd,
            dir,
        };
        cluster.wait_ready()?;
        if options.controller_manager {
            let kcm_port = crate::free_port();
            cluster.kcm = Some(Proc::spawn(
                &format!("kube-controller-manager {name}"),
                Command::new(bin.join("kube-controller-manager"))
                    .current_dir(cluster.dir.path())
                    .arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
                    .args([
                        "--leader-elect=false",
                        "--bind-address=127.0.0.1",
                        "--port=0",
                    ])
                    .arg(format!("--secure-port={kcm_port}"))
                    .args([
                        "--service-account-private-key-file=pki/sa.key",
                        "--root-ca-file=pki/ca.crt",
                        "--use-service-account-credentials=false",
                    ])
                    // No nodes to manage, no cloud, no volumes, no CSRs.
                    .arg(
                        "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,\
                         -service,-attachdetach,-persistentvolume-binder,-pvc-protection,\
                         -pv-protection,-persistentvolume-expander,-ttl,-csrsigning,\
                         -csrapproving,-csrcleaner,-bootstrapsigner,-tokencleaner",
                    ),
                &cluster.dir.path().join("kcm.log"),
            )?);
        }
        Ok(cluster)
    }

    /// The API server's address.
    pub fn addr(&self) -> SocketAddr {
        let hostport = self.server.trim_start_matches("https://");
        hostport.parse().expect("127.0.0.1:PORT")
    }

    /// This cluster's working directory (logs under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let ok = self
                .curl("/readyz")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            self.etcd.check_running()?;
            self.apiserver.check_running()?;
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "kube-apiserver {} not ready after {READY_TIMEOUT:?}: {}",
                    self.name,
                    self.apiserver.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `curl` of `path` on the API server as the admin.
    fn curl(&self, path: &str) -> Command {
        let pki = self.dir.path().join("pki");
        let mut cmd = Command::new("curl");
        cmd.arg("-sf")
            .arg("--cacert")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .arg(format!("{}{path}", self.server));
        cmd
    }

    /// `kubectl ARGS` against this cluster as the admin; its stdout, or an
    /// error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// `kubectl ARGS` with `input` on its stdin (`-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl (Debian package kubernetes-client)")?;
        let mut stdin = child.stdin.take().expect("piped");
        if let Some(input) = input {
            stdin.write_all(input.as_bytes())?;
        }
        drop(stdin);
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The cluster's CA, the API server's serving certificate, the admin's
/// client certificate and the service-account signing key, with openssl.
fn make_pki(pki: &Path, name: &str, service_ip: Ipv4Addr) -> anyhow::Result<()> {
    // Each command's words, split on spaces (no argument has one).
    let run = |command: &str| -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(command.split(' '))
            .current_dir(pki)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl {command} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    std::fs::write(
        pki.join("srv.ext"),
        format!(
            "subjectAltName=IP:127.0.0.1,IP:{service_ip},DNS:localhost,DNS:kubernetes.default.svc\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )?;
    std::fs::write(pki.join("cli.ext"), "extendedKeyUsage=clientAuth\n")?;
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    run(&format!(
        "req -x509 {key} -keyout ca.key -out ca.crt -days 3650 -subj /CN={name}-ca"
    ))?;
    for (who, subject, ext) in [
        ("apiserver", "/CN=kube-apiserver", "srv.ext"),
        ("admin", "/O=system:masters/CN=admin", "cli.ext"),
    ] {
        run(&format!(
            "req {key} -keyout {who}.key -out {who}.csr -subj {subject}"
        ))?;
        run(&format!(
            "x509 -req -in {who}.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -out {who}.crt -days 3650 -extfile {ext}"
        ))?;
    }
    // Service-account tokens are signed with RSA (RS256), as kube does.
    run("genrsa -out sa.key 2048")?;
    run("rsa -in sa.key -pubout -out sa.pub")?;
    Ok(())
}

/// The first address of `cidr` (`A.B.C.D/N`): the `kubernetes` Service's.
fn first_ip(cidr: &str) -> anyhow::Result<Ipv4Addr> {
    let (addr, bits) = cidr
        .split_once('/')
        .with_context(|| format!("service range {cidr}: not A.B.C.D/N"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("service range {cidr}"))?;
    let bits: u32 = bits
        .parse()
        .with_context(|| format!("service range {cidr}"))?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Ok(Ipv4Addr::from((u32::from(addr) & mask) + 1))
}

/// The line of `node`'s second "compared the cluster with the store" (the
/// first comparison after a restart: its log holds both runs), once
/// written.
pub async fn comparison_after_restart(node: &crate::NodeProc) -> anyhow::Result<String> {
    crate::wait_for(
        Duration::from_secs(30),
        "the first comparison after the restart",
        || async {
            node.output()
                .lines()
                .filter(|l| l.contains("Kubernetes discovery compared the cluster with the store"))
                .nth(1)
                .map(String::from)
        },
    )
    .await
}
