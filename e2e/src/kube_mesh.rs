//! Kubernetes clusters joined to a mesh as an operator joins them: for
//! each, a real API server with the controller manager
//! ([`KubeCluster`]), the tests' kubelet on a network of its own
//! ([`Kubelet`], [`Net`]), cluster and gateway tokens made with `trellis
//! token create`, and the Helm chart rendered by Helm's engine and
//! installed ([`crate::helm`]); its pods (the control-plane node, the
//! east-west gateway) run from this build's binaries.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::kube::{KubeCluster, Options};
use crate::kubelet::{Images, Kubelet, NodeSpec};
use crate::netns::Net;
use crate::{bin, helm, wait_for, wait_for_blocking, Cluster};

/// The namespace the chart is installed in.
pub const SYSTEM: &str = "trellis-system";
/// The label selectors of the chart's control-plane and gateway pods.
pub const CONTROLPLANE: &str = "app.kubernetes.io/name=trellis-controlplane";
pub const GATEWAY: &str = "app.kubernetes.io/name=trellis-eastwest";

/// What a member cluster is.
pub struct MemberSpec<'a> {
    /// Its name in the mesh (`cluster.name`).
    pub name: &'a str,
    /// Its network (`cluster.network`).
    pub network: &'a str,
    /// Its kubelet's node: its name and locality.
    pub node: NodeSpec,
    /// Its Services' range; distinct per member.
    pub service_cidr: &'a str,
    /// More programs by image name, for the pods a test runs.
    pub images: Images,
}

/// A Kubernetes cluster of the mesh, with the chart installed and its
/// pods running.
pub struct Member {
    // Field order is drop order: the pods, then the API server, then
    // their network.
    pub kubelet: Kubelet,
    pub api: KubeCluster,
    pub net: Arc<Mutex<Net>>,
    pub name: String,
    pub network: String,
    /// What `trellis cluster list -o json` said of it once it was up.
    pub listed: Value,
    _chart: tempfile::TempDir,
}

impl Member {
    /// Starts the API server and the kubelet of `spec`, makes its tokens
    /// through `cp` (a cluster token and a gateway token of its network),
    /// installs the chart with them (the gateway advertising its pod's
    /// address) and waits until `trellis cluster list` shows its
    /// control-plane node and a healthy gateway, and the node has patched
    /// the webhooks' caBundle.
    pub async fn install(cp: &Cluster, spec: MemberSpec<'_>) -> anyhow::Result<Member> {
        let token = cp.token(&[
            "--kind",
            "cluster",
            "--cluster",
            spec.name,
            "--network",
            spec.network,
        ])?;
        let gateway_token = cp.token(&["--kind", "gateway", "--network", spec.network])?;
        let api = KubeCluster::start(
            spec.name,
            Options {
                controller_manager: true,
                service_cidr: Some(spec.service_cidr.to_string()),
            },
        )?;
        let net = Arc::new(Mutex::new(Net::new(spec.name)?));
        let mut images = spec.images;
        for (image, program) in [
            ("trellis/trellis-controlplane", "trellis-controlplane"),
            ("trellis/trellis-eastwest", "trellis-eastwest"),
            ("trellis/trellis-agent", "trellis-agent"),
        ] {
            images.insert(image.to_string(), bin(program));
        }
        let locality = [&spec.node.region, &spec.node.zone, &spec.node.subzone]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("/");
        let kubelet = Kubelet::start(&api, spec.node, net.clone(), images).await?;
        let chart = tempfile::tempdir()?;
        let values = json!({
            "cluster": {"name": spec.name, "network": spec.network},
            "join": {"token": token, "gatewayToken": gateway_token},
            "controlplane": {"locality": locality},
            "eastwestGateway": {"advertise": ["$(POD_IP):15443"], "service": {"type": "NodePort"}},
        });
        let rendered = helm::render(chart.path(), &values)?.map_err(anyhow::Error::msg)?;
        helm::install(&api, &rendered)?;
        let mut member = Member {
            kubelet,
            api,
            net,
            name: spec.name.to_string(),
            network: spec.network.to_string(),
            listed: Value::Null,
            _chart: chart,
        };
        member.listed = wait_for(
            Duration::from_secs(90),
            &format!(
                "cluster {} listed with its node and a healthy gateway",
                member.name
            ),
            || async {
                let out = cp.cli(&["cluster", "list", "-o", "json"]).ok()?;
                let all: Vec<Value> = serde_json::from_str(&out).ok()?;
                all.into_iter().find(|c| {
                    c["name"] == member.name.as_str()
                        && c["nodes"][0]["role"] == "learner"
                        && c["gateways"][0]["healthy"] == true
                })
            },
        )
        .await
        .with_context(|| {
            format!(
                "control plane's log:\n{}\ngateway's log:\n{}",
                member.system_log(CONTROLPLANE, "controlplane"),
                member.system_log(GATEWAY, "eastwest"),
            )
        })?;
        // The node patches the webhooks' caBundle once it serves them;
        // until then the API server cannot call them.
        for webhook in [
            "mutatingwebhookconfiguration/trellis-sidecar-injector",
            "validatingwebhookconfiguration/trellis-validator",
        ] {
            wait_for_blocking(Duration::from_secs(30), "the caBundle patched", || {
                let b = member
                    .api
                    .kubectl(&[
                        "get",
                        webhook,
                        "-o",
                        "jsonpath={.webhooks[0].clientConfig.caBundle}",
                    ])
                    .ok()?;
                (!b.is_empty()).then_some(())
            })?;
        }
        Ok(member)
    }

    /// The first pod of `ns` matching `selector`, by name.
    pub fn pod(&self, ns: &str, selector: &str) -> anyhow::Result<String> {
        let name = self.api.kubectl(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            selector,
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])?;
        anyhow::ensure!(!name.is_empty(), "no pod of {ns} matches {selector}");
        Ok(name)
    }

    /// The log of `container` in the chart's pod matching `selector`.
    pub fn system_log(&self, selector: &str, container: &str) -> String {
        self.pod(SYSTEM, selector)
            .ok()
            .and_then(|pod| self.kubelet.log(SYSTEM, &pod, container))
            .unwrap_or_default()
    }
}
