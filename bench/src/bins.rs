//! The Trellis binaries a suite starts: those beside this executable
//! (`target/PROFILE/`), built first with the same profile unless told not
//! to, through the harness's `trellis_e2e::use_bins`.
use anyhow::{bail, Context};

/// Makes the test bed start `packages` (one binary each) from beside this
/// executable, after building them if `build`; fails if one is missing.
pub fn prepare(build: bool, packages: &[&str]) -> anyhow::Result<()> {
    let dir = trellis_e2e::profile_dir()?;
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("this executable's profile directory")?;
    if profile != "release" {
        eprintln!("warning: this is a `{profile}` build; run with --release for figures that mean something");
    }
    let dir = trellis_e2e::use_bins(if build { packages } else { &[] })?;
    for &b in packages {
        if !dir.join(b).is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p {b}`",
                dir.join(b).display()
            );
        }
    }
    Ok(())
}
