//! The admission webhooks of a control-plane node started with
//! `--kubernetes`, called by a real `kube-apiserver` v1.20 over TLS
//! (e2e/src/kube.rs): the webhook configurations are created without a
//! caBundle, as the chart creates them, and the node writes the mesh root
//! in. There is no kubelet: pods are only stored, which is what injection
//! changes.
//!
//! The VirtualService CRD here is a minimal one (any spec, no schema):
//! what the API server stores is then exactly what the webhook checks.
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_e2e::{free_port, wait_for, Cluster};
use trellis_identity::admin_config::AdminConfig;

const WAIT: Duration = Duration::from_secs(30);

/// An API server and a node serving its webhooks on 127.0.0.1:`port`,
/// the webhook configurations pointing there.
struct Fixture {
    kube: KubeCluster,
    node: Cluster,
    port: u16,
}

impl Fixture {
    async fn start(name: &str) -> anyhow::Result<Option<Fixture>> {
        if let Some(why) = unavailable() {
            eprintln!("skipping: {why}");
            return Ok(None);
        }
        let kube = KubeCluster::start(name, Options::default())?;
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let kubeconfig = kube.kubeconfig.display().to_string();
        kube.kubectl_stdin(&["apply", "-f", "-"], Some(&configurations(port)))?;
        let node =
            Cluster::init(&["--kubernetes", &kubeconfig, "--webhook-listen", &listen]).await?;
        Ok(Some(Fixture { kube, node, port }))
    }

    /// The mesh root, PEM.
    fn root(&self) -> anyhow::Result<String> {
        Ok(AdminConfig::load(&self.node.admin_config())?.trust_bundle)
    }

    /// Waits until both configurations trust the mesh root.
    async fn patched(&self) -> anyhow::Result<()> {
        let root = base64::engine::general_purpose::STANDARD.encode(self.root()?);
        wait_for(
            WAIT,
            "the caBundle of both webhook configurations",
            || async {
                let all = [
                    "mutatingwebhookconfiguration/trellis-sidecar-injector",
                    "validatingwebhookconfiguration/trellis-validator",
                ];
                all.iter()
                    .all(|c| self.ca_bundles(c).is_ok_and(|b| b == [root.as_str()]))
                    .then_some(())
            },
        )
        .await
    }

    fn ca_bundles(&self, config: &str) -> anyhow::Result<Vec<String>> {
        let out = self.kube.kubectl(&["get", config, "-o", "json"])?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                w["clientConfig"]["caBundle"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect())
    }

