//! The Helm chart `installer/charts/trellis`: linted and rendered by Helm's
//! own engine (PyPI's `helm-python-sdk`, Helm v4 as a library: this
//! machine has no `helm` binary), its values checked by
//! `values.schema.json`, and what it renders created on a real
//! `kube-apiserver` v1.20 (e2e/src/kube.rs). There is no kubelet: nothing
//! the chart runs starts here, but every object is created, the RBAC is
//! the API server's, and the webhooks are called by the API server.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_e2e::third_party::{python, python_has};
use trellis_e2e::{bin, wait_for_blocking};

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

/// The values of `helm install ... --set cluster.name=east --set
/// cluster.network=net-east --set-file join.token=token.txt ...`.
fn values() -> Value {
    json!({
        "cluster": {"name": "east", "network": "net-east"},
        "join": {"token": "cluster-token\n", "gatewayToken": "gateway-token"},
        "eastwestGateway": {"advertise": ["192.0.2.10:15443"]},
    })
}

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../installer/charts/trellis")
}

/// What the chart renders with `values`, in `dir`.
struct Rendered {
    /// The templates' objects.
    objects: Vec<Value>,
    templates: PathBuf,
    crds: PathBuf,
    notes: String,
}

/// Renders the chart; `Err` with Helm's message if the values are refused.
fn render(dir: &Path, values: &Value) -> anyhow::Result<Result<Rendered, String>> {
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

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn helm_available() -> bool {
    python_has(&["helm_python"])
}

#[test]
fn helm_lints_and_renders_the_chart_with_the_binaries_real_flags() -> anyhow::Result<()> {
    if !helm_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let r = render(dir.path(), &values())?.map_err(anyhow::Error::msg)?;
    let node = object(&r.objects, "StatefulSet", "trellis-controlplane");
    let container = &node["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    // The chart's appVersion is the workspace's version.
    let agent_image = format!(
        "--agent-image=trellis/trellis-agent:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        args,
        [
            "join",
            "--learner",
            "--cluster=east",
            "--kubernetes=in-cluster",
            "--data-dir=/var/lib/trellis/controlplane",
            "--listen=0.0.0.0:15012",
            agent_image.as_str(),
            "--advertise=$(POD_IP):15012",
        ]
    );
    assert_flags_exist(&["trellis-controlplane", "join"], &args)?;
    // The token comes from the Secret, trimmed of --set-file's newline.
    assert_eq!(container["env"][1]["name"], "TRELLIS_TOKEN");
    let secret = object(&r.objects, "Secret", "trellis-join");
    assert_eq!(secret["stringData"]["token"], "cluster-token");
    let gateway = object(&r.objects, "Service", "trellis-eastwest");
    assert_eq!(gateway["spec"]["type"], "LoadBalancer");
    assert_eq!(
        gateway["metadata"]["labels"]["topology.istio.io/network"],
        "net-east"
    );
    let gateway = object(&r.objects, "Deployment", "trellis-eastwest");
    let args: Vec<&str> = gateway["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--advertise=192.0.2.10:15443"), "{args:?}");
    assert_flags_exist(&["trellis-eastwest"], &args)?;
    for (kind, name, path) in [
        (
            "MutatingWebhookConfiguration",
            "trellis-sidecar-injector",
            "/inject",
        ),
        (
            "ValidatingWebhookConfiguration",
            "trellis-validator",
            "/validate",
        ),
    ] {
        let hook = &object(&r.objects, kind, name)["webhooks"][0];
        let service = &hook["clientConfig"]["service"];
        assert_eq!(service["name"], "trellis-controlplane", "{kind}");
        assert_eq!(service["port"], 15017, "{kind}");
        assert_eq!(service["path"], path, "{kind}");
        // The control plane patches it in at run time.
        assert_eq!(hook["clientConfig"].get("caBundle"), None, "{kind}");
    }
    // A voter mounts the CA key the Secret must then hold.
    let mut voter = values();
    voter["controlplane"] = json!({"role": "voter"});
    let r = render(dir.path(), &voter)?.map_err(anyhow::Error::msg)?;
    let node = object(&r.objects, "StatefulSet", "trellis-controlplane");
    let args = &node["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args[1], "--voter");
    assert!(args
        .as_array()
        .unwrap()
        .contains(&json!("--ca-key-file=/etc/trellis/ca-key/ca-key")));
    assert!(r.notes.contains("a voter"), "{}", r.notes);
    Ok(())
}

/// Every `--flag` of `args` is one `command --help` lists.
fn assert_flags_exist(command: &[&str], args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(bin(command[0]))
        .args(&command[1..])
        .arg("--help")
        .output()?;
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in args.iter().filter_map(|a| a.strip_prefix("--")) {
        let name = format!("--{}", flag.split('=').next().unwrap());
        let listed = help.match_indices(&name).any(|(i, _)| {
            !help[i + name.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '-')
        });
        assert!(listed, "`{}` has no {name}: {help}", command.join(" "));
    }
    Ok(())
}

#[test]
fn values_schema_refuses_a_missing_required_value_naming_it() -> anyhow::Result<()> {
    if !helm_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let without = |pointer: &str| {
        let mut v = values();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        v
    };
    for (values, refused_at) in [
        (without("/cluster/network"), "/cluster/network"),
        (without("/cluster/name"), "/cluster/name"),
        (without("/join/token"), "/join/token"),
        (without("/join/gatewayToken"), "/join/gatewayToken"),
    ] {
        let Err(message) = render(dir.path(), &values)? else {
            panic!("rendered without {refused_at}: {values}");
        };
        assert!(message.contains(refused_at), "{refused_at}: {message}");
    }
    // A misspelt value is refused too, not ignored.
    let mut misspelt = values();
    misspelt["clustr"] = json!({"name": "west"});
    let Err(message) = render(dir.path(), &misspelt)? else {
        panic!("rendered with `clustr`");
    };
    assert!(message.contains("clustr"), "{message}");
    // A Secret made beforehand stands in for both tokens.
    let mut v = without("/join/token");
    v["join"] = json!({"existingSecret": "my-tokens"});
    let r = render(dir.path(), &v)?.map_err(anyhow::Error::msg)?;
    assert!(!r.objects.iter().any(|o| o["kind"] == "Secret"));
    let node = object(&r.objects, "StatefulSet", "trellis-controlplane");
    let env = &node["spec"]["template"]["spec"]["containers"][0]["env"][1];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "my-tokens");
    Ok(())
}

/// The API server, the namespace the chart is installed in, and the
/// rendered chart.
fn installed_cluster(name: &str, dir: &Path) -> anyhow::Result<Option<(KubeCluster, Rendered)>> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(None);
    }
    if !helm_available() {
        return Ok(None);
    }
    let rendered = render(dir, &values())?.map_err(anyhow::Error::msg)?;
    let cluster = KubeCluster::start(name, Options::default())?;
    cluster.kubectl(&["create", "namespace", "trellis-system"])?;
    Ok(Some((cluster, rendered)))
}

