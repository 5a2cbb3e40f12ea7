//! A bed for the admission webhooks: a real API server (see [`super::kube`])
//! holding the two webhook configurations (by `clientConfig.url`, without a
//! caBundle, as the chart leaves them) and the CRDs of the Istio kinds
//! the chart installs ([`trellis_kubernetes::crd`]), and a control-plane
//! node serving the webhooks. For
//! `tests/kube_webhook.rs` and `trellis-bench inject`.
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use trellis_identity::admin_config::AdminConfig;

use crate::kube::{KubeCluster, Options};
use crate::{free_port, wait_for, Cluster};

/// How long the node has to write the caBundles.
const WAIT: Duration = Duration::from_secs(30);

/// An API server and a node serving its webhooks on 127.0.0.1:`port`,
/// the webhook configurations pointing there.
pub struct WebhookBed {
    pub kube: KubeCluster,
    pub node: Cluster,
    pub port: u16,
}

impl WebhookBed {
    /// Starts both (the caller checks [`crate::kube::unavailable`]
    /// first), the node with `node_env` in its environment.
    pub async fn start(name: &str, node_env: &[(&str, &str)]) -> anyhow::Result<WebhookBed> {
        let kube = KubeCluster::start(name, Options::default())?;
        let kubeconfig = kube.kubeconfig.clone();
        Self::serve(kube, &kubeconfig, "127.0.0.1", node_env).await
    }

    /// [`WebhookBed::start`] on an API server started already, the node
    /// using `kubeconfig` (e.g. a service account's) and listening on
    /// `host` (e.g. a [`crate::netns::Net`]'s gateway, for pods to reach
    /// it).
    pub async fn serve(
        kube: KubeCluster,
        kubeconfig: &std::path::Path,
        host: &str,
        node_env: &[(&str, &str)],
    ) -> anyhow::Result<WebhookBed> {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let kubeconfig = kubeconfig.display().to_string();
        kube.kubectl_stdin(&["apply", "-f", "-"], Some(&configurations(port)))?;
        kube.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&trellis_kubernetes::crd::crds_yaml()?),
        )?;
        let mut node = Cluster::new(&["--kubernetes", &kubeconfig, "--webhook-listen", &listen])?;
        node.host = host.to_string();
        node.node_env = node_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        node.spawn_init()?;
        node.wait_ready(1).await?;
        node.wait_writable(1).await?;
        Ok(WebhookBed { kube, node, port })
    }

    /// The mesh root, PEM.
    pub fn root(&self) -> anyhow::Result<String> {
        Ok(AdminConfig::load(&self.node.admin_config())?.trust_bundle)
    }

    /// Waits until both configurations trust the mesh root.
    pub async fn patched(&self) -> anyhow::Result<()> {
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

    pub fn ca_bundles(&self, config: &str) -> anyhow::Result<Vec<String>> {
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
    pub fn namespace(&self, name: &str, injected: bool) -> anyhow::Result<()> {
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
}

/// The two configurations as the chart makes them, but calling
/// 127.0.0.1:`port` by URL (there is no Service to a pod here).
pub fn configurations(port: u16) -> String {
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
"
    )
}
