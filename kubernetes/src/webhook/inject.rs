//! Sidecar injection, pure: what a pod gets ([`Injection::patch`]), as an
//! RFC 6902 JSON patch the API server applies before it stores the pod.
//!
//! A pod gets an init container that installs capture (`trellis-agent
//! --install-capture`: the agent's own iptables rules, then it exits) and
//! the agent beside the application: a native sidecar (an init container
//! with `restartPolicy: Always`, Kubernetes 1.29 and newer), else a
//! regular container. Both mount the pod's service-account token for the
//! mesh CA (audience `trellis-ca`) at [`TOKEN_PATH`]; the agent also
//! mounts the mesh root the control plane publishes in every namespace
//! ([`crate::roots`]) at [`ROOTS_PATH`], and an empty directory for its
//! key and certificate at [`DATA_DIR`].
use std::collections::BTreeMap;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, Pod, ProjectedVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use serde_json::{json, Value};

use crate::discovery::view::TLS_MODE_LABEL;
use crate::roots;

/// The init container that installs capture.
pub const CAPTURE_CONTAINER: &str = "trellis-capture";
/// The agent's container.
pub const AGENT_CONTAINER: &str = "trellis-agent";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "trellis-ca-token";
/// The audience of that token: the mesh CA checks it with a TokenReview.
pub const TOKEN_AUDIENCE: &str = "trellis-ca";
/// Where the token is, in both containers.
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/trellis-ca";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The volume of the mesh root: the ConfigMap [`roots::CONFIG_MAP`].
pub const ROOTS_VOLUME: &str = roots::CONFIG_MAP;
const ROOTS_DIR: &str = "/var/run/secrets/trellis";
/// The agent's `--roots` (`TRELLIS_ROOTS`): the ConfigMap's key.
pub const ROOTS_PATH: &str = "/var/run/secrets/trellis/root-cert.pem";
/// The agent's key and certificate: an empty directory of the pod's own.
pub const DATA_VOLUME: &str = "trellis-data";
/// Where it is mounted: the agent's `--data-dir` (`TRELLIS_DATA_DIR`).
pub const DATA_DIR: &str = "/var/lib/trellis-agent";
/// The kubelet refreshes a projected token at 80 % of its lifetime.
const TOKEN_LIFETIME_SECS: i64 = 12 * 3600;
/// The pod label or annotation that opts a pod out (`"false"`), as in Istio.
pub const INJECT_KEY: &str = "sidecar.istio.io/inject";
/// The first Kubernetes minor version (of 1.x) that runs native sidecars
/// (the SidecarContainers feature, on by default from 1.29).
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// What an injected pod gets, from the control plane's flags and the API
/// server's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// Image of both containers (`trellis-agent`).
    pub agent_image: String,
    /// Address the agent streams its config from (`--control-plane`).
    pub control_plane: String,
    /// The API server runs native sidecars.
    pub native_sidecar: bool,
}

/// Why a pod is left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `sidecar.istio.io/inject: "false"`, as a label or an annotation.
    OptedOut,
    /// It has the agent or the capture container already.
    AlreadyInjected,
}

/// Whether the API server of version `major`.`minor` (as `/version` says
/// them: `"1"`, `"29+"` on some distributions) runs native sidecars.
pub fn native_sidecars(major: &str, minor: &str) -> bool {
    let number = |s: &str| -> u32 { s.trim_end_matches('+').parse().unwrap_or(0) };
    let major = number(major);
    major > 1 || (major == 1 && number(minor) >= NATIVE_SIDECAR_MINOR)
}

