//! The .rpm packages (`packaging/build.sh --rpm`, cargo-generate-rpm),
//! built from the debug binaries once per process: their metadata, file
//! list, scriptlets and `rpmlint`, with Debian's `rpm` and `rpmlint`
//! (`.ci/run` installs them); then a real `rpm` transaction against a
//! booted Debian 12 (systemd as PID 1, under systemd-nspawn): the host's
//! `rpm --root` at the container's live root (`/proc/PID/root`), run in
//! its PID namespace, whose scriptlets chroot there and so reach the
//! container's systemd. With
//! `--nodeps`: the packages require Fedora's names, Debian has its own.
//! What this does not cover: an RPM-based distribution (its rpm, dnf,
//! SELinux contexts, systemd presets), docs/vm.md#rpm.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use trellis_e2e::netns::Net;
use trellis_e2e::vm::{self, Vm};

/// The packages.
const PACKAGES: [&str; 3] = ["trellis-agent", "trellis-controlplane", "trellis-eastwest"];

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// The directory of the .rpm packages, from the binaries of this profile
/// (built first), built once per process.
fn rpms() -> anyhow::Result<&'static Path> {
    static RPMS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    RPMS.get_or_init(|| {
        trellis_e2e::bin_dir();
        vm::build_packages("--rpm", &[], "generate-rpm").map_err(|e| format!("{e:#}"))
    })
    .as_deref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The .rpm of `package`.
fn rpm_file(package: &str) -> anyhow::Result<PathBuf> {
    let file = rpms()?.join(format!(
        "{package}-{}-1.x86_64.rpm",
        env!("CARGO_PKG_VERSION")
    ));
    anyhow::ensure!(file.exists(), "{} not built", file.display());
    Ok(file)
}

/// Runs the host's `rpm` with `args` on package files; its stdout, or an
/// error with its output. With a database of its own in the target
/// directory: Debian's rpm would make one in ~/.rpmdb.
fn run(args: &[&str]) -> anyhow::Result<String> {
    let db = rpms()?.parent().context("target dir")?.join("rpmdb");
    let mut cmd = Command::new("rpm");
    cmd.arg("--dbpath").arg(db);
    run_both(cmd, args).map(|(stdout, _)| stdout)
}

/// Runs `rpm` (the host's, started by `cmd`) with `args`; its stdout and
/// its stderr (where rpm's warnings and a scriptlet's errors go).
fn run_both(mut cmd: Command, args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = cmd
        .args(args)
        .output()
        .context("running rpm (Debian package rpm; .ci/run installs it)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("`rpm {}`: {}: {stdout}{stderr}", args.join(" "), out.status);
    }
    Ok((stdout, stderr))
}

/// `rpm -qp --queryformat FORMAT FILE`.
fn query(file: &Path, format: &str) -> anyhow::Result<String> {
    run(&["-qp", "--queryformat", format, &file.to_string_lossy()])
}

#[test]
fn the_rpms_carry_the_workspace_version_license_and_dependencies() -> anyhow::Result<()> {
    for package in PACKAGES {
        let file = rpm_file(package)?;
        let info = run(&["-qip", &file.to_string_lossy()])?;
        for (field, want) in [
            ("Name", package),
            ("Version", env!("CARGO_PKG_VERSION")),
            ("Release", "1"),
            ("License", env!("CARGO_PKG_LICENSE")),
            ("Architecture", "x86_64"),
        ] {
            let line = info
                .lines()
                .find(|l| l.starts_with(field))
                .with_context(|| format!("no {field} in {info}"))?;
            assert_eq!(
                line.split_once(':').map(|(_, v)| v.trim()),
                Some(want),
                "{package}: {line}"
            );
        }
        let requires = run(&["-qp", "--requires", &file.to_string_lossy()])?;
        let requires: BTreeSet<&str> = requires.lines().collect();
        // Found by cargo-generate-rpm in the binaries, as cargo-deb's $auto.
        assert!(
            requires.iter().any(|r| r.starts_with("libc.so.6(GLIBC_")),
            "{package}: {requires:?}"
        );
        assert!(requires.contains("/bin/sh"), "{package}: {requires:?}");
        let capture = ["(iptables or nftables)", "iproute"];
        for dep in capture {
            assert_eq!(
                requires.contains(dep),
                package == "trellis-agent",
                "{package}: {dep}: {requires:?}"
            );
        }
    }
    Ok(())
}

