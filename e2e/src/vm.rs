//! A booted Debian 12 for the package tests: a copy of a cached root
//! filesystem (`e2e/vm-root.sh` makes it with debootstrap when missing)
//! booted by `systemd-nspawn --boot`, systemd as PID 1, inside a
//! network namespace of the caller's (a [`crate::netns::Host`]). There is
//! no systemd-machined here: the container runs with `--register=no
//! --keep-unit` in a cgroup of its own, and commands run inside it with
//! `nsenter` into its PID 1 (`machinectl` does not work).
//!
//! Dropping a [`Vm`] powers it off (SIGTERM to nspawn, which asks the
//! container's systemd to stop), kills what is left in its cgroup after a
//! deadline, and removes the cgroup and the root copy, on panics too.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::mesh::MeshEnv;
use crate::netns::Host;

/// Where the root filesystem is cached between runs.
pub const CACHED_ROOT: &str = "/var/cache/trellis-vm/bookworm-curl";

/// The cgroup hierarchies a container gets a group of its own in (this
/// machine mounts systemd's named v1 hierarchy and the unified one).
const CGROUP_HIERARCHIES: [&str; 2] = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];

/// How long the container's systemd has to reach `running`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a power-off may take before what is left is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(20);

/// Why this machine cannot boot a container (no `systemd-nspawn`), or
/// `None` when it can.
pub fn unavailable() -> Option<&'static str> {
    if let Some(why) = crate::netns::unavailable() {
        return Some(why);
    }
    (!crate::on_path("systemd-nspawn"))
        .then_some("no systemd-nspawn (Debian package systemd-container)")
}

/// The cached root filesystem, made first if missing (debootstrap from the
/// Debian mirror: a few minutes).
pub fn cached_root() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(CACHED_ROOT);
    if !root.join("usr/lib/systemd/systemd").exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-root.sh");
        let out = Command::new(&script)
            .arg(&root)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} {} failed: {}",
                script.display(),
                root.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(root)
}

/// A booted container.
pub struct Vm {
    pub name: String,
    /// The network namespace it runs in.
    netns: String,
    /// The container's root, as the host sees it.
    root: tempfile::TempDir,
    nspawn: Child,
    /// PID (host's view) of the container's systemd.
    leader: u32,
    log: PathBuf,
}

impl Vm {
    /// Copies the cached root and boots it in network namespace `netns`,
    /// named `name` (unique: it names the cgroup); returns once its
    /// systemd is running.
    pub fn boot(name: &str, netns: &str, log: &Path) -> anyhow::Result<Vm> {
        let cached = cached_root()?;
        let root = tempfile::Builder::new()
            .prefix(&format!("trellis-{name}-"))
            .tempdir_in("/var/tmp")?;
        let copy = Command::new("cp")
            .arg("-a")
            .arg(cached.join("."))
            .arg(root.path())
            .status()?;
        if !copy.success() {
            bail!("copying {} failed: {copy}", cached.display());
        }
        // Its hostname is its name, so that its logs say which it is.
        std::fs::write(root.path().join("etc/hostname"), format!("{name}\n"))?;
        let nspawn = nspawn(name, root.path(), netns, log)?;
        let mut vm = Vm {
            name: name.to_string(),
            netns: netns.to_string(),
            root,
            nspawn,
            leader: 0,
            log: log.to_path_buf(),
        };
        vm.wait_up().with_context(|| vm.console())?;
        Ok(vm)
    }

    /// Waits for the container's systemd (nspawn's child) to say
    /// `running` (or `degraded`: a unit of the minimal root failed).
    fn wait_up(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut state = String::new();
        while start.elapsed() < BOOT_TIMEOUT {
            if let Some(status) = self.nspawn.try_wait()? {
                bail!("systemd-nspawn exited: {status}");
            }
            if self.leader == 0 {
                self.leader = child_named(self.nspawn.id(), "systemd").unwrap_or(0);
            }
            if self.leader != 0 {
                let out = self
                    .command("systemctl")
                    .arg("is-system-running")
                    .output()?;
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{} not up after {BOOT_TIMEOUT:?} (systemd: {state:?})",
            self.name
        )
    }

    /// `program` run inside the container: all its namespaces, as root.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.leader.to_string(), "-a", program]);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    }

    /// Runs `script` with `sh -c` inside the container; its stdout, or an
    /// error with its stderr.
    pub fn sh(&self, script: &str) -> anyhow::Result<String> {
        let out = self
            .command("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "in {}: `{script}`: {}: {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where a path of the container is on the host.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.path().join(inside.trim_start_matches('/'))
    }

    /// What the container printed on its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every process in the container's cgroup and below.
    fn processes(&self) -> Vec<String> {
        let mut pids = Vec::new();
        for h in CGROUP_HIERARCHIES {
            let mut dirs = vec![PathBuf::from(h).join(&self.name)];
            while let Some(dir) = dirs.pop() {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(procs.lines().map(str::to_string));
                }
                dirs.extend(subdirs(&dir));
            }
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.nspawn.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < POWEROFF_TIMEOUT {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        let left = self.processes();
        if !left.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&left).status();
            std::thread::sleep(Duration::from_millis(200));
        }
        // Deepest first: a cgroup is removed once empty of processes and
        // groups.
        for h in CGROUP_HIERARCHIES {
            let mut all = vec![PathBuf::from(h).join(&self.name)];
            let mut i = 0;
            while i < all.len() {
                let below = subdirs(&all[i]);
                all.extend(below);
                i += 1;
            }
            for dir in all.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        // The root copy goes with `self.root`.
    }
}

/// The PID of a child of `parent` whose command is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children.split_whitespace().find_map(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == name).then(|| pid.parse().ok()).flatten()
    })
}

