//! The Helm chart `installer/charts/trellis` rendered by Helm's own engine
//! (PyPI's `helm-python-sdk`, Helm v4 as a library: this machine has no
//! `helm` binary), and installed on an API server as `helm install` would.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::kube::KubeCluster;
use crate::third_party::{python, python_has};
use crate::wait_for_blocking;

/// Lints, checks and renders the chart at `argv[1]` with the values (JSON)
/// `argv[2]`, as `helm install trellis -n trellis-system` would; writes
/// the templates to `argv[3]/templates.yaml` (NOTES.txt to `NOTES.txt`)
/// and the CRDs to `crds.yaml`; prints the lint messages that are
/// warnings or errors, as JSON. With the values refused it prints
/// `refused: MESSAGE` instead.
const RENDER_PY: &str = r#"
import json, os, sys
import helm_python as helm

chart_dir, values, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
chart = helm.Chart.load(chart_dir)
try:
    chart.validate_schema(values)
except helm.HelmValuesError as e:
    print(f"refused: {e}")
    sys.exit(0)
lint = helm.lint(chart_dir, values, strict=True, namespace="trellis-system", kube_version="v1.20.0")
rendered = chart.render(values, name="trellis", namespace="trellis-system", is_install=True)
templates = []
for path in sorted(rendered):
    if path.endswith("NOTES.txt"):
        open(os.path.join(out, "NOTES.txt"), "w").write(rendered[path])
    elif rendered[path].strip():
        templates.append(rendered[path])
open(os.path.join(out, "templates.yaml"), "w").write("\n---\n".join(templates))
open(os.path.join(out, "crds.yaml"), "w").write("\n---\n".join(c["data"] for c in chart.crds))
problems = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
print(json.dumps(problems))
"#;

/// Where the chart is.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../installer/charts/trellis")
}

/// What the chart renders with `values`, in `dir`.
pub struct Rendered {
    /// The templates' objects.
    pub objects: Vec<Value>,
    pub templates: PathBuf,
    pub crds: PathBuf,
    pub notes: String,
}

/// Renders the chart; `Err` with Helm's message if the values are refused.
pub fn render(dir: &Path, values: &Value) -> anyhow::Result<Result<Rendered, String>> {
    let chart = chart_dir();
    let printed = python(
        dir,
        "render.py",
        RENDER_PY,
        &[
            chart.to_str().unwrap(),
            &values.to_string(),
            dir.to_str().unwrap(),
        ],
    )?;
    if let Some(refused) = printed.strip_prefix("refused: ") {
        return Ok(Err(refused.to_string()));
    }
    let problems: Value = serde_json::from_str(&printed).context("render.py's output")?;
    anyhow::ensure!(problems == json!([]), "helm lint: {problems:#}");
    let templates = dir.join("templates.yaml");
    let objects = trellis_api::yaml::documents(&std::fs::read_to_string(&templates)?)
        .into_iter()
        .map(|d| d.value.map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Ok(Rendered {
        objects,
        templates,
        crds: dir.join("crds.yaml"),
        notes: std::fs::read_to_string(dir.join("NOTES.txt"))?,
    }))
}

/// Whether Helm's engine is installed (the tests that need it skip
/// without).
pub fn available() -> bool {
    python_has(&["helm_python"])
}

/// Installs what the chart rendered in `r` on `cluster`, as `helm install
/// -n trellis-system` does: the namespace, the CRDs (once the API server
/// serves them), then the templates.
pub fn install(cluster: &KubeCluster, r: &Rendered) -> anyhow::Result<()> {
    cluster.kubectl(&["create", "namespace", "trellis-system"])?;
    cluster.kubectl(&["create", "-f", r.crds.to_str().unwrap()])?;
    wait_established(cluster)?;
    cluster.kubectl(&["apply", "-f", r.templates.to_str().unwrap()])?;
    Ok(())
}

/// Waits until the API server serves every CRD of the chart (`kubectl
/// wait` fails on a CRD whose status is not written yet).
pub fn wait_established(cluster: &KubeCluster) -> anyhow::Result<()> {
    let established =
        r#"{range .items[*]}{.status.conditions[?(@.type=="Established")].status}{"\n"}{end}"#;
    let kinds = trellis_api::config::Spec::KINDS.len();
    wait_for_blocking(Duration::from_secs(30), "the CRDs established", || {
        let out = cluster
            .kubectl(&[
                "get",
                "crd",
                "-l",
                "app.kubernetes.io/part-of=trellis",
                "-o",
                &format!("jsonpath={established}"),
            ])
            .ok()?;
        (out.lines().filter(|l| *l == "True").count() == kinds).then_some(())
    })?;
    Ok(())
}
