//! `trellis apply | get | delete | analyze | proxy-status`: the mesh's Istio
//! configuration and the agents it is pushed to, with kubectl's and
//! istioctl's habits (kind aliases, `-n`, `-A`, `-o yaml|json`).
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde::Serialize;
use trellis_api::annotations;
use trellis_api::config::{parse_documents, Spec};
use trellis_api::v1::{
    AnalyzeRequest, ApplyConfigRequest, ApplyConfigResponse, ConfigSource, DeleteConfigRequest,
    Empty, GetConfigRequest, ProxyStatus, ResourceRef,
};

use crate::client::{admin, status};
use crate::commands::Output;
use crate::validate::{check_sources, print_warnings};

/// Output of `trellis get`.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum GetOutput {
    #[default]
    Table,
    Yaml,
    Json,
}

/// The kind an operator typed: `VirtualService`, `virtualservice`,
/// `virtualservices`, `vs` or `virtualservices.networking.istio.io`.
pub fn resolve_kind(typed: &str) -> anyhow::Result<&'static str> {
    let t = typed.to_ascii_lowercase();
    let base = t.split('.').next().unwrap_or_default();
    for kind in Spec::KINDS {
        let names = Spec::names(kind);
        if base == names.singular || base == names.plural || names.short_names.contains(&base) {
            return Ok(kind);
        }
    }
    bail!(
        "unknown kind `{typed}`; known kinds: {} (or their plurals and short names such as vs, dr, se)",
        Spec::KINDS.join(", ")
    )
}

/// Reads `-f` arguments: files, directories (their `.yaml`, `.yml` and
/// `.json` files, sorted) and `-` for standard input.
pub fn read_sources(paths: &[PathBuf]) -> anyhow::Result<Vec<ConfigSource>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut yaml = String::new();
            std::io::stdin()
                .read_to_string(&mut yaml)
                .context("reading standard input")?;
            out.push(ConfigSource {
                name: "<stdin>".into(),
                yaml,
            });
        } else if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading directory {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{}: no .yaml, .yml or .json files in it", p.display());
            }
            for f in files {
                out.push(read_file(&f)?);
            }
        } else {
            out.push(read_file(p)?);
        }
    }
    Ok(out)
}

fn read_file(p: &Path) -> anyhow::Result<ConfigSource> {
    Ok(ConfigSource {
        name: p.display().to_string(),
        yaml: std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
    })
}

/// `kind.group/name`, as kubectl prints what it changed.
fn printed(r: &ResourceRef) -> String {
    let group = Spec::group_of(&r.kind).map(|g| g.as_str()).unwrap_or("");
    let ns = if r.namespace == "default" {
        String::new()
    } else {
        format!(" -n {}", r.namespace)
    };
    format!("{}.{group}/{}{ns}", r.kind.to_ascii_lowercase(), r.name)
}

fn print_results(r: &ApplyConfigResponse, dry_run: bool) {
    for x in &r.results {
        if let Some(res) = &x.resource {
            let dry = if dry_run { " (dry run)" } else { "" };
            println!("{} {}{dry}", printed(res), x.action);
        }
    }
}

/// `trellis apply -f`: checked here first (see [`crate::validate`]), so a
/// bad file is refused with every problem, and warnings are printed,
/// before the control plane is asked.
pub async fn apply(config: Option<&Path>, files: &[PathBuf], dry_run: bool) -> anyhow::Result<()> {
    let sources = read_sources(files)?;
    let checks = check_sources(&sources);
    print_warnings(&checks);
    if !checks.errors.is_empty() {
        bail!("{}", checks.errors.join("\n"));
    }
    let mut c = admin(config).await?;
    let r = c
        .apply_config(ApplyConfigRequest { sources, dry_run })
        .await
        .map_err(status)?
        .into_inner();
    print_results(&r, dry_run);
    Ok(())
}