/// The directories in `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

impl Vm {
    /// The container's root as its processes see it, mounts included
    /// (`/proc/PID/root` of its systemd): a program of the host's given
    /// this as its root (`rpm --root`) and chrooting there runs against
    /// the booted system, its `/run` and systemd included, when started
    /// with [`Vm::host_command`].
    pub fn live_root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader))
    }

    /// `program` of the host's, run in the container's namespaces but its
    /// mount namespace: in its PID namespace, so that the container's
    /// systemd takes its (and its children's) credentials.
    pub fn host_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.leader.to_string(),
            "-p",
            "-n",
            "-u",
            "-i",
            program,
        ]);
        cmd
    }
}

/// Starts `systemd-nspawn --boot` of `root`, named `name`, in network
/// namespace `netns`, its console appended to `log`.
fn nspawn(name: &str, root: &Path, netns: &str, log: &Path) -> anyhow::Result<Child> {
    // In a cgroup of its own (the shell moves itself there, then
    // becomes nspawn): the host's init is not systemd.
    let mut script = String::new();
    for h in CGROUP_HIERARCHIES {
        script += &format!("mkdir -p {h}/{name} && echo $$ > {h}/{name}/cgroup.procs && ");
    }
    script += "exec systemd-nspawn --boot --register=no --keep-unit --console=pipe \"$@\"";
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new("sh")
        .args(["-c", &script, "nspawn"])
        .arg(format!("--directory={}", root.display()))
        .arg(format!("--machine={name}"))
        .arg(format!("--network-namespace-path=/run/netns/{netns}"))
        // nspawn keeps CAP_NET_ADMIN from the container only with a
        // network of its own made by nspawn; a VM's systemd has it.
        .arg("--capability=CAP_NET_ADMIN")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting systemd-nspawn")
}

/// How long `systemctl reboot` may take to bring the container down.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(60);