impl Injection {
    /// Whether `pod` is to be injected.
    pub fn wanted(pod: &Pod) -> Result<(), Skip> {
        let says_false = |m: &Option<BTreeMap<String, String>>| {
            m.as_ref()
                .and_then(|m| m.get(INJECT_KEY))
                .is_some_and(|v| v.eq_ignore_ascii_case("false"))
        };
        if says_false(&pod.metadata.labels) || says_false(&pod.metadata.annotations) {
            return Err(Skip::OptedOut);
        }
        let spec = pod.spec.as_ref();
        let names = spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        });
        if names
            .map(|c| c.name.as_str())
            .any(|n| n == AGENT_CONTAINER || n == CAPTURE_CONTAINER)
        {
            return Err(Skip::AlreadyInjected);
        }
        Ok(())
    }

    /// The patch that injects `pod`; empty when it is not to be
    /// ([`Injection::wanted`]), so a pod injected once is left unchanged.
    ///
    /// With native sidecars, capture and then the agent go first among the
    /// init containers, so that the pod's other init containers are in the
    /// mesh already. Without, capture goes last, after the pod's own init
    /// containers (which run outside the mesh, with their network intact),
    /// and the agent is appended to the containers.
    pub fn patch(&self, pod: &Pod) -> Result<Patch, Skip> {
        Self::wanted(pod)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let capture = to_value(self.capture_container());
        let agent = to_value(self.agent_container());
        let mut ops = Vec::new();
        let has_init = spec.init_containers.as_ref().is_some_and(|c| !c.is_empty());
        match (self.native_sidecar, has_init) {
            (_, false) => {
                let mut init = vec![capture];
                if self.native_sidecar {
                    init.push(agent.clone());
                }
                ops.push(add("/spec/initContainers", Value::Array(init)));
            }
            (true, true) => {
                ops.push(add("/spec/initContainers/0", capture));
                ops.push(add("/spec/initContainers/1", agent.clone()));
            }
            (false, true) => ops.push(add("/spec/initContainers/-", capture)),
        }
        if !self.native_sidecar {
            ops.push(add("/spec/containers/-", agent));
        }
        // Reached over mTLS: discovery tells injected pods by this label,
        // as Istio's registry does.
        match &pod.metadata.labels {
            Some(l) if !l.is_empty() => ops.push(add(
                &format!("/metadata/labels/{}", TLS_MODE_LABEL.replace('/', "~1")),
                json!("istio"),
            )),
            _ => ops.push(add("/metadata/labels", json!({TLS_MODE_LABEL: "istio"}))),
        }
        let volumes = [token_volume(), roots_volume(), data_volume()].map(to_value);
        match spec.volumes {
            Some(v) if !v.is_empty() => {
                ops.extend(volumes.into_iter().map(|v| add("/spec/volumes/-", v)))
            }
            _ => ops.push(add("/spec/volumes", json!(volumes))),
        }
        Ok(serde_json::from_value(Value::Array(ops)).expect("add operations are a JSON patch"))
    }

    /// Installs capture and exits. As root with NET_ADMIN (iptables) and
    /// NET_RAW, which the agent needs for nothing else at start.
    fn capture_container(&self) -> Container {
        Container {
            name: CAPTURE_CONTAINER.into(),
            image: Some(self.agent_image.clone()),
            args: Some(vec!["--install-capture".into()]),
            env: Some(vec![env("TRELLIS_CAPTURE", "iptables")]),
            security_context: Some(root_with_net_admin()),
            ..Default::default()
        }
    }

    /// The agent. It marks its own sockets so that capture lets them out
    /// (SO_MARK needs NET_ADMIN), and reinstalls capture at start, which
    /// finds it in place.
    fn agent_container(&self) -> Container {
        let field = |path: &str| EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let from = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value_from: Some(field(path)),
            ..Default::default()
        };
        Container {
            name: AGENT_CONTAINER.into(),
            image: Some(self.agent_image.clone()),
            restart_policy: self.native_sidecar.then(|| "Always".into()),
            env: Some(vec![
                env("TRELLIS_CAPTURE", "iptables"),
                env("TRELLIS_CONTROL_PLANE", &self.control_plane),
                from("TRELLIS_NAME", "metadata.name"),
                from("TRELLIS_POD_NAMESPACE", "metadata.namespace"),
                from("TRELLIS_SERVICE_ACCOUNT", "spec.serviceAccountName"),
                env("TRELLIS_KUBE_TOKEN_FILE", TOKEN_PATH),
                env("TRELLIS_ROOTS", ROOTS_PATH),
                env("TRELLIS_DATA_DIR", DATA_DIR),
            ]),
            volume_mounts: Some(vec![
                mount(TOKEN_VOLUME, TOKEN_DIR, true),
                mount(ROOTS_VOLUME, ROOTS_DIR, true),
                mount(DATA_VOLUME, DATA_DIR, false),
            ]),
            security_context: Some(root_with_net_admin()),
            ..Default::default()
        }
    }
}

/// Root with NET_ADMIN and NET_RAW and nothing else: capture's rules, and
/// the agent's marked sockets.
fn root_with_net_admin() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        run_as_non_root: Some(false),
        capabilities: Some(Capabilities {
            add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            drop: Some(vec!["ALL".into()]),
        }),
        ..Default::default()
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_LIFETIME_SECS),
                    path: "trellis-ca".into(),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The mesh root, from the ConfigMap the control plane keeps in the