/// `trellis delete KIND NAME` or `trellis delete -f`.
pub async fn delete(
    config: Option<&Path>,
    kind: Option<String>,
    names: Vec<String>,
    namespace: &str,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let mut resources = Vec::new();
    if !files.is_empty() {
        for s in read_sources(files)? {
            let rs = parse_documents(&s.yaml).map_err(|e| anyhow::anyhow!("{}: {e}", s.name))?;
            resources.extend(rs.iter().map(|r| ResourceRef {
                kind: r.kind().to_string(),
                namespace: r.metadata.namespace.clone(),
                name: r.metadata.name.clone(),
            }));
        }
    } else {
        let Some(kind) = kind else {
            bail!("give KIND NAME..., or -f FILE");
        };
        let kind = resolve_kind(&kind)?;
        if names.is_empty() {
            bail!("give the name of the {kind} to delete");
        }
        resources.extend(names.into_iter().map(|name| ResourceRef {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name,
        }));
    }
    let mut c = admin(config).await?;
    let r = c
        .delete_config(DeleteConfigRequest { resources })
        .await
        .map_err(status)?
        .into_inner();
    print_results(&r, false);
    Ok(())
}

/// `trellis get KIND [NAME]`.
pub async fn get(
    config: Option<&Path>,
    kind: &str,
    name: Option<String>,
    namespace: Option<&str>,
    output: GetOutput,
) -> anyhow::Result<()> {
    let kind = if kind == "all" {
        ""
    } else {
        resolve_kind(kind)?
    };
    let mut c = admin(config).await?;
    let r = c
        .get_config(GetConfigRequest {
            kind: kind.to_string(),
            namespace: namespace.unwrap_or_default().to_string(),
            name: name.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let docs: Vec<serde_json::Value> = r
        .resources
        .iter()
        .map(|j| serde_json::from_str(j))
        .collect::<Result<_, _>>()
        .context("the control plane sent a resource that is not JSON")?;
    match output {
        GetOutput::Json => {
            let out = if docs.len() == 1 {
                docs[0].clone()
            } else {
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs})
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        GetOutput::Yaml => {
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", trellis_api::yaml::to_string(d)?);
            }
        }
        GetOutput::Table => {
            if docs.is_empty() {
                eprintln!("No resources found.");
                return Ok(());
            }
            println!(
                "{:<11} {:<24} {:<20} {:<20} DETAIL",
                "NAMESPACE", "NAME", "KIND", "SOURCE"
            );
            for d in &docs {
                let m = &d["metadata"];
                println!(
                    "{:<11} {:<24} {:<20} {:<20} {}",
                    m["namespace"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or(""),
                    d["kind"].as_str().unwrap_or(""),
                    source(d),
                    detail(d)
                );
            }
        }
    }
    Ok(())
}

/// Where a resource comes from: `trellis` (`trellis apply`), `registered`
/// (a workload that registered itself) or `kubernetes/CLUSTER`; a copy
/// another one shadows says so.
fn source(d: &serde_json::Value) -> String {
    let a = &d["metadata"]["annotations"];
    let source = match a[annotations::SOURCE].as_str() {
        Some(s) => s,
        None if a[annotations::WORKLOAD_GROUP].is_string() => "registered",
        None => "trellis",
    };
    match a[annotations::SHADOWED_BY].as_str() {
        Some(by) => format!("{source} (shadowed by {by})"),
        None => source.to_string(),
    }
}

/// A short summary for the table: hosts, address and health, ...
fn detail(d: &serde_json::Value) -> String {
    let spec = &d["spec"];
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match d["kind"].as_str().unwrap_or("") {
        "VirtualService" | "ServiceEntry" => format!("hosts={}", list(&spec["hosts"])),
        "DestinationRule" => format!("host={}", spec["host"].as_str().unwrap_or("")),
        "WorkloadEntry" => {
            let health = d["metadata"]["annotations"][trellis_api::annotations::HEALTH].as_str();
            match health {
                Some(h) => format!(
                    "address={} registered health={h}",
                    spec["address"].as_str().unwrap_or("")
                ),
                None => format!("address={}", spec["address"].as_str().unwrap_or("")),
            }
        }
        _ => String::new(),
    }
}

/// `trellis analyze [-f FILE]`: exits non-zero when it finds an error.
pub async fn analyze(
    config: Option<&Path>,
    files: &[PathBuf],
    output: Output,
) -> anyhow::Result<()> {
    let sources = read_sources(files)?;
    let mut c = admin(config).await?;
    let r = c
        .analyze(AnalyzeRequest { sources })
        .await
        .map_err(status)?
        .into_inner();
    #[derive(Serialize)]
    struct Row<'a> {
        level: &'a str,
        code: &'a str,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
        field: &'a str,
        message: &'a str,
    }
    let rows: Vec<Row> = r
        .messages
        .iter()
        .map(|m| {
            let res = m.resource.as_ref();
            Row {
                level: &m.level,
                code: &m.code,
                kind: res.map_or("", |r| &r.kind),
                namespace: res.map_or("", |r| &r.namespace),
                name: res.map_or("", |r| &r.name),
                field: &m.field,
                message: &m.message,
            }
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            if rows.is_empty() {
                println!("No validation issues found.");
            }
            for r in &rows {
                println!(
                    "{} [{}] ({} {}/{}) {}: {}",
                    r.level, r.code, r.kind, r.namespace, r.name, r.field, r.message
                );
            }
        }
    }
    let errors = rows.iter().filter(|r| r.level == "Error").count();
    if errors > 0 {
        bail!("{errors} error(s) found");
    }
    Ok(())
}

/// `SYNCED`, `STALE` (an answer is pending) or `NACKED` (the last answer
/// was a refusal).
pub fn sync_status(p: &ProxyStatus) -> &'static str {
    if p.nack_version != 0 && p.nack_version >= p.acked_version {
        "NACKED"
    } else if p.acked_version == p.sent_version {
        "SYNCED"
    } else {
        "STALE"
    }
}