    /// A namespace with a ServiceAccount `default` (there is no
    /// controller manager to make it), labelled for injection or not.
    fn namespace(&self, name: &str, injected: bool) -> anyhow::Result<()> {
        let labels = if injected {
            "{istio-injection: enabled}"
        } else {
            "{}"
        };
        self.kube.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n---\n\
                 apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {name}}}\n"
            )),
        )?;
        Ok(())
    }

    /// Creates the pod `spec` (JSON) describes, retrying while the API
    /// server has not yet seen the patched caBundle, and returns it as
    /// stored.
    async fn create_pod(&self, pod: Value) -> anyhow::Result<Value> {
        let text = pod.to_string();
        let mut last = String::new();
        let created = wait_for(WAIT, "the API server to create the pod", || {
            let r = self
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
}

/// The two configurations as the chart makes them, but calling
/// 127.0.0.1:`port` by URL (there is no Service to a pod here).
fn configurations(port: u16) -> String {
    format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: trellis-sidecar-injector}}
webhooks:
- name: inject.trellis.io
  clientConfig: {{url: 'https://127.0.0.1:{port}/inject'}}
  rules: [{{operations: [CREATE], apiGroups: [''], apiVersions: [v1], resources: [pods]}}]
  namespaceSelector: {{matchLabels: {{istio-injection: enabled}}}}
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: trellis-validator}}
webhooks:
- name: validate.trellis.io
  clientConfig: {{url: 'https://127.0.0.1:{port}/validate'}}
  rules: [{{operations: [CREATE, UPDATE], apiGroups: [networking.istio.io, security.istio.io], apiVersions: ['*'], resources: ['*']}}]
  sideEffects: None
  admissionReviewVersions: [v1]
  failurePolicy: Fail
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: virtualservices.networking.istio.io}}
spec:
  group: networking.istio.io
  names: {{kind: VirtualService, listKind: VirtualServiceList, plural: virtualservices, singular: virtualservice}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"
    )
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
    let Some(f) = Fixture::start("wh-ca").await? else {
        return Ok(());
    };
    f.patched().await?;
    // And serves the webhooks with a certificate from that root; a body
    // that is not a review is answered 400 with the reason.
    let root = f.node.root.path().join("root.pem");
    std::fs::write(&root, f.root()?)?;
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&root)
        .args([
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
        ])
        .args([
            "--data-binary",
            "{\"apiVersion\": \"admission.k8s.io/v1\", ",
        ])
        .arg(format!("https://127.0.0.1:{}/validate", f.port))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("\n400"), "{text}");
    assert!(
        text.starts_with("not an admission.k8s.io/v1 AdmissionReview"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_a_labelled_namespace_gets_capture_and_the_agent() -> anyhow::Result<()> {
    let Some(f) = Fixture::start("wh-inject").await? else {
        return Ok(());
    };
    f.patched().await?;
    f.namespace("shop", true)?;
    let stored = f.create_pod(pod("shop", "app")).await?;
    // v1.20 has no native sidecars: the agent is a regular container.
    assert_eq!(names(&stored, "initContainers"), ["trellis-capture"]);
    assert_eq!(names(&stored, "containers"), ["app", "trellis-agent"]);
    let init = &stored["spec"]["initContainers"][0];
    assert_eq!(
        init["image"],
        format!("trellis/agent:{}", env!("CARGO_PKG_VERSION"))
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
    let Some(f) = Fixture::start("wh-skip").await? else {
        return Ok(());
    };
    f.patched().await?;
    f.namespace("shop", true)?;
    f.namespace("plain", false)?;
    // The webhook answers (so what follows is its decision, not an
    // outage): a pod in the labelled namespace is injected.
    let injected = f.create_pod(pod("shop", "first")).await?;
    assert_eq!(names(&injected, "containers"), ["app", "trellis-agent"]);

    let plain = f.create_pod(pod("plain", "app")).await?;
    assert_eq!(names(&plain, "containers"), ["app"]);
    assert!(names(&plain, "initContainers").is_empty(), "{plain}");

    let mut opted_out = pod("shop", "opted-out");
    opted_out["metadata"]["labels"] = serde_json::json!({"sidecar.istio.io/inject": "false"});
    let opted_out = f.create_pod(opted_out).await?;
    assert_eq!(names(&opted_out, "containers"), ["app"]);
    assert!(names(&opted_out, "initContainers").is_empty());

    // A pod injected already (its spec as the webhook left it) is not
    // injected again.
    let mut again = injected.clone();
    again["metadata"] = serde_json::json!({"name": "again", "namespace": "shop"});
    again.as_object_mut().unwrap().remove("status");
    let again = f.create_pod(again).await?;
    assert_eq!(again["spec"], injected["spec"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_an_invalid_virtual_service_is_refused_with_the_field_path(
) -> anyhow::Result<()> {
    let Some(f) = Fixture::start("wh-validate").await? else {
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
    // A valid one is stored.
    f.kube
        .kubectl_stdin(&["apply", "-f", "-"], Some(&vs([80, 20])))?;
    let stored = f
        .kube
        .kubectl(&["get", "virtualservice", "reviews", "-o", "name"])?;
    assert_eq!(stored.trim(), "virtualservice.networking.istio.io/reviews");
    Ok(())
}
