//! `trellis vm join` and `trellis vm leave`: a VM with the `trellis-agent`
//! package joins the mesh with a token, and leaves it (docs/vm.md).
//!
//! Join checks everything it can before writing anything: root, systemd,
//! the package, not already joined, the token; then it redeems the token
//! itself (the agent's own code, [`identity::redeem`]), so that an expired
//! or used token, an unreachable control plane or a root that does not
//! match the token's pin are reported here. Only then are files written:
//! first the join record (`/var/lib/trellis/vm`, root's) with copies of
//! what join replaces, so that [`leave`] — which is also join's rollback
//! after a later failure — can put them back byte for byte.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use trellis_dataplane::identity::{self, IdentityError};
use trellis_identity::files::write_private;
use trellis_identity::join_token::JoinToken;
use trellis_transport::unit::{self, get_var, set_vars, systemctl, unset_var};

pub mod files;

/// The agent's unit.
const UNIT: &str = "trellis-agent.service";
/// The agent's settings.
const AGENT_ENV: &str = "/etc/trellis/agent.env";
/// The agent's state: key, certificates, config cache.
const AGENT_STATE: &str = "/var/lib/trellis/agent";
/// Join's record and the copies of what it replaced (root's, 0700).
const JOIN_DIR: &str = "/var/lib/trellis/vm";
const RECORD: &str = "joined.json";
const ENV_BEFORE: &str = "agent.env.before";
const RESOLV_BEFORE: &str = "resolv.conf.before";
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// resolved's list of its upstream servers.
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
const RESOLVED_DROPIN: &str = "/etc/systemd/resolved.conf.d/trellis.conf";
const UNIT_DNS_DROPIN: &str = "/etc/systemd/system/trellis-agent.service.d/trellis-dns.conf";
/// The first systemd whose resolved takes `DNS=IP:PORT`.
const RESOLVED_PORT_SINCE: u32 = 246;
/// Where the agent's DNS proxy listens when resolved forwards to it (the
/// agent's default).
const AGENT_DNS_RESOLVED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15053);
/// Where it listens when /etc/resolv.conf names it: port 53, the only
/// one resolv.conf knows.
const AGENT_DNS_RESOLV_CONF: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

/// How the host's traffic reaches the agent (`TRELLIS_CAPTURE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    None,
    Iptables,
    Nftables,
}

impl Capture {
    fn as_str(self) -> &'static str {
        match self {
            Capture::None => "none",
            Capture::Iptables => "iptables",
            Capture::Nftables => "nftables",
        }
    }
}

/// `trellis vm join`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct JoinArgs {
    /// The VM join token (`trellis token create --kind vm`).
    #[arg(long, env = "TRELLIS_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The WorkloadGroup NAMESPACE/NAME to register in (default: the token's); the namespace is the token's identity's.
    #[arg(long)]
    pub workload_group: Option<String>,
    /// How the host's traffic reaches the agent (default: as agent.env says, none unless edited).
    #[arg(long, value_enum)]
    pub capture: Option<Capture>,
    /// Point the host's resolver at the agent's DNS proxy (mesh names answered, the rest forwarded to the resolvers in use now); `trellis vm leave` puts it back.
    #[arg(long)]
    pub dns: bool,
    /// Control-plane addresses HOST:PORT, comma-separated (default: the token's).
    #[arg(long, value_delimiter = ',')]
    pub control_plane: Vec<String>,
    /// How long to wait for the agent to be ready.
    #[arg(long, default_value = "120s", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
}

/// What a join asked for: a second join asking for the same is a no-op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Settings {
    token: String,
    /// The WorkloadGroup's name (its namespace is the identity's).
    workload_group: Option<String>,
    capture: Option<Capture>,
    dns: bool,
    control_plane: Vec<String>,
}