/// The files of `package`'s .deb, with the mode, owner and rpm's file
/// flags (`c`onfig, `n`oreplace, `d`oc) each should have.
fn expected_files(package: &str) -> BTreeSet<String> {
    let name = package.trim_start_matches("trellis-");
    let mut files = BTreeSet::new();
    let bins: &[&str] = match package {
        "trellis-agent" => &["trellis-agent", "trellis"],
        _ => &[package],
    };
    for bin in bins {
        files.insert(format!("-rwxr-xr-x root root  /usr/bin/{bin}"));
    }
    files.insert(format!(
        "-rw-r--r-- root root  /usr/lib/systemd/system/{package}.service"
    ));
    files.insert(format!("-rw------- root root cn /etc/trellis/{name}.env"));
    for doc in ["vm.md", "changelog"] {
        files.insert(format!(
            "-rw-r--r-- root root d /usr/share/doc/{package}/{doc}"
        ));
    }
    files
}

#[test]
fn the_rpms_hold_the_debs_files_with_their_modes() -> anyhow::Result<()> {
    for package in PACKAGES {
        let file = rpm_file(package)?;
        let listed = query(
            &file,
            "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\\n]",
        )?;
        let listed: BTreeSet<String> = listed.lines().map(str::to_string).collect();
        assert_eq!(listed, expected_files(package), "{package}");
        // And `rpm -qlp` agrees on the names.
        let names = run(&["-qlp", &file.to_string_lossy()])?;
        assert_eq!(names.lines().count(), listed.len(), "{names}");
    }
    Ok(())
}

/// The scriptlets are the .deb's maintainer scripts, byte for byte, run
/// by `env RPM_PACKAGE_NAME=PACKAGE /bin/sh`.
#[test]
fn the_rpm_scriptlets_are_the_debs_maintainer_scripts() -> anyhow::Result<()> {
    for package in PACKAGES {
        let file = rpm_file(package)?;
        let scripts = run(&["-qp", "--scripts", &file.to_string_lossy()])?;
        for (tag, script) in [
            ("POSTIN", "postinst"),
            ("PREUN", "prerm"),
            ("POSTUN", "postrm"),
        ] {
            let debian = std::fs::read_to_string(repo().join("packaging/debian").join(script))?;
            let body = query(&file, &format!("%{{{tag}}}"))?;
            assert_eq!(body.trim_end(), debian.trim_end(), "{package} {tag}");
            let prog = query(&file, &format!("[%{{{tag}PROG}} ]"))?;
            assert_eq!(
                prog.trim_end(),
                format!("/usr/bin/env RPM_PACKAGE_NAME={package} /bin/sh"),
                "{package} {tag}"
            );
            assert!(
                scripts.contains(debian.lines().nth(1).expect("a comment")),
                "{package}: {scripts}"
            );
        }
        for absent in ["PREIN", "PRETRANS", "POSTTRANS"] {
            let body = query(&file, &format!("%{{{absent}}}"))?;
            assert_eq!(body, "(none)", "{package} {absent}");
        }
    }
    Ok(())
}