#[test]
fn the_rendered_chart_is_created_on_a_real_api_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((cluster, r)) = installed_cluster("chart", dir.path())? else {
        return Ok(());
    };
    // As `helm install` does: the CRDs first, then the templates.
    cluster.kubectl(&["create", "-f", r.crds.to_str().unwrap()])?;
    wait_established(&cluster)?;
    let templates = r.templates.to_str().unwrap();
    cluster.kubectl(&["apply", "--dry-run=server", "-f", templates])?;
    // The dry run created nothing.
    assert!(cluster
        .kubectl(&["get", "-f", templates, "-o", "name"])
        .is_err());
    cluster.kubectl(&["apply", "-f", templates])?;
    let created = cluster.kubectl(&["get", "-f", templates, "-o", "name"])?;
    assert_eq!(created.lines().count(), r.objects.len(), "{created}");
    for o in &r.objects {
        let kind = o["kind"].as_str().unwrap().to_ascii_lowercase();
        let name = o["metadata"]["name"].as_str().unwrap();
        // `kind/name`, or `kind.group/name`.
        let (k, n) = (format!("{kind}/"), format!("{kind}."));
        assert!(
            created
                .lines()
                .any(|l| (l.starts_with(&k) || l.starts_with(&n))
                    && l.ends_with(&format!("/{name}"))),
            "{kind}/{name} not created: {created}"
        );
    }

    // Least privilege, as the API server's RBAC decides it.
    let sa = "system:serviceaccount:trellis-system:trellis-controlplane";
    let can = |verb: &str, what: &str| -> anyhow::Result<bool> {
        // `can-i` exits 1 for "no".
        Ok(cluster
            .kubectl(&["auth", "can-i", verb, what, "--as", sa, "-A"])
            .is_ok())
    };
    for (verb, what, allowed) in [
        ("watch", "services", true),
        ("list", "endpointslices.discovery.k8s.io", true),
        ("watch", "pods", true),
        ("list", "nodes", true),
        ("create", "tokenreviews.authentication.k8s.io", true),
        ("get", "/.well-known/openid-configuration", true),
        (
            "patch",
            "validatingwebhookconfigurations/trellis-validator",
            true,
        ),
        (
            "patch",
            "mutatingwebhookconfigurations/trellis-sidecar-injector",
            true,
        ),
        ("list", "virtualservices.networking.istio.io", true),
        (
            "patch",
            "validatingwebhookconfigurations/someone-elses",
            false,
        ),
        ("create", "pods", false),
        ("update", "services", false),
        ("get", "secrets", false),
        ("delete", "customresourcedefinitions", false),
    ] {
        assert_eq!(can(verb, what)?, allowed, "{verb} {what}");
    }

    // The webhooks are in force and the control plane is not running (no
    // kubelet), so failurePolicy Fail refuses what they cover, saying
    // which webhook could not be called; pods they do not select pass.
    let pod = |ns: &str, name: &str, inject: Option<&str>| {
        let labels = inject.map_or(json!({}), |v| json!({"sidecar.istio.io/inject": v}));
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            // No token to mount: no controller makes one here.
            "spec": {"automountServiceAccountToken": false, "containers": [{"name": "app", "image": "app"}]},
        })
        .to_string()
    };
    for ns in ["injected", "plain"] {
        cluster.kubectl(&["create", "namespace", ns])?;
        // What kube-controller-manager would make, which does not run here.
        cluster.kubectl(&["create", "serviceaccount", "default", "-n", ns])?;
    }
    cluster.kubectl(&["label", "namespace", "injected", "istio-injection=enabled"])?;
    let create = |manifest: String| cluster.kubectl_stdin(&["create", "-f", "-"], Some(&manifest));
    let err = create(pod("injected", "app", None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"failed calling webhook "sidecar-injector.trellis.io""#),
        "{err}"
    );
    create(pod("injected", "opted-out", Some("false")))?;
    create(pod("plain", "app", None))?;

    let err = cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(REVIEWS))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"failed calling webhook "validation.trellis.io""#),
        "{err}"
    );
    Ok(())
}

