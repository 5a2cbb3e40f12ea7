//! The admission webhooks of a control-plane node started with
//! `--kubernetes`, called by a real `kube-apiserver` v1.20 over TLS
//! ([`trellis_e2e::kube_webhook::WebhookBed`]): the webhook configurations
//! are created without a caBundle, as the chart creates them, and the node
//! writes the mesh root in. There is no kubelet: pods are only stored,
//! which is what injection changes.
//!
//! The Istio CRDs there are the generated ones the chart installs: their
//! schemas keep unknown fields, so that a misspelt field reaches the
//! webhook (instead of being pruned silently) and is refused by its path.
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::kube::unavailable;
use trellis_e2e::kube_webhook::WebhookBed;
use trellis_e2e::wait_for;

const WAIT: Duration = Duration::from_secs(30);

/// A bed, unless this machine cannot run an API server.
async fn bed(name: &str) -> anyhow::Result<Option<WebhookBed>> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(None);
    }
    Ok(Some(WebhookBed::start(name, &[]).await?))
}

/// Creates the pod `pod` (JSON) describes, retrying while the API server
/// has not yet seen the patched caBundle, and returns it as stored.
async fn create_pod(f: &WebhookBed, pod: Value) -> anyhow::Result<Value> {
    let text = pod.to_string();
    let mut last = String::new();
    let created = wait_for(WAIT, "the API server to create the pod", || {
        let r = f
            .kube
            .kubectl_stdin(&["create", "-o", "json", "-f", "-"], Some(&text));
        let ok = match r {
            Ok(out) => serde_json::from_str::<Value>(&out).ok(),
            Err(e) => {
                last = format!("{e:#}");
                None
            }
        };
        async move { ok }
    })
    .await;
    created.map_err(|e| anyhow::anyhow!("{e:#}; last error: {last}"))
}

