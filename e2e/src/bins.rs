//! Where the binaries under test are: `target/PROFILE/` of the running
//! executable, built first with the same profile.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

use crate::process::remove_env_prefixed;

/// What [`bin_dir`] builds when nothing chose otherwise: every binary the
/// harness starts.
const HARNESS_PACKAGES: [&str; 5] = [
    "trellis-controlplane",
    "trellis",
    "trellis-echo",
    "trellis-agent",
    "trellis-eastwest",
];

static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The directory holding the binaries of the profile this executable was
/// built with; builds them first (once per process) so `cargo test` alone
/// is enough. A binary that wants a say in that calls [`use_bins`] first.
pub fn bin_dir() -> &'static Path {
    BIN_DIR.get_or_init(|| prepare(&HARNESS_PACKAGES).expect("building the binaries"))
}

/// Builds `packages` (none: takes the binaries as they are) with the
/// profile of this executable and makes their directory the one
/// [`bin_dir`] returns. For a `[[bin]]` such as `trellis-bench`, before it
/// starts a [`crate::Cluster`].
pub fn use_bins(packages: &[&str]) -> anyhow::Result<&'static Path> {
    let dir = prepare(packages)?;
    Ok(BIN_DIR.get_or_init(|| dir))
}

/// Path of one of our binaries.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// `target/PROFILE/` of the running executable.
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    profile_dir_of(&exe)
        .map(Path::to_path_buf)
        .with_context(|| format!("no target/PROFILE/ above {}", exe.display()))
}

/// A test executable is in `target/PROFILE/deps/`, a `[[bin]]` in
/// `target/PROFILE/` itself.
fn profile_dir_of(exe: &Path) -> Option<&Path> {
    let dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir.parent()
    } else {
        Some(dir)
    }
}

fn prepare(packages: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = profile_dir()?;
    if !packages.is_empty() {
        build(&dir, packages)?;
    }
    Ok(dir)
}

/// What Cargo sets for the crate it runs (a test, `cargo run`), besides
/// `CARGO_PKG_*` and `CARGO_BIN_EXE_*`.
const RUN_ENV: [&str; 6] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "OUT_DIR",
];

/// `cargo build` of `packages` into `dir` (`target/PROFILE/`).
fn build(dir: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let target = dir.parent().context("target directory")?;
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(p) => p,
        None => bail!("no profile directory name in {}", dir.display()),
    };
    eprintln!("building {} ({profile}) ...", packages.join(", "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--profile", profile]);
    // Left in, they would differ from the environment of the `cargo test`
    // that built this executable, and build scripts that watch them would
    // run again (ring's watches CARGO_MANIFEST_DIR, CARGO_PKG_* and
    // OUT_DIR): ring, rustls and all above them rebuilt here, and once
    // more by the next `cargo test`.
    for var in RUN_ENV {
        cmd.env_remove(var);
    }
    remove_env_prefixed(&mut cmd, "CARGO_PKG_");
    remove_env_prefixed(&mut cmd, "CARGO_BIN_EXE_");
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd
        // The same target directory as this executable.
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building {} failed", packages.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_profile_dir_of_tests_and_binaries() {
        let test = Path::new("/w/target/debug/deps/controlplane-0123abcd");
        assert_eq!(profile_dir_of(test), Some(Path::new("/w/target/debug")));
        let bench = Path::new("/w/target/release/trellis-bench");
        assert_eq!(profile_dir_of(bench), Some(Path::new("/w/target/release")));
    }
}
