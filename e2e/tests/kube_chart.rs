//! The Helm chart `installer/charts/trellis`: linted and rendered by Helm's
//! own engine (PyPI's `helm-python-sdk`, Helm v4 as a library: this
//! machine has no `helm` binary), its values checked by
//! `values.schema.json`, and what it renders created on a real
//! `kube-apiserver` v1.20 (e2e/src/kube.rs): every object is created, the
//! RBAC is the API server's, and the webhooks are called by the API
//! server. And the chart's pods run under the tests' kubelet
//! (e2e/src/kubelet.rs): the control-plane node joins the mesh and serves
//! the webhooks, the east-west gateway joins.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use trellis_e2e::helm;
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_e2e::kube_mesh::{Member, MemberSpec, CONTROLPLANE, GATEWAY, SYSTEM};
use trellis_e2e::kubelet::{Images, NodeSpec};
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::{bin, wait_for, wait_for_blocking};

/// The values of `helm install ... --set cluster.name=east --set
/// cluster.network=net-east --set-file join.token=token.txt ...`.
fn values() -> Value {
    json!({
        "cluster": {"name": "east", "network": "net-east"},
        "join": {"token": "cluster-token\n", "gatewayToken": "gateway-token"},
        "eastwestGateway": {"advertise": ["192.0.2.10:15443"]},
    })
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

#[test]
fn helm_lints_and_renders_the_chart_with_the_binaries_real_flags() -> anyhow::Result<()> {
    if !helm::available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let r = helm::render(dir.path(), &values())?.map_err(anyhow::Error::msg)?;
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
            "--http-listen=0.0.0.0:15014",
            agent_image.as_str(),
            "--advertise=$(POD_IP):15012",
        ]
    );
    assert_flags_exist(&["trellis-controlplane", "join"], &args)?;
    // Ready when the node says so on its HTTP port, not when it listens.
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(
        (&probe["path"], &probe["port"]),
        (&"/ready".into(), &"http".into())
    );
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
    let r = helm::render(dir.path(), &voter)?.map_err(anyhow::Error::msg)?;
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
    if !helm::available() {
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
        let Err(message) = helm::render(dir.path(), &values)? else {
            panic!("rendered without {refused_at}: {values}");
        };
        assert!(message.contains(refused_at), "{refused_at}: {message}");
    }
    // A misspelt value is refused too, not ignored.
    let mut misspelt = values();
    misspelt["clustr"] = json!({"name": "west"});
    let Err(message) = helm::render(dir.path(), &misspelt)? else {
        panic!("rendered with `clustr`");
    };
    assert!(message.contains("clustr"), "{message}");
    // A Secret made beforehand stands in for both tokens.
    let mut v = without("/join/token");
    v["join"] = json!({"existingSecret": "my-tokens"});
    let r = helm::render(dir.path(), &v)?.map_err(anyhow::Error::msg)?;
    assert!(!r.objects.iter().any(|o| o["kind"] == "Secret"));
    let node = object(&r.objects, "StatefulSet", "trellis-controlplane");
    let env = &node["spec"]["template"]["spec"]["containers"][0]["env"][1];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "my-tokens");
    Ok(())
}

/// The API server, the namespace the chart is installed in, and the
/// rendered chart.
fn installed_cluster(
    name: &str,
    dir: &Path,
) -> anyhow::Result<Option<(KubeCluster, helm::Rendered)>> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(None);
    }
    if !helm::available() {
        return Ok(None);
    }
    let rendered = helm::render(dir, &values())?.map_err(anyhow::Error::msg)?;
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
    helm::wait_established(&cluster)?;
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
        ("watch", "configmaps", true),
        ("create", "configmaps", true),
        ("update", "configmaps/trellis-ca-root-cert", true),
        ("update", "configmaps/someone-elses", false),
        ("delete", "configmaps/trellis-ca-root-cert", false),
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

#[test]
fn istio_resources_apply_and_read_back_once_the_charts_crds_are_in() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some((cluster, r)) = installed_cluster("crds", dir.path())? else {
        return Ok(());
    };
    // As `helm install` does with crds/: created, before the templates.
    cluster.kubectl(&["create", "-f", r.crds.to_str().unwrap()])?;
    helm::wait_established(&cluster)?;
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