/// `rpmlint` with `packaging/rpm/rpmlintrc` (each suppression says why)
/// finds no error in any of the packages.
#[test]
fn rpmlint_finds_no_error() -> anyhow::Result<()> {
    let rc = repo().join("packaging/rpm/rpmlintrc");
    // Its rpm would make a database in $HOME/.rpmdb: one in the target
    // directory instead.
    let home = rpms()?.parent().context("target dir")?.join("rpmlint");
    std::fs::create_dir_all(&home)?;
    for package in PACKAGES {
        let file = rpm_file(package)?;
        let out = Command::new("rpmlint")
            .env("HOME", &home)
            .arg("--rpmlintrc")
            .arg(&rc)
            .arg(&file)
            .output()
            .context("running rpmlint (Debian package rpmlint; .ci/run installs it)")?;
        let report = String::from_utf8_lossy(&out.stdout);
        eprintln!("rpmlint {package}:\n{report}");
        assert!(
            out.status.success(),
            "{package}: {}{report}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(report.contains(" 0 errors"), "{package}: {report}");
    }
    Ok(())
}

/// A booted Debian 12 and `rpm` run against it.
struct Booted {
    vm: Vm,
    // Dropped after the container.
    _net: Net,
    /// The console's log and rpm's database.
    dir: tempfile::TempDir,
}

impl Booted {
    /// `None` where namespaces or systemd-nspawn are missing.
    fn start() -> anyhow::Result<Option<Booted>> {
        if let Some(why) = vm::unavailable() {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
        let mut net = Net::new("rpmpkg")?;
        let host = net.host("vm")?;
        let dir = tempfile::tempdir()?;
        let name = format!("trellis-rpm-{}", std::process::id());
        let vm = Vm::boot(&name, &host.netns, &dir.path().join("console.log"))?;
        Ok(Some(Booted { vm, _net: net, dir }))
    }

    /// The host's `rpm ARGS` with `--root` the container's live root:
    /// all it printed, the scriptlets' output included.
    fn rpm(&self, args: &[&str]) -> anyhow::Result<String> {
        let root = self.vm.live_root();
        // The database: in this test's directory on the host. rpm prefixes
        // --dbpath with the root, and SQLite resolves the symbolic link
        // /proc/PID/root that prefix starts with to "/", the host's:
        // SQLite opens DB on the host, while rpm makes its lock file and
        // directory in the container's DB.
        let db = self.dir.path().join("rpmdb");
        let db = db.to_str().context("db path")?;
        std::fs::create_dir_all(db)?;
        self.vm.sh(&format!("mkdir -p {db}"))?;
        let mut all = vec![
            "--root",
            root.to_str().context("root path")?,
            "--dbpath",
            db,
        ];
        all.extend_from_slice(args);
        run_both(self.vm.host_command("rpm"), &all).map(|(stdout, stderr)| stdout + &stderr)
    }

    /// `ActiveState`, `UnitFileState` and `MainPID` of `unit`.
    fn unit(&self, unit: &str) -> anyhow::Result<String> {
        self.vm.sh(&format!(
            "systemctl show -p ActiveState,UnitFileState,MainPID {unit}"
        ))
    }
}

/// The scriptlets under a real `rpm` transaction: `rpm -i` of the three
/// packages makes the user and the state directories and starts nothing; `rpm -U` of a running
/// unit's package (%post with 2) restarts it and leaves it enabled
/// (%preun and %postun with 1 do nothing); `rpm -e` (%preun with 0)
/// stops and disables it, and (%postun with 0) removes state, settings
/// (the edited ones rpm kept as .rpmsave too) and, with the last
/// package, the user, as the .deb's purge does.
#[test]
fn rpm_installs_upgrades_and_erases_on_a_booted_debian() -> anyhow::Result<()> {
    let agent = rpm_file("trellis-agent")?;
    let controlplane = rpm_file("trellis-controlplane")?;
    let eastwest = rpm_file("trellis-eastwest")?;
    let Some(booted) = Booted::start()? else {
        return Ok(());
    };
    let vm = &booted.vm;
    let journal = || {
        vm.sh("journalctl -u trellis-controlplane --no-pager -n 40")
            .unwrap_or_else(|e| format!("{e:#}"))
    };

    let installed = booted.rpm(&["-i", "--nodeps", &controlplane.to_string_lossy()])?;
    assert!(
        installed.contains("trellis-controlplane: installed, not enabled"),
        "{installed}"
    );
    for other in [&agent, &eastwest] {
        booted.rpm(&["-i", "--nodeps", &other.to_string_lossy()])?;
    }
    // Stripped by build.sh, as cargo-deb --strip does.
    for bin in [
        "trellis-agent",
        "trellis",
        "trellis-controlplane",
        "trellis-eastwest",
    ] {
        let sections = Command::new("readelf")
            .arg("-S")
            .arg(vm.path(&format!("/usr/bin/{bin}")))
            .output()?;
        let sections = String::from_utf8_lossy(&sections.stdout);
        assert!(sections.contains(".text"), "{bin}: {sections}");
        assert!(!sections.contains(".debug_info"), "{bin} not stripped");
    }
    assert!(vm
        .sh("getent passwd trellis")?
        .contains(":/var/lib/trellis:/usr/sbin/nologin"));
    let modes = vm.sh(
        "stat -c '%U %a %n' /var/lib/trellis/controlplane /var/lib/trellis/agent \
           /var/lib/trellis/eastwest /etc/trellis/controlplane.env \
           /etc/trellis/agent.env /etc/trellis/eastwest.env",
    )?;
    assert_eq!(
        modes,
        "trellis 700 /var/lib/trellis/controlplane\n\
         trellis 700 /var/lib/trellis/agent\n\
         trellis 700 /var/lib/trellis/eastwest\n\
         root 600 /etc/trellis/controlplane.env\n\
         root 600 /etc/trellis/agent.env\n\
         root 600 /etc/trellis/eastwest.env\n"
    );
    for unit in PACKAGES {
        let props = booted.unit(unit)?;
        for want in ["ActiveState=inactive", "UnitFileState=disabled"] {
            assert!(props.contains(want), "{unit}: {want}: {props}");
        }
    }

    // A node, run by the unit (as vm_package.rs does with the .deb).
    let data = "/var/lib/trellis/controlplane";
    vm.sh(&format!(
        "setpriv --reuid trellis --regid trellis --init-groups \
           trellis-controlplane init --trust-domain rpm.test --data-dir {data} \
           >/root/init.log 2>&1 & \
         for i in $(seq 300); do [ -e {data}/admin.yaml ] && break; sleep 0.1; done; \
         sleep 1; kill $!; wait $! || true"
    ))?;
    vm.sh("systemctl enable --now trellis-controlplane")
        .with_context(journal)?;
    let before = booted.unit("trellis-controlplane")?;
    assert!(
        before.contains("ActiveState=active"),
        "{before}\n{}",
        journal()
    );
    // An edit the upgrade keeps (noreplace) and the erase removes.
    vm.sh("echo TRELLIS_LOG=debug >> /etc/trellis/controlplane.env")?;

    // The same package again: to its scriptlets an upgrade (%post gets 2,
    // the old one's %preun and %postun 1).
    booted.rpm(&[
        "-U",
        "--replacepkgs",
        "--nodeps",
        &controlplane.to_string_lossy(),
    ])?;
    let after = booted.unit("trellis-controlplane")?;
    for want in ["ActiveState=active", "UnitFileState=enabled"] {
        assert!(after.contains(want), "{want}: {after}\n{}", journal());
    }
    let pid = |props: &str| {
        props
            .lines()
            .find_map(|l| l.strip_prefix("MainPID="))
            .map(str::to_string)
    };
    assert_ne!(pid(&before), pid(&after), "restarted by the upgrade");
    assert!(vm
        .sh("cat /etc/trellis/controlplane.env")?
        .contains("TRELLIS_LOG=debug"));

    let erased = booted.rpm(&["-e", "trellis-controlplane"])?;
    assert!(
        erased.contains(
            "/etc/trellis/controlplane.env saved as /etc/trellis/controlplane.env.rpmsave"
        ),
        "{erased}"
    );
    let props = booted.unit("trellis-controlplane")?;
    assert!(props.contains("ActiveState=inactive"), "{props}");
    assert!(props.contains("MainPID=0"), "{props}");
    for gone in [
        "/var/lib/trellis/controlplane",
        "/etc/trellis/controlplane.env",
        "/etc/trellis/controlplane.env.rpmsave",
        "/usr/lib/systemd/system/trellis-controlplane.service",
        // Disabled.
        "/etc/systemd/system/multi-user.target.wants/trellis-controlplane.service",
    ] {
        assert!(!vm.path(gone).exists(), "{gone} left after rpm -e");
    }
    assert!(vm.path("/var/lib/trellis/agent").exists());
    vm.sh("getent passwd trellis")
        .context("the agent's user went with the control plane")?;

    booted.rpm(&["-e", "trellis-eastwest", "trellis-agent"])?;
    for gone in ["/var/lib/trellis", "/etc/trellis", "/usr/bin/trellis-agent"] {
        assert!(!vm.path(gone).exists(), "{gone} left after rpm -e");
    }
    assert!(vm.sh("getent passwd trellis").is_err(), "user trellis left");
    let left = booted.rpm(&["-qa"])?;
    assert!(!left.contains("trellis"), "{left}");
    Ok(())
}