/// What join did, kept for leave.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    settings: Settings,
    identity: String,
    /// How the resolver was pointed at the agent, once it was.
    resolver: Option<Resolver>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Resolver {
    /// A drop-in of systemd-resolved.
    Resolved,
    /// /etc/resolv.conf rewritten; before, it was a symlink to `symlink`,
    /// or a file whose bytes are in JOIN_DIR/RESOLV_BEFORE.
    ResolvConf { symlink: Option<PathBuf> },
}

/// Checks the flags against the token without touching the host: the
/// token must parse and be a VM token; the WorkloadGroup must be
/// NAMESPACE/NAME (or NAME) in the token's identity's namespace.
fn settings(args: &JoinArgs) -> anyhow::Result<(Settings, JoinToken)> {
    let token = JoinToken::parse(&args.token).context("--token")?;
    let Some(workload) = token.workload.clone() else {
        bail!(
            "--token: this is not a VM token (it names no workload identity); create one with \
             `trellis token create --kind vm --identity NAMESPACE/SERVICEACCOUNT`"
        );
    };
    let namespace = workload.split('/').next().unwrap_or_default().to_string();
    let workload_group = match args.workload_group.as_deref() {
        None => None,
        Some(g) => {
            let (ns, name) = g.split_once('/').unwrap_or((&namespace, g));
            if ns != namespace {
                bail!(
                    "--workload-group {g}: the token's identity is in namespace {namespace}; \
                     a workload registers in a WorkloadGroup of its own namespace"
                );
            }
            if name.is_empty() || name.contains('/') {
                bail!("--workload-group {g}: expected NAMESPACE/NAME");
            }
            Some(name.to_string())
        }
    };
    for addr in &args.control_plane {
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            bail!("--control-plane {addr}: expected HOST:PORT");
        }
    }
    let settings = Settings {
        token: args.token.trim().to_string(),
        workload_group,
        capture: args.capture,
        dns: args.dns,
        control_plane: args.control_plane.clone(),
    };
    Ok((settings, token))
}

/// Root, systemd and the agent's package, or why not.
fn preflight() -> anyhow::Result<()> {
    unit::preflight("trellis vm", UNIT, "trellis-agent")?;
    Ok(())
}

/// `trellis vm join`.
pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let (settings, token) = settings(&args)?;
    preflight()?;
    let dir = Path::new(JOIN_DIR);
    if let Some(record) = read_record()? {
        if record.settings != settings {
            bail!(
                "this VM already joined the mesh as {} with other settings; to join again, \
                 run `trellis vm leave` first (it stops the agent and removes its identity), \
                 then `trellis vm join` with a new token",
                record.identity
            );
        }
        // The same join again: the agent keeps its identity; no token use.
        let was = unit::state(UNIT)?;
        if was.0 != "active" {
            unit::enable_and_wait(UNIT, args.timeout)?;
        }
        println!(
            "already joined as {} with these settings; {UNIT} {}",
            record.identity,
            if was.0 == "active" {
                "is running"
            } else {
                "started"
            }
        );
        return print_state(&record);
    }
    let env_before = read(Path::new(AGENT_ENV))?;
    if get_var(&env_before, "TRELLIS_TOKEN").is_some()
        || Path::new(AGENT_STATE).join("cert-chain.pem").exists()
    {
        bail!(
            "this VM already joined the mesh without `trellis vm join` (a token in {AGENT_ENV} \
             or a certificate in {AGENT_STATE}): run `trellis vm leave` to remove them, then \
             join again"
        );
    }
    let dns = if settings.dns {
        Some(dns_plan()?)
    } else {
        None
    };

    // The token, redeemed into a directory beside the state, moved into
    // place once it worked.
    let scratch = tempfile::Builder::new()
        .prefix(".join-")
        .tempdir_in(
            Path::new(AGENT_STATE)
                .parent()
                .unwrap_or(Path::new("/var/lib")),
        )
        .context("making a directory for the certificate")?;
    let loaded = identity::redeem(
        &settings.token,
        &settings.control_plane,
        scratch.path(),
        None,
    )
    .await
    .map_err(|e| redeem_error(e, &token, &settings.control_plane))?;
    let record = Record {
        identity: loaded.id.to_string(),
        settings: settings.clone(),
        resolver: None,
    };
    let control_plane = loaded.control_plane.join(", ");

    // From here on, a failure rolls back: leave undoes what the record says.
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    write_private(&dir.join(ENV_BEFORE), env_before.as_bytes())?;
    write_record(&record)?;
    match apply(record, &env_before, scratch.path(), dns, args.timeout) {
        Ok(record) => {
            println!("joined the mesh as {}", record.identity);
            println!("  control plane: {control_plane} (its root matches the token's pin)");
            print_state(&record)
        }
        Err(e) => {
            let undone = undo().map_or_else(
                |u| format!("rolling back failed too: {u:#}"),
                |()| "rolled back: the VM is as before (the token was used)".to_string(),
            );
            Err(e.context(undone))
        }
    }
}