/// The chart installed as `helm install` would, and its pods run: by the
/// real controller manager (StatefulSet, Deployment, ReplicaSet,
/// EndpointSlice and service-account token controllers) and the tests'
/// kubelet (e2e/src/kubelet.rs), which runs each image as the binary of
/// this build. The control-plane node joins the mesh as cluster `east`
/// with the token from the chart's Secret, finds its API server in-cluster,
/// discovers its own Services, patches the webhooks' caBundle and answers
/// the API server's webhook calls; the east-west gateway joins with its
/// token and is listed healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_pods_join_the_mesh_and_answer_its_webhooks() -> anyhow::Result<()> {
    let Some(why) = unavailable()
        .or_else(trellis_e2e::netns::unavailable)
        .or((!helm::available()).then_some("helm-python-sdk is not installed"))
    else {
        return run_the_charts_pods().await;
    };
    eprintln!("skipping: {why}");
    Ok(())
}

async fn run_the_charts_pods() -> anyhow::Result<()> {
    // The mesh's first cluster: a node of the machine, on a network of
    // its own that the pods' network routes to.
    let vms = MeshEnv::new("chartvms").await?;
    let cp = &vms.cp;
    let east = Member::install(
        cp,
        MemberSpec {
            name: "east",
            network: "net-east",
            node: NodeSpec {
                name: "east-a".into(),
                region: "eu".into(),
                zone: "eu-a".into(),
                subzone: String::new(),
                schedules: true,
            },
            service_cidr: "10.97.0.0/16",
            images: Images::new(),
        },
    )
    .await?;
    let cluster = &east.api;
    let pod_log = |selector: &str, container: &str| east.system_log(selector, container);
    let pod_ip = |selector: &str| -> anyhow::Result<std::net::Ipv4Addr> {
        let pod = east.pod(SYSTEM, selector)?;
        east.kubelet
            .pod_ip(SYSTEM, &pod)
            .with_context(|| format!("{pod} runs here"))
    };
    // The StatefulSet's pod joined as east's learner, at the pod's
    // address; the gateway's pod registered its own.
    let listed = &east.listed;
    assert_eq!(listed["network"], "net-east", "{listed}");
    assert_eq!(listed["nodes"][0]["locality"], "eu/eu-a", "{listed}");
    let node_ip = pod_ip(CONTROLPLANE)?;
    assert_eq!(
        listed["nodes"][0]["address"],
        format!("{node_ip}:15012"),
        "the pod's IP, from $(POD_IP): {listed}"
    );
    let gateway_ip = pod_ip(GATEWAY)?;
    assert_eq!(
        listed["gateways"][0]["addresses"][0],
        format!("{gateway_ip}:15443"),
        "{listed}"
    );
    // The gateway streams from its cluster's node, by the Service's name.
    let log = pod_log(GATEWAY, "eastwest");
    assert!(
        log.contains(
            "streaming config from the control plane addr=trellis-controlplane.trellis-system.svc:15012"
        ),
        "{log}"
    );

    // In-cluster discovery: the node's own Service is a service of the
    // mesh, from cluster east.
    let host = "trellis-controlplane.trellis-system.svc.cluster.local";
    wait_for(
        Duration::from_secs(30),
        "east's Services discovered",
        || async {
            let out = cp
                .cli(&["get", "serviceentries", "-A", "-o", "json"])
                .ok()?;
            out.contains(host).then_some(())
        },
    )
    .await
    .with_context(|| pod_log(CONTROLPLANE, "controlplane"))?;

    // The node patched the webhooks' caBundle (Member::install waited for
    // it), and the API server calls them: a pod of an injected namespace
    // gets the sidecar (a server-side dry run: mutated, not kept) ...
    cluster.kubectl(&["create", "namespace", "shop"])?;
    cluster.kubectl(&["label", "namespace", "shop", "istio-injection=enabled"])?;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    })
    .to_string();
    let mutated = wait_for_blocking(Duration::from_secs(30), "the injector answering", || {
        cluster
            .kubectl_stdin(
                &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&pod),
            )
            .ok()
    })?;
    let mutated: Value = serde_json::from_str(&mutated)?;
    let names = |field: &str| -> Vec<String> {
        mutated["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names("initContainers"), ["trellis-capture"], "{mutated}");
    assert!(
        names("containers").contains(&"trellis-agent".to_string()),
        "{mutated}"
    );
    let agent_image = mutated["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "trellis-agent")
        .map(|c| c["image"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        agent_image.as_deref(),
        Some(format!("trellis/trellis-agent:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the chart's images.agent, passed as --agent-image"
    );
    // ... and an invalid VirtualService is refused with its field path.
    let bad = REVIEWS
        .split("---")
        .next()
        .unwrap()
        .replace("weight: 25", "weight: 35");
    let err = cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("denied the request") && err.contains("weight"),
        "{err}"
    );
    Ok(())
}