/// `trellis proxy-status`.
pub async fn proxy_status(config: Option<&Path>, output: Output) -> anyhow::Result<()> {
    let mut c = admin(config).await?;
    let r = c.proxy_status(Empty {}).await.map_err(status)?.into_inner();
    #[derive(Serialize)]
    struct Row {
        proxy: String,
        identity: String,
        node: u64,
        address: String,
        sent: u64,
        acked: u64,
        status: &'static str,
        last_nack: Option<String>,
    }
    let rows: Vec<Row> = r
        .proxies
        .into_iter()
        .map(|p| Row {
            status: sync_status(&p),
            last_nack: (p.nack_version != 0)
                .then(|| format!("v{}: {}", p.nack_version, p.nack_error)),
            proxy: p.proxy,
            identity: p.identity,
            node: p.node_id,
            address: p.address,
            sent: p.sent_version,
            acked: p.acked_version,
        })
        .collect();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            // Columns as wide as their longest value: names run long.
            let name = rows.iter().map(|r| r.proxy.len()).fold(4, usize::max);
            let addr = rows.iter().map(|r| r.address.len()).fold(7, usize::max);
            println!(
                "{:<name$} {:<5} {:<addr$} {:<8} {:<8} {:<7} LAST NACK",
                "NAME", "NODE", "ADDRESS", "SENT", "ACKED", "STATUS"
            );
            for r in &rows {
                println!(
                    "{:<name$} {:<5} {:<addr$} {:<8} {:<8} {:<7} {}",
                    r.proxy,
                    r.node,
                    r.address,
                    r.sent,
                    r.acked,
                    r.status,
                    r.last_nack.as_deref().unwrap_or("-")
                );
            }
        }
    }
    if !r.unreachable_nodes.is_empty() {
        eprintln!(
            "warning: control-plane nodes {:?} did not answer; their agents are not listed",
            r.unreachable_nodes
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_aliases() {
        for (typed, want) in [
            ("VirtualService", "VirtualService"),
            ("virtualservices", "VirtualService"),
            ("vs", "VirtualService"),
            ("virtualservices.networking.istio.io", "VirtualService"),
            ("DR", "DestinationRule"),
            ("serviceentry", "ServiceEntry"),
            ("peerauthentications", "PeerAuthentication"),
            ("workloadentries", "WorkloadEntry"),
            ("authorizationpolicies", "AuthorizationPolicy"),
            ("sidecars", "Sidecar"),
            ("gateways", "Gateway"),
            ("gw", "Gateway"),
        ] {
            assert_eq!(resolve_kind(typed).unwrap(), want, "{typed}");
        }
        let err = resolve_kind("pods").unwrap_err().to_string();
        assert!(err.contains("unknown kind `pods`"), "{err}");
    }

    #[test]
    fn printed_like_kubectl() {
        let r = ResourceRef {
            kind: "VirtualService".into(),
            namespace: "prod".into(),
            name: "reviews".into(),
        };
        assert_eq!(
            printed(&r),
            "virtualservice.networking.istio.io/reviews -n prod"
        );
    }
}
