//! Real-world Istio YAML through a real control plane: `trellis apply` of
//! the corpus in `api/tests/fixtures/real-world/` stores every resource,
//! prints the warnings (fields Trellis accepts and does not act on, what
//! Istio warns about) as kubectl prints an admission webhook's, and
//! `trellis analyze` reports them with the resource and the field.
use std::path::PathBuf;

use trellis_e2e::Cluster;

fn corpus() -> String {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../api/tests/fixtures/real-world")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_world_istio_yaml_applies_with_its_warnings() -> anyhow::Result<()> {
    let c = Cluster::start(1, &[]).await?;
    let out = c.cli_raw(&["apply", "-f", &corpus()])?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for applied in [
        "virtualservice.networking.istio.io/reviews created",
        "serviceentry.networking.istio.io/legacy-db -n data created",
        "authorizationpolicy.security.istio.io/frontend -n shop created",
    ] {
        assert!(stdout.contains(applied), "{applied}\n{stdout}");
    }
    assert!(
        stderr.lines().any(|l| l.starts_with("Warning: ")
            && l.ends_with("spec.trafficPolicy.connectionPool.http.http2KeepAlive: accepted, not acted on: Trellis does not use this field yet")),
        "{stderr}"
    );
    // The unquoted IPv6 literal in a flow list was read as Istio reads it.
    let stored = c.cli(&["get", "se", "legacy-db", "-n", "data", "-o", "json"])?;
    assert!(stored.contains("\"2001:db8::\""), "{stored}");
    // analyze finds the same warnings, by resource and field (it may also
    // find errors: the corpus names hosts no ServiceEntry has).
    let out = c.cli_raw(&["analyze", "-f", &corpus(), "-o", "json"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    assert!(
        rows.iter().any(|r| r["code"] == "FieldNotActedOn"
            && r["kind"] == "DestinationRule"
            && r["name"] == "httpbin"
            && r["field"] == "spec.trafficPolicy.connectionPool.http.http2KeepAlive"),
        "{rows:#?}"
    );
    Ok(())
}
