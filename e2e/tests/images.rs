//! The container images (packaging/images/build.sh): each build context's
//! root filesystem runs its binary (and, in the agent's, nft and
//! iptables) under chroot, so nothing it loads is missing; then the
//! images are built FROM scratch by a real Docker engine, a private
//! `dockerd` of this test's own, and run.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use trellis_agent::capture::{Backend, Capture, Family};
use trellis_e2e::{profile_dir, Proc};

const IMAGES: [&str; 3] = ["agent", "controlplane", "eastwest"];

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/images/build.sh")
}

/// The debug build's contexts in `dir`.
fn contexts(dir: &Path) -> anyhow::Result<()> {
    let target = profile_dir()?.parent().context("target dir")?.to_path_buf();
    run(Command::new(build_script())
        .args(["--dev", "--no-build", "--contexts-only"])
        .arg(dir)
        .env("CARGO_TARGET_DIR", target))?;
    Ok(())
}

fn is_root() -> bool {
    run(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}

#[test]
fn each_image_root_runs_its_binary_and_the_agent_has_its_capture_tools() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: chroot needs root");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    contexts(dir.path())?;
    for image in IMAGES {
        let root = dir.path().join(image).join("rootfs");
        let out = run(Command::new("chroot")
            .arg(&root)
            .arg(format!("/usr/bin/trellis-{image}"))
            .arg("--version"))?;
        assert_eq!(
            out.trim(),
            format!("trellis-{image} {}", env!("CARGO_PKG_VERSION"))
        );
        // Nothing but what the binary needs: no shell.
        assert!(!root.join("bin/sh").exists(), "{image} has a shell");
        let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
        assert!(passwd.contains(":1337:1337:"), "{passwd}");
    }
    // The capture step's rules, exactly as the agent makes them, taken by
    // the image's own iptables (with its extension modules) and nft, in a
    // network namespace of their own.
    let agent = dir.path().join("agent/rootfs");
    let nft = chrooted(&agent, &["/usr/sbin/nft", "--version"], "")?;
    assert!(nft.starts_with("nftables"), "{nft}");
    let capture = |backend| Capture {
        backend,
        inbound_port: 15006,
        outbound_port: 15001,
        dns_port: Some(15053),
        exclude_inbound: vec![15020, 15021],
        ipv6: false,
    };
    let rules = capture(Backend::Iptables).iptables_rules(Family::V4);
    let mut chains: Vec<&str> = rules.iter().filter_map(|r| r.split(' ').nth(1)).collect();
    chains.sort();
    chains.dedup();
    let declared: String = chains.iter().map(|c| format!(":{c} - [0:0]\n")).collect();
    let script = format!("*nat\n{declared}{}\nCOMMIT\n", rules.join("\n"));
    chrooted(&agent, &["/usr/sbin/iptables-restore"], &script)?;
    chrooted(
        &agent,
        &["/usr/sbin/nft", "-f", "-"],
        &capture(Backend::Nftables).nft_script(),
    )?;
    Ok(())
}

/// `chroot ROOT ARGS...` in a new network namespace, `input` on stdin;
/// its stdout.
fn chrooted(root: &Path, args: &[&str], input: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("unshare")
        .args(["--net", "chroot"])
        .arg(root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("unshare")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{args:?} in {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Docker engine of this test's own: its socket, data and state under
/// private paths, no bridge and no iptables rules of its own; stopped
/// when dropped. Its image store is kept between runs.
struct Docker {
    host: String,
    daemon: Proc,
    _dir: tempfile::TempDir,
}

impl Drop for Docker {
    /// SIGTERM: dockerd stops the containerd it started too.
    fn drop(&mut self) {
        let _ = self.daemon.terminate();
    }
}

impl Docker {
    fn start() -> anyhow::Result<Docker> {
        let dir = tempfile::tempdir()?;
        let sock = dir.path().join("docker.sock");
        let host = format!("unix://{}", sock.display());
        let daemon = Proc::spawn(
            "dockerd",
            Command::new("dockerd")
                .arg("--host")
                .arg(&host)
                .args(["--data-root", "/var/cache/trellis-docker"])
                .arg("--exec-root")
                .arg(dir.path().join("exec"))
                .arg("--pidfile")
                .arg(dir.path().join("docker.pid"))
                .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"]),
            &dir.path().join("dockerd.log"),
        )?;
        let docker = Docker {
            host,
            daemon,
            _dir: dir,
        };
        trellis_e2e::wait_for_blocking(Duration::from_secs(60), "dockerd up", || {
            docker
                .cmd()
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(())
        })?;
        Ok(docker)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host);
        c
    }
}

#[test]
fn the_images_build_from_scratch_with_docker_and_run() -> anyhow::Result<()> {
    if !is_root() {
        eprintln!("skipping: dockerd needs root");
        return Ok(());
    }
    if !trellis_e2e::on_path("dockerd") {
        eprintln!("skipping: no dockerd (Debian package docker.io)");
        return Ok(());
    }
    let docker = Docker::start()?;
    let tag = format!("test-{}", std::process::id());
    let target = profile_dir()?.parent().context("target dir")?.to_path_buf();
    run(Command::new(build_script())
        .args(["--dev", "--no-build", "--tag", &tag])
        .env("CARGO_TARGET_DIR", target)
        .env("DOCKER_HOST", &docker.host))?;
    for image in IMAGES {
        let name = format!("trellis/trellis-{image}:{tag}");
        let out = run(docker
            .cmd()
            .args(["run", "--rm", "--network", "none", &name, "--version"]))?;
        assert_eq!(
            out.trim(),
            format!("trellis-{image} {}", env!("CARGO_PKG_VERSION"))
        );
        // Built FROM scratch: one layer, the context's root.
        let layers =
            run(docker
                .cmd()
                .args(["image", "inspect", "-f", "{{len .RootFS.Layers}}", &name]))?;
        assert_eq!(layers.trim(), "1", "{name}");
        let user = run(docker
            .cmd()
            .args(["image", "inspect", "-f", "{{.Config.User}}", &name]))?;
        assert_eq!(user.trim(), "1337:1337");
        run(docker.cmd().args(["rmi", &name]))?;
    }
    Ok(())
}
