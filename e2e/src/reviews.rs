//! reviews on loopback, as the Kubernetes discovery and configuration
//! tests have it: `trellis-echo` servers of its versions, a client agent
//! with an upstream to the service, and calls that say which version
//! answered.
use std::path::Path;
use std::process::Command;

use crate::{bin, Proc};

/// The service's mesh name.
pub const HOST: &str = "reviews.default.svc.cluster.local";

/// `curl -s -m 5 URL`: the version of reviews that answered, or why not.
pub fn hit(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    if code.trim() != "200" {
        return format!("status {}", code.trim());
    }
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["version"].as_str().unwrap_or("?").to_string()
}

/// The versions that answered `n` requests, sorted and deduplicated.
pub fn versions(url: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|_| hit(url)).collect();
    v.sort();
    v.dedup();
    v
}

/// `trellis-echo` answering as reviews `version` on `ip:9080`.
pub fn echo(dir: &Path, ip: &str, version: &str) -> anyhow::Result<Proc> {
    Proc::spawn(
        &format!("echo-{version}"),
        Command::new(bin("trellis-echo")).args([
            "--http",
            &format!("{ip}:9080"),
            "--name",
            "reviews",
            "--version",
            version,
        ]),
        &dir.join(format!("echo-{version}.log")),
    )
}

/// A client agent on `ip` with an explicit upstream to reviews.
pub fn client_agent(dir: &Path, ip: &str, token: &str) -> anyhow::Result<Proc> {
    let data = dir.join("client");
    let mut cmd = Command::new(bin("trellis-agent"));
    cmd.args(["--token", token, "--data-dir", &data.display().to_string()]);
    crate::agent_listeners(&mut cmd, ip);
    cmd.args([
        "--app-host",
        ip,
        "--access-log",
        "false",
        "--upstream",
        &format!("{ip}:19080={HOST}:9080"),
    ]);
    Proc::spawn("agent-client", &mut cmd, &dir.join("agent-client.log"))
}