/// pod's namespace: the pod waits for it (it is not optional), and the
/// kubelet brings a new root into the running pod.
fn roots_volume() -> Volume {
    Volume {
        name: ROOTS_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: roots::CONFIG_MAP.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn data_volume() -> Volume {
    Volume {
        name: DATA_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

fn mount(volume: &str, at: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: at.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn add(path: &str, value: Value) -> Value {
    json!({"op": "add", "path": path, "value": value})
}

fn to_value(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("API types serialize to JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injection(native: bool) -> Injection {
        Injection {
            agent_image: "trellis/agent:test".into(),
            control_plane: "trellis-controlplane.trellis.svc:15012".into(),
            native_sidecar: native,
        }
    }

    fn pod(yaml_json: Value) -> Pod {
        serde_json::from_value(yaml_json).unwrap()
    }

    fn app() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "app", "namespace": "shop"},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    }

    /// `pod` with `patch` applied, the way the API server applies it.
    fn applied(pod: &Value, patch: &Patch) -> Value {
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, patch).expect("the patch applies");
        doc
    }

    fn names(pod: &Value, list: &str) -> Vec<String> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_pod_gets_capture_first_and_the_agent_as_a_regular_container_before_1_29() {
        let inj = injection(false);
        let out = applied(&app(), &inj.patch(&pod(app())).unwrap());
        assert_eq!(names(&out, "initContainers"), [CAPTURE_CONTAINER]);
        assert_eq!(names(&out, "containers"), ["app", AGENT_CONTAINER]);
        let agent = &out["spec"]["containers"][1];
        assert!(agent.get("restartPolicy").is_none(), "{agent}");
        // Discovery reaches it over mTLS; the agent proves its identity
        // with the projected token.
        assert_eq!(out["metadata"]["labels"][TLS_MODE_LABEL], "istio");
        let env = agent["env"].as_array().expect("env");
        assert!(
            env.iter()
                .any(|e| e["name"] == "TRELLIS_KUBE_TOKEN_FILE" && e["value"] == TOKEN_PATH),
            "{agent}"
        );
        let init = &out["spec"]["initContainers"][0];
        assert_eq!(init["args"], json!(["--install-capture"]));
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        // The token for the mesh CA, projected with its audience.
        let volume = &out["spec"]["volumes"][0];
        assert_eq!(volume["name"], TOKEN_VOLUME);
        let token = &volume["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], TOKEN_AUDIENCE);
        assert_eq!(
            format!(
                "{}/{}",
                agent["volumeMounts"][0]["mountPath"].as_str().unwrap(),
                token["path"].as_str().unwrap()
            ),
            TOKEN_PATH
        );
        let env = |name: &str| {
            agent["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("no {name} in {agent}"))
        };
        assert_eq!(
            env("TRELLIS_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            env("TRELLIS_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.serviceAccountName"
        );
        assert_eq!(
            env("TRELLIS_CONTROL_PLANE")["value"],
            "trellis-controlplane.trellis.svc:15012"
        );
        // The mesh root from the namespace's ConfigMap, where --roots
        // reads it; the key and certificate in the pod's own directory.
        let mounted = |volume: &str| {
            agent["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == volume)
                .unwrap_or_else(|| panic!("no mount of {volume} in {agent}"))["mountPath"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let roots = &out["spec"]["volumes"][1];
        assert_eq!(roots["configMap"]["name"], roots::CONFIG_MAP);
        assert_eq!(
            format!(
                "{}/{}",
                mounted(roots["name"].as_str().unwrap()),
                roots::KEY
            ),
            ROOTS_PATH
        );
        assert_eq!(env("TRELLIS_ROOTS")["value"], ROOTS_PATH);
        let data = &out["spec"]["volumes"][2];
        assert_eq!(data["emptyDir"], json!({}));
        assert_eq!(mounted(data["name"].as_str().unwrap()), DATA_DIR);
        assert_eq!(env("TRELLIS_DATA_DIR")["value"], DATA_DIR);
    }

    #[test]
    fn a_native_sidecar_is_an_init_container_that_restarts_before_the_pods_own() {
        let inj = injection(true);
        let mut p = app();
        p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "app:1"}]);
        p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        let out = applied(&p, &inj.patch(&pod(p.clone())).unwrap());
        assert_eq!(
            names(&out, "initContainers"),
            [CAPTURE_CONTAINER, AGENT_CONTAINER, "migrate"]
        );
        assert_eq!(out["spec"]["initContainers"][1]["restartPolicy"], "Always");
        assert_eq!(names(&out, "containers"), ["app"]);
        assert_eq!(
            names(&out, "volumes"),
            ["data", TOKEN_VOLUME, ROOTS_VOLUME, DATA_VOLUME]
        );
    }

    #[test]
    fn without_native_sidecars_the_pods_own_init_containers_run_before_capture() {
        let mut p = app();
        p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "app:1"}]);
        let out = applied(&p, &injection(false).patch(&pod(p.clone())).unwrap());
        assert_eq!(
            names(&out, "initContainers"),
            ["migrate", CAPTURE_CONTAINER]
        );
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        for native in [false, true] {
            let inj = injection(native);
            let once = applied(&app(), &inj.patch(&pod(app())).unwrap());
            assert_eq!(inj.patch(&pod(once.clone())), Err(Skip::AlreadyInjected));
        }
    }

    #[test]
    fn inject_false_as_a_label_or_an_annotation_opts_out() {
        for at in ["labels", "annotations"] {
            let mut p = app();
            p["metadata"][at] = json!({INJECT_KEY: "false"});
            assert_eq!(injection(false).patch(&pod(p)), Err(Skip::OptedOut), "{at}");
        }
        let mut p = app();
        p["metadata"]["labels"] = json!({INJECT_KEY: "true"});
        assert!(injection(false).patch(&pod(p)).is_ok());
    }

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(!native_sidecars("1", "20"));
        assert!(!native_sidecars("1", "28+"));
        assert!(native_sidecars("1", "29"));
        assert!(native_sidecars("1", "31+"));
        assert!(!native_sidecars("", ""));
    }
}