/// A weighted split of bookinfo's reviews, and its subsets.
const REVIEWS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 75
    - destination: {host: reviews, subset: v3}
      weight: 25
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v3
    labels: {version: v3}
"#;

/// Waits until the API server serves every CRD of the chart (`kubectl
/// wait` fails on a CRD whose status is not written yet).
fn wait_established(cluster: &KubeCluster) -> anyhow::Result<()> {
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

#[test]
fn istio_resources_apply_and_read_back_once_the_charts_crds_are_in() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((cluster, r)) = installed_cluster("crds", dir.path())? else {
        return Ok(());
    };
    // As `helm install` does with crds/: created, before the templates.
    cluster.kubectl(&["create", "-f", r.crds.to_str().unwrap()])?;
    wait_established(&cluster)?;
    let names = cluster.kubectl(&[
        "get",
        "crd",
        "-o",
        "name",
        "-l",
        "app.kubernetes.io/part-of=trellis",
    ])?;
    assert_eq!(
        names.lines().count(),
        trellis_api::config::Spec::KINDS.len(),
        "{names}"
    );

    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(REVIEWS))?;
    let written: Vec<Value> = trellis_api::yaml::documents(REVIEWS)
        .into_iter()
        .map(|d| d.value.unwrap())
        .collect();
    // By short name, and at each version Istio serves: one schema.
    for (what, written) in [
        ("vs/reviews", &written[0]),
        (
            "virtualservices.v1beta1.networking.istio.io/reviews",
            &written[0],
        ),
        (
            "virtualservices.v1alpha3.networking.istio.io/reviews",
            &written[0],
        ),
        ("dr/reviews", &written[1]),
    ] {
        let read: Value = serde_json::from_str(&cluster.kubectl(&["get", what, "-o", "json"])?)?;
        assert_eq!(read["spec"], written["spec"], "{what}");
    }
    // What kubectl reads back is mesh configuration as `trellis apply`
    // reads it.
    let yaml = cluster.kubectl(&["get", "vs/reviews", "dr/reviews", "-o", "yaml"])?;
    let list: Value = trellis_api::yaml::from_str(&yaml)?;
    let items: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| trellis_api::yaml::to_string(i).unwrap())
        .collect();
    let resources = trellis_api::config::parse_documents(&items.join("---\n"))?;
    assert_eq!(resources.len(), 2);

    // The structural schema refuses a wrong type, naming the field (a
    // v1.20 API server leaves the list indexes out of the path of a
    // schema that keeps unknown fields, as the CRDs' does).
    let bad = REVIEWS
        .split("---")
        .next()
        .unwrap()
        .replace("weight: 25", "weight: most");
    let err = cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.http.route.weight in body must be of type integer"),
        "{err}"
    );
    Ok(())
}