fn pod(namespace: &str, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "app:1"}]
        }
    })
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_writes_the_mesh_root_into_both_webhook_configurations() -> anyhow::Result<()> {
    let Some(f) = bed("wh-ca").await? else {
        return Ok(());
    };
    f.patched().await?;
    // And serves the webhooks with a certificate from that root; a body
    // that is not a review, or is too large, is answered 400 with the
    // reason.
    let root = f.node.root.path().join("root.pem");
    std::fs::write(&root, f.root()?)?;
    let post = |body: &std::path::Path| -> anyhow::Result<String> {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&root)
            .args([
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/json",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("https://127.0.0.1:{}/validate", f.port))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        anyhow::ensure!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    };
    let malformed = f.node.root.path().join("malformed.json");
    std::fs::write(&malformed, "{\"apiVersion\": \"admission.k8s.io/v1\", ")?;
    let text = post(&malformed)?;
    assert!(text.ends_with("\n400"), "{text}");
    assert!(
        text.starts_with("not an admission.k8s.io/v1 AdmissionReview"),
        "{text}"
    );
    let large = f.node.root.path().join("large.json");
    std::fs::write(
        &large,
        " ".repeat(trellis_kubernetes::webhook::MAX_REVIEW_BYTES + 1),
    )?;
    let text = post(&large)?;
    assert!(text.ends_with("\n400"), "{text}");
    assert!(text.starts_with("the review is larger than"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_a_labelled_namespace_gets_capture_and_the_agent() -> anyhow::Result<()> {
    let Some(f) = bed("wh-inject").await? else {
        return Ok(());
    };
    f.patched().await?;
    f.namespace("shop", true)?;
    let stored = create_pod(&f, pod("shop", "app")).await?;
    // v1.20 has no native sidecars: the agent is a regular container.
    assert_eq!(names(&stored, "initContainers"), ["trellis-capture"]);
    assert_eq!(names(&stored, "containers"), ["app", "trellis-agent"]);
    let init = &stored["spec"]["initContainers"][0];
    assert_eq!(
        init["image"],
        format!("trellis/trellis-agent:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(init["args"], serde_json::json!(["--install-capture"]));
    let token = &stored["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "trellis-ca", "{stored}");
    let env = &stored["spec"]["containers"][1]["env"];
    let control_plane = env
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "TRELLIS_CONTROL_PLANE")
        .map(|e| e["value"].clone());
    let port = f.node.node(1).addr.rsplit_once(':').unwrap().1.to_string();
    assert_eq!(
        control_plane,
        Some(format!("trellis-controlplane.default.svc:{port}").into()),
        "{env}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_not_to_inject_are_stored_as_given() -> anyhow::Result<()> {
    let Some(f) = bed("wh-skip").await? else {
        return Ok(());
    };
    f.patched().await?;
    f.namespace("shop", true)?;
    f.namespace("plain", false)?;
    // The webhook answers (so what follows is its decision, not an
    // outage): a pod in the labelled namespace is injected.
    let injected = create_pod(&f, pod("shop", "first")).await?;
    assert_eq!(names(&injected, "containers"), ["app", "trellis-agent"]);

    let plain = create_pod(&f, pod("plain", "app")).await?;
    assert_eq!(names(&plain, "containers"), ["app"]);
    assert!(names(&plain, "initContainers").is_empty(), "{plain}");

    let mut opted_out = pod("shop", "opted-out");
    opted_out["metadata"]["labels"] = serde_json::json!({"sidecar.istio.io/inject": "false"});
    let opted_out = create_pod(&f, opted_out).await?;
    assert_eq!(names(&opted_out, "containers"), ["app"]);
    assert!(names(&opted_out, "initContainers").is_empty());

    // A pod injected already (its spec as the webhook left it) is not
    // injected again.
    let mut again = injected.clone();
    again["metadata"] = serde_json::json!({"name": "again", "namespace": "shop"});
    again.as_object_mut().unwrap().remove("status");
    let again = create_pod(&f, again).await?;
    assert_eq!(again["spec"], injected["spec"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_an_invalid_virtual_service_is_refused_with_the_field_path(
) -> anyhow::Result<()> {
    let Some(f) = bed("wh-validate").await? else {
        return Ok(());
    };
    f.patched().await?;
    f.kube.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=30s",
        "crd/virtualservices.networking.istio.io",
    ])?;
    let vs = |weights: [u32; 2]| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {}
    - destination: {{host: reviews, subset: v2}}
      weight: {}
",
            weights[0], weights[1]
        )
    };
    let apply = trellis_api::config::parse_documents(&vs([50, 40])).unwrap_err();
    let expected = apply.documents[0].errors[0].to_string();
    let refused = wait_for(WAIT, "the webhook to refuse the VirtualService", || {
        let r = f
            .kube
            .kubectl_stdin(&["apply", "-f", "-"], Some(&vs([50, 40])));
        async move {
            match r {
                Err(e) if format!("{e:#}").contains("denied the request") => Some(format!("{e:#}")),
                _ => None,
            }
        }
    })
    .await?;
    assert!(
        refused.contains(&format!("VirtualService default/reviews: {expected}")),
        "{refused}"
    );
    assert!(refused.contains("spec.http[0].route"), "{refused}");
    let bad_field = vs([80, 20]).replace("  http:", "  htttp: []\n  http:");
    let Err(e) = f
        .kube
        .kubectl_stdin(&["apply", "-f", "-"], Some(&bad_field))
    else {
        panic!("a VirtualService with an unknown field was stored");
    };
    assert!(format!("{e:#}").contains("spec.htttp"), "{e:#}");
    // Deeper in the spec too: the CRD's schema keeps the misspelt field
    // for the webhook instead of pruning it.
    let nested = vs([80, 20]).replace(
        "      weight: 20",
        "      weight: 20
      wieght: 1",
    );
    let Err(e) = f.kube.kubectl_stdin(&["apply", "-f", "-"], Some(&nested)) else {
        panic!("a VirtualService with a misspelt nested field was stored");
    };
    assert!(
        format!("{e:#}").contains("spec.http[0].route[1].wieght: unknown field"),
        "{e:#}"
    );
    // A valid one is stored.
    f.kube
        .kubectl_stdin(&["apply", "-f", "-"], Some(&vs([80, 20])))?;
    let stored = f
        .kube
        .kubectl(&["get", "virtualservice", "reviews", "-o", "name"])?;
    assert_eq!(stored.trim(), "virtualservice.networking.istio.io/reviews");
    Ok(())
}