/// Where the resolver goes: resolved's drop-in when it runs, else
/// /etc/resolv.conf; with the upstreams the agent forwards to, which are
/// the ones in use now (never the agent itself: no loop).
struct DnsPlan {
    resolved: bool,
    upstreams: Vec<SocketAddr>,
}

fn dns_plan() -> anyhow::Result<DnsPlan> {
    let resolved =
        systemctl(&["is-active", "systemd-resolved.service"]).is_ok_and(|s| s.trim() == "active");
    let (from, agent) = if resolved {
        let version = systemctl(&["--version"])?;
        match files::systemd_version(&version) {
            Some(v) if v >= RESOLVED_PORT_SINCE => {}
            v => bail!(
                "--dns: systemd-resolved {v:?} cannot forward to a port other than 53 (systemd \
                 {RESOLVED_PORT_SINCE} can); point it at the agent (127.0.0.1:15053) yourself"
            ),
        }
        (RESOLVED_UPSTREAMS, AGENT_DNS_RESOLVED)
    } else {
        (RESOLV_CONF, AGENT_DNS_RESOLV_CONF)
    };
    let mut upstreams = trellis_agent::dns::nameservers(&read(Path::new(from))?);
    upstreams.retain(|u| u.ip() != agent.ip() || !resolved && u.port() != agent.port());
    if upstreams.iter().any(|u| u.ip().is_loopback() && !resolved) {
        bail!(
            "--dns: {RESOLV_CONF} names a resolver on this host ({}), which the agent's DNS \
             proxy would take the place of; set TRELLIS_DNS_UPSTREAM yourself and point the \
             resolver at 127.0.0.1:15053",
            upstreams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if upstreams.is_empty() {
        bail!("--dns: {from} names no nameserver for the agent to forward other names to");
    }
    Ok(DnsPlan {
        resolved,
        upstreams,
    })
}

/// Writes the settings and the identity, starts the unit, and points the
/// resolver at the agent once it is ready.
fn apply(
    mut record: Record,
    env_before: &str,
    scratch: &Path,
    dns: Option<DnsPlan>,
    timeout: Duration,
) -> anyhow::Result<Record> {
    let (uid, gid) = trellis_user()?;
    let state = Path::new(AGENT_STATE);
    std::fs::create_dir_all(state)?;
    std::os::unix::fs::chown(state, Some(uid), Some(gid))?;
    std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(scratch)? {
        let entry = entry?;
        let to = state.join(entry.file_name());
        std::fs::rename(entry.path(), &to)?;
        std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
    }

    let s = &record.settings;
    let mut vars = vec![("TRELLIS_TOKEN", s.token.clone())];
    if let Some(c) = s.capture {
        vars.push(("TRELLIS_CAPTURE", c.as_str().to_string()));
    }
    if let Some(g) = &s.workload_group {
        vars.push(("TRELLIS_WORKLOAD_GROUP", g.clone()));
    }
    if !s.control_plane.is_empty() {
        vars.push(("TRELLIS_CONTROL_PLANE", s.control_plane.join(",")));
    }
    if let Some(plan) = &dns {
        let listen = if plan.resolved {
            AGENT_DNS_RESOLVED
        } else {
            AGENT_DNS_RESOLV_CONF
        };
        vars.push(("TRELLIS_DNS", listen.to_string()));
        let up: Vec<String> = plan.upstreams.iter().map(ToString::to_string).collect();
        vars.push(("TRELLIS_DNS_UPSTREAM", up.join(",")));
        if !plan.resolved {
            write_file(Path::new(UNIT_DNS_DROPIN), &files::bind_53_dropin(), 0o644)?;
        }
    }
    write_private(Path::new(AGENT_ENV), set_vars(env_before, &vars).as_bytes())?;

    systemctl(&["daemon-reload"])?;
    unit::enable_and_wait(UNIT, timeout)?;

    if let Some(plan) = dns {
        record.resolver = Some(point_resolver(&plan)?);
        write_record(&record)?;
    }
    Ok(record)
}

/// Points the host's resolver at the agent, saving what was there first
/// (recorded before anything changes, so that a failure is undone).
fn point_resolver(plan: &DnsPlan) -> anyhow::Result<Resolver> {
    if plan.resolved {
        let resolver = Resolver::Resolved;
        write_record_resolver(&resolver)?;
        write_file(
            Path::new(RESOLVED_DROPIN),
            &files::resolved_dropin(AGENT_DNS_RESOLVED),
            0o644,
        )?;
        systemctl(&["restart", "systemd-resolved.service"])?;
        return Ok(resolver);
    }
    let path = Path::new(RESOLV_CONF);
    let before = read(path)?;
    let symlink = std::fs::symlink_metadata(path)?
        .file_type()
        .is_symlink()
        .then(|| std::fs::read_link(path))
        .transpose()?;
    let resolver = Resolver::ResolvConf {
        symlink: symlink.clone(),
    };
    write_private(&Path::new(JOIN_DIR).join(RESOLV_BEFORE), before.as_bytes())?;
    write_record_resolver(&resolver)?;
    let text = files::resolv_conf(&before, AGENT_DNS_RESOLV_CONF.ip());
    if symlink.is_some() {
        std::fs::remove_file(path)?;
        write_file(path, &text, 0o644)?;
    } else {
        // In place: /etc/resolv.conf may be a bind mount (containers).
        std::fs::write(path, text)?;
    }
    Ok(resolver)
}

/// `trellis vm leave`.
pub fn leave() -> anyhow::Result<()> {
    preflight()?;
    let record = read_record()?;
    let env = read(Path::new(AGENT_ENV))?;
    let state = Path::new(AGENT_STATE).join("cert-chain.pem").exists();
    if record.is_none() && get_var(&env, "TRELLIS_TOKEN").is_none() && !state {
        println!("this VM has not joined the mesh: nothing to undo");
        return Ok(());
    }
    undo()?;
    match record {
        Some(r) => println!("left the mesh: {} stopped and disabled, capture removed, {}, settings restored, identity {} removed", UNIT, match r.resolver {
            Some(_) => "resolver restored",
            None => "resolver untouched (joined without --dns)",
        }, r.identity),
        None => println!("left the mesh: {UNIT} stopped and disabled, capture removed, the token in {AGENT_ENV} commented out, the identity removed"),
    }
    Ok(())
}

/// Undoes a join, whole or partial: the resolver first (while the agent
/// still answers), then the unit (its ExecStopPost removes capture), the
/// settings and the identity, and last the record.
fn undo() -> anyhow::Result<()> {
    let dir = Path::new(JOIN_DIR);
    let record = read_record()?;
    match record.as_ref().and_then(|r| r.resolver.clone()) {
        Some(Resolver::Resolved) => {
            remove_if_exists(Path::new(RESOLVED_DROPIN))?;
            systemctl(&["restart", "systemd-resolved.service"])?;
        }
        Some(Resolver::ResolvConf { symlink }) => {
            let path = Path::new(RESOLV_CONF);
            match symlink {
                Some(target) => {
                    remove_if_exists(path)?;
                    std::os::unix::fs::symlink(target, path)?;
                }
                None => std::fs::write(path, std::fs::read(dir.join(RESOLV_BEFORE))?)?,
            }
        }
        None => {}
    }
    // Ignored when not enabled or running.
    let _ = systemctl(&["disable", "--now", UNIT]);
    let stopped = unit::state(UNIT)?;
    if stopped.0 == "active" || stopped.0 == "deactivating" {
        bail!("{UNIT} did not stop: {} ({})", stopped.0, stopped.1);
    }
    // Capture goes with the unit's ExecStopPost; this covers an agent
    // that never ran under the unit.
    unit::run("/usr/bin/trellis-agent", &["--remove-capture"])?;
    let dropin = Path::new(UNIT_DNS_DROPIN);
    if dropin.exists() {
        remove_if_exists(dropin)?;
        systemctl(&["daemon-reload"])?;
    }
    let env_path = Path::new(AGENT_ENV);
    match std::fs::read(dir.join(ENV_BEFORE)) {
        Ok(before) if record.is_some() => write_private(env_path, &before)?,
        _ => {
            let env = read(env_path)?;
            write_private(env_path, unset_var(&env, "TRELLIS_TOKEN").as_bytes())?;
        }
    }
    // The state directory stays, empty, as the package made it.
    if let Ok(entries) = std::fs::read_dir(AGENT_STATE) {
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    Ok(())
}

/// Why the token gave no certificate, in words that say what to do.
fn redeem_error(e: IdentityError, token: &JoinToken, given: &[String]) -> anyhow::Error {
    let addrs = if given.is_empty() {
        token.addrs.join(", ")
    } else {
        given.join(", ")
    };
    match e {
        IdentityError::Certificate(trellis_identity::IdentityError::Unreachable(why))
            if why.contains("does not match the join token's pin") =>
        {
            anyhow::anyhow!(
                "the control plane at {addrs} is not the one the token was made for: its root \
                 certificate does not match the token's pin (a token of another mesh, or \
                 something intercepting the connection); nothing was changed. Create the token \
                 on the mesh this VM joins. Details: {why}"
            )
        }
        IdentityError::Certificate(trellis_identity::IdentityError::Unreachable(why)) => {
            anyhow::anyhow!(
                "cannot reach the control plane at {addrs}: {why}; nothing was changed. Check \
                 that the VM reaches it (routes, firewall: port 15012), or give the addresses \
                 it is reachable at with --control-plane HOST:PORT"
            )
        }
        IdentityError::Refused(why) => anyhow::anyhow!(
            "the control plane at {addrs} refused the token: {why}; nothing was changed"
        ),
        other => anyhow::Error::new(other).context("getting the certificate with the token"),
    }
}

/// What a joined VM runs with.
fn print_state(record: &Record) -> anyhow::Result<()> {
    let s = &record.settings;
    let capture = s.capture.map_or("as agent.env says", Capture::as_str);
    println!("  capture: {capture}");
    if let Some(g) = &s.workload_group {
        println!("  workload group: {g}");
    }
    let dns = match &record.resolver {
        Some(Resolver::Resolved) => format!(
            "systemd-resolved forwards to the agent at {AGENT_DNS_RESOLVED} ({RESOLVED_DROPIN})"
        ),
        Some(Resolver::ResolvConf { .. }) => {
            format!("{RESOLV_CONF} names the agent at {AGENT_DNS_RESOLV_CONF}")
        }
        None => "the host's resolver is unchanged".to_string(),
    };
    println!("  DNS: {dns}");
    let (active, sub) = unit::state(UNIT)?;
    let enabled = systemctl(&["is-enabled", UNIT]).unwrap_or_else(|e| format!("{e:#}"));
    println!("  {UNIT}: {active} ({sub}), {}", enabled.trim());
    Ok(())
}

fn read_record() -> anyhow::Result<Option<Record>> {
    let path = Path::new(JOIN_DIR).join(RECORD);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("{}: not a join record", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_record(record: &Record) -> anyhow::Result<()> {
    let path = Path::new(JOIN_DIR).join(RECORD);
    write_private(&path, &serde_json::to_vec_pretty(record)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn write_record_resolver(resolver: &Resolver) -> anyhow::Result<()> {
    let mut record = read_record()?.context("the join record is gone")?;
    record.resolver = Some(resolver.clone());
    write_record(&record)
}

/// The `trellis` user's uid and gid, made by the package.
fn trellis_user() -> anyhow::Result<(u32, u32)> {
    let line = unit::run("getent", &["passwd", "trellis"])
        .context("the user trellis (made by the trellis-agent package) is missing")?;
    let f: Vec<&str> = line.trim().split(':').collect();
    match (
        f.get(2).and_then(|u| u.parse().ok()),
        f.get(3).and_then(|g| g.parse().ok()),
    ) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => bail!("getent passwd trellis: unexpected {line:?}"),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        join: JoinArgs,
    }

    fn token(group: Option<&str>) -> String {
        JoinToken {
            id: "abcd1234".into(),
            secret: "s".repeat(43),
            addrs: vec!["10.0.0.1:15012".into()],
            root_pin: [7; 32],
            trust_domain: Some("example.org".into()),
            workload: Some("shop/reviews".into()),
            group: group.map(str::to_string),
            cluster: None,
        }
        .encode()
    }

    fn parse(extra: &[&str]) -> anyhow::Result<Settings> {
        let t = token(None);
        let mut argv = vec!["join", "--token", &t];
        argv.extend(extra);
        let cli = Cli::try_parse_from(argv)?;
        settings(&cli.join).map(|(s, _)| s)
    }

    #[test]
    fn the_flags_become_settings() {
        let s = parse(&[
            "--workload-group",
            "shop/reviews-vm",
            "--capture",
            "iptables",
            "--dns",
            "--control-plane",
            "10.0.0.9:15012,cp.example:15012",
        ])
        .unwrap();
        assert_eq!(s.workload_group.as_deref(), Some("reviews-vm"));
        assert_eq!(s.capture, Some(Capture::Iptables));
        assert!(s.dns);
        assert_eq!(s.control_plane, ["10.0.0.9:15012", "cp.example:15012"]);
        // A name alone is in the identity's namespace.
        let s = parse(&["--workload-group", "reviews-vm"]).unwrap();
        assert_eq!(s.workload_group.as_deref(), Some("reviews-vm"));
        let s = parse(&[]).unwrap();
        assert_eq!((s.capture, s.dns, s.workload_group), (None, false, None));
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_and_the_reason() {
        let e = parse(&["--workload-group", "other/reviews-vm"]).unwrap_err();
        assert!(format!("{e:#}").contains("namespace shop"), "{e:#}");
        let e = parse(&["--workload-group", "shop/a/b"]).unwrap_err();
        assert!(
            format!("{e:#}").contains("expected NAMESPACE/NAME"),
            "{e:#}"
        );
        let e = parse(&["--control-plane", "10.0.0.9"]).unwrap_err();
        assert!(format!("{e:#}").contains("--control-plane 10.0.0.9: expected HOST:PORT"));
        let e = parse(&["--capture", "ebpf"]).unwrap_err();
        assert!(e.to_string().contains("invalid value 'ebpf'"), "{e}");
        let cli = Cli::try_parse_from(["join", "--token", "nonsense"]).unwrap();
        let e = settings(&cli.join).unwrap_err();
        assert!(format!("{e:#}").starts_with("--token: "), "{e:#}");
    }

    #[test]
    fn a_token_for_a_node_is_not_a_vm_token() {
        let mut t = JoinToken::parse(&token(None)).unwrap();
        t.workload = None;
        t.trust_domain = None;
        let cli = Cli::try_parse_from(["join", "--token", &t.encode()]).unwrap();
        let e = settings(&cli.join).unwrap_err();
        assert!(e.to_string().contains("not a VM token"), "{e}");
    }
}
