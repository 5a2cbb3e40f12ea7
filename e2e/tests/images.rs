//! The container images' build contexts (`packaging/images/build.sh`):
//! each image is `FROM scratch`, so its root filesystem must run its
//! binary with nothing from the host. Checked by running each binary, and
//! the agent's capture step's iptables and nft with the agent's own rules,
//! chrooted into the root filesystem (in a network namespace of their
//! own). No docker daemon runs on this machine, so `docker build` itself
//! is not run here (`build.sh --docker` runs it where one does).
use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::Context;
use trellis_agent::capture::{Backend, Capture, Family};
use trellis_e2e::bin_dir;

/// `chroot ROOT ARGS...` in a new network namespace, `input` on stdin.
fn chrooted(root: &Path, args: &[&str], input: &str) -> anyhow::Result<Output> {
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
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} in {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

#[test]
fn each_images_root_filesystem_runs_its_binary_alone() -> anyhow::Result<()> {
    if let Some(why) = trellis_e2e::netns::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    // The harness's binaries (with the others every e2e test builds).
    let bins = bin_dir();
    let out = tempfile::tempdir()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/images/build.sh");
    let built = Command::new("sh")
        .arg(&script)
        .arg("--bin-dir")
        .arg(bins)
        .arg(out.path())
        .output()?;
    anyhow::ensure!(
        built.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    for name in ["agent", "controlplane", "eastwest"] {
        let context = out.path().join(name);
        let dockerfile = std::fs::read_to_string(context.join("Dockerfile"))?;
        assert!(dockerfile.contains("\nFROM scratch\n"), "{dockerfile}");
        let binary = format!("/usr/local/bin/trellis-{name}");
        assert!(dockerfile.contains(&format!(r#"ENTRYPOINT ["{binary}"]"#)));
        let root = context.join("rootfs");
        let help = chrooted(&root, &[&binary, "--help"], "")?;
        assert!(help.stdout.starts_with(b"`trellis-") || help.stdout.starts_with(b"The Trellis"));
    }

    // The capture step's rules, exactly as the agent makes them, taken by
    // the image's own iptables (with its extension modules) and nft.
    let root = out.path().join("agent/rootfs");
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
    chrooted(&root, &["/usr/sbin/iptables-restore"], &script)?;
    chrooted(
        &root,
        &["/usr/sbin/nft", "-f", "-"],
        &capture(Backend::Nftables).nft_script(),
    )?;
    Ok(())
}