impl Vm {
    /// Reboots the container: `systemctl reboot` inside (its units stop
    /// as on a real machine's reboot; nspawn then exits with 133, as it
    /// does on a reboot), runs `while_down` with the container down, then
    /// boots the same root again (its files kept, `/run` empty) in the
    /// same network namespace, and returns once its systemd is running.
    pub fn reboot(
        &mut self,
        while_down: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        // It may not return: the container goes down under it.
        let _ = self.command("systemctl").arg("reboot").status();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.nspawn.try_wait()? {
                break status;
            }
            if start.elapsed() > REBOOT_TIMEOUT {
                bail!(
                    "{} still up {REBOOT_TIMEOUT:?} after systemctl reboot",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if status.code() != Some(133) {
            bail!("systemd-nspawn exited with {status} on a reboot, not 133");
        }
        while_down()?;
        self.nspawn = nspawn(&self.name, self.root.path(), &self.netns, &self.log)?;
        self.leader = 0;
        self.wait_up().with_context(|| self.console())
    }

    /// `dpkg -i` of the .deb `deb` (a host path) in the container; what
    /// dpkg printed.
    pub fn install(&self, deb: &Path) -> anyhow::Result<String> {
        let name = deb.file_name().context("a .deb file")?.to_string_lossy();
        let inside = format!("/root/{name}");
        std::fs::copy(deb, self.path(&inside))
            .with_context(|| format!("copying {}", deb.display()))?;
        self.sh(&format!("dpkg -i {inside}"))
    }
}

/// Runs `packaging/build.sh KIND --no-build ARGS OUT` on the binaries of
/// the profile this process was built with (which the harness built
/// first; `--dev` for a debug build): `kind` is `--deb` or `--rpm`, `args`
/// more of its flags (`--only P`, `--deb-version V`). The packages go to
/// TARGET/`out`, which it returns (the debug and release packages have
/// the same file names: keep them apart).
pub fn build_packages(kind: &str, args: &[&str], out: &str) -> anyhow::Result<PathBuf> {
    let profile = crate::profile_dir()?;
    let target = profile.parent().context("target dir")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build.sh");
    let mut cmd = Command::new(&script);
    cmd.arg(kind);
    if profile.file_name().is_some_and(|p| p == "debug") {
        cmd.arg("--dev");
    }
    let out = target.join(out);
    let built = cmd
        .arg("--no-build")
        .args(args)
        .arg(&out)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !built.status.success() {
        bail!(
            "build.sh {kind} failed: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    Ok(out)
}

/// The .debs of this process's profile ([`build_packages`]), built once
/// per process (cargo-deb stages its files in the target directory: two
/// builds at once would mix them); their directory, TARGET/debian.
pub fn debs() -> anyhow::Result<&'static Path> {
    static DEBS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built =
        DEBS.get_or_init(|| build_packages("--deb", &[], "debian").map_err(|e| format!("{e:#}")));
    built.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// The .deb of `package` in `dir` (as [`debs`] returns).
pub fn deb(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .with_context(|| format!("no {package} .deb in {}", dir.display()))
}

/// Where Debian packages downloaded for the tests are kept between runs.
pub const DEBIAN_DEBS: &str = "/var/cache/trellis-vm/debs";

/// The .deb of Debian's `package` at the version the cached root has of
/// `matching` (for systemd-resolved: that of the root's systemd, which it
/// depends on exactly), downloaded once with `apt-get download` from the
/// host's mirror into [`DEBIAN_DEBS`]; the tests install it in their
/// booted copy, the cached root stays as it is. `Ok(Err(why))` when the
/// host's apt cannot get it (no mirror).
pub fn debian_deb(package: &str, matching: &str) -> anyhow::Result<Result<PathBuf, String>> {
    let root = cached_root()?;
    let version = Command::new("dpkg-query")
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args(["-W", "-f", "${Version} ${Architecture}", matching])
        .output()
        .context("dpkg-query")?;
    if !version.status.success() {
        bail!(
            "{matching} is not installed in {}: {}",
            root.display(),
            String::from_utf8_lossy(&version.stderr)
        );
    }
    let found = String::from_utf8_lossy(&version.stdout).into_owned();
    let (version, arch) = found
        .split_once(' ')
        .with_context(|| format!("dpkg-query {matching}: {found:?}"))?;
    let dir = Path::new(DEBIAN_DEBS);
    // apt-get download names the file with the version's `:` as `%3a`.
    let file = dir.join(format!(
        "{package}_{}_{arch}.deb",
        version.replace(':', "%3a")
    ));
    if file.exists() {
        return Ok(Ok(file));
    }
    std::fs::create_dir_all(dir)?;
    // Downloaded aside, then moved: a half-downloaded .deb is never taken
    // for a cached one.
    let tmp = tempfile::tempdir_in(dir)?;
    let out = Command::new("apt-get")
        .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
        .arg(format!("{package}={version}"))
        .current_dir(tmp.path())
        .output()
        .context("running apt-get download")?;
    let got = tmp.path().join(file.file_name().context("a file name")?);
    if !out.status.success() || !got.exists() {
        return Ok(Err(format!(
            "apt-get download {package}={version} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&got, &file)?;
    Ok(Ok(file))
}

/// A control plane on a test network ([`MeshEnv`]) and a Debian booted
/// on it, in the network namespace of its host `vm`. The VM goes first
/// (field order is drop order).
pub struct OnMesh {
    pub vm: Vm,
    pub host: Host,
    pub env: MeshEnv,
}

impl OnMesh {
    /// `None` (after saying why) where namespaces or systemd-nspawn are
    /// missing. `label` names the network and the container
    /// (`trellis-LABEL-PID`): unique per test.
    pub async fn boot(label: &str) -> anyhow::Result<Option<OnMesh>> {
        if let Some(why) = unavailable() {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
        let mut env = MeshEnv::new(label).await?;
        let host = env.host("vm")?;
        let log = env.cp.root.path().join("vm-console.log");
        let name = format!("trellis-{label}-{}", std::process::id());
        let vm = Vm::boot(&name, &host.netns, &log)?;
        Ok(Some(OnMesh { vm, host, env }))
    }
}

impl Vm {
    /// Fails, with its journal, unless `unit` is a `Type=notify` service
    /// that said READY (`active`, `running`) and has not been restarted.
    pub fn notify_running(&self, unit: &str) -> anyhow::Result<()> {
        let props = self.sh(&format!(
            "systemctl show -p Type,ActiveState,SubState,NRestarts {unit}"
        ))?;
        for want in [
            "Type=notify",
            "ActiveState=active",
            "SubState=running",
            "NRestarts=0",
        ] {
            if !props.lines().any(|l| l == want) {
                let journal = self
                    .sh(&format!("journalctl -u {unit} --no-pager -n 60"))
                    .unwrap_or_else(|e| format!("{e:#}"));
                bail!("{unit}: no {want} in:\n{props}\n{journal}");
            }
        }
        Ok(())
    }
}
