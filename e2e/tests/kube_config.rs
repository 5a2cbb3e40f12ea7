//! Istio resources applied with `kubectl` become mesh configuration: a
//! real `kube-apiserver` v1.20 holding the generated CRDs (installed after
//! the control-plane node started: it picks them up), a control-plane
//! node started with `--kubernetes`, and an agent whose requests to
//! reviews (two echo servers, v1 and v2, registered with `trellis apply`)
//! follow the VirtualService and DestinationRule applied to the cluster.
//! No validating webhook is installed here: an invalid resource reaches
//! the API server, as when the webhook was bypassed.
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::kube::{comparison_after_restart, unavailable, KubeCluster, Options};
use trellis_e2e::loopback::Block;
use trellis_e2e::reviews::{client_agent, echo, versions, HOST};
use trellis_e2e::{wait_for, Cluster, Proc};

/// Loopback block series of this test binary: `127.52.N.0/24`.
const SERIES: u8 = 52;
const CLIENT: u8 = 10;
const V1: u8 = 11;
const V2: u8 = 12;

const SOURCE: &str = "kubernetes/cluster-1";

/// reviews as `trellis apply` registers it: a ServiceEntry and a
/// WorkloadEntry per version (no agent there: plaintext).
fn reviews(v1: &str, v2: &str) -> String {
    let entry = |version: &str, ip: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
             metadata: {{name: reviews-{version}}}\nspec:\n  address: {ip}\n  \
             labels: {{app: reviews, version: {version}, security.istio.io/tlsMode: disabled}}\n"
        )
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: reviews}}\n\
         spec:\n  hosts: [{HOST}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 9080, name: http}}]\n  workloadSelector: {{labels: {{app: reviews}}}}\n\
         ---\n{}---\n{}",
        entry("v1", v1),
        entry("v2", v2)
    )
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

/// The VirtualService reviews sending every request to `subset`.
fn all_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{HOST}]
  http:
  - route:
    - destination: {{host: {HOST}, subset: {subset}}}
"
    )
}

/// An API server; a one-node control plane in its cluster started with
/// `--kubernetes`; reviews v1 and v2 registered with `trellis apply`;
/// a client agent with an upstream to reviews; then the Istio CRDs
/// installed and the DestinationRule applied with kubectl. Started,
/// requests reach both versions.
struct Fixture {
    // Field order is drop order: the processes, then the control plane,
    // then the API server.
    _client: Proc,
    _echo: Vec<Proc>,
    cp: Cluster,
    kube: KubeCluster,
    _block: Block,
    url: String,
}

impl Fixture {
    async fn start(name: &str) -> anyhow::Result<Fixture> {
        let kube = KubeCluster::start(name, Options::default())?;
        let listeners: Vec<(u8, u16)> = [15000, 15001, 15006, 15020, 15053, 19080]
            .map(|p| (CLIENT, p))
            .into_iter()
            .chain([(V1, 9080), (V2, 9080)])
            .collect();
        let block = Block::take(SERIES, &listeners)?;
        let ip = |h: u8| block.ip(h).to_string();
        let kubeconfig = kube.kubeconfig.display().to_string();
        let cp = Cluster::start(1, &["--kubernetes", &kubeconfig]).await?;
        let dir = cp.root.path().to_path_buf();
        let echo = vec![echo(&dir, &ip(V1), "v1")?, echo(&dir, &ip(V2), "v2")?];
        let file = dir.join("reviews.yaml");
        std::fs::write(&file, reviews(&ip(V1), &ip(V2)))?;
        cp.cli(&["apply", "-f", &file.display().to_string()])?;
        let token = cp.token(&["--kind", "vm", "--identity", "default/client"])?;
        let client = client_agent(&dir, &ip(CLIENT), &token)?;
        // The CRDs come after the node started watching.
        kube.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&trellis_kubernetes::crd::crds_yaml()?),
        )?;
        kube.kubectl(&[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/virtualservices.networking.istio.io",
            "crd/destinationrules.networking.istio.io",
        ])?;
        kube.kubectl_stdin(&["apply", "-f", "-"], Some(SUBSETS))?;
        let f = Fixture {
            _client: client,
            _echo: echo,
            cp,
            kube,
            url: format!("http://{}:19080/", ip(CLIENT)),
            _block: block,
        };
        f.reaching(&["v1", "v2"]).await?;
        wait_for(
            Duration::from_secs(30),
            "the cluster's DestinationRule",
            || async { f.sources("dr").contains(&SOURCE.to_string()).then_some(()) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}: {}", f.cp.node(1).output()))?;
        Ok(f)
    }

    /// Waits until requests reach exactly `want`.
    async fn reaching(&self, want: &[&str]) -> anyhow::Result<()> {
        wait_for(
            Duration::from_secs(30),
            &format!("requests reaching {want:?}"),
            || async { (versions(&self.url, 10) == want).then_some(()) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}: reaching {:?}", versions(&self.url, 10)))
    }

    /// `trellis get KIND -o json` as a list of resources.
    fn get(&self, kind: &str) -> Vec<Value> {
        let out = self
            .cp
            .cli(&["get", kind, "-o", "json"])
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        match v["items"].as_array() {
            Some(a) => a.clone(),
            None if v.is_object() => vec![v],
            None => vec![],
        }
    }

    /// The source of each resource of `kind`, `trellis` for an applied
    /// one, `(shadowed by ...)` after a shadowed one.
    fn sources(&self, kind: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .get(kind)
            .iter()
            .map(|r| {
                let a = &r["metadata"]["annotations"];
                let source = a["trellis.io/source"].as_str().unwrap_or("trellis");
                match a["trellis.io/shadowed-by"].as_str() {
                    Some(by) => format!("{source} (shadowed by {by})"),
                    None => source.to_string(),
                }
            })
            .collect();
        out.sort();
        out
    }

    /// Writes the file `name` with `text` in the test's directory.
    fn file(&self, name: &str, text: &str) -> anyhow::Result<String> {
        let path = self.cp.root.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_routes_the_agents_and_trellis_apply_of_the_same_resource_wins(
) -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let f = Fixture::start("kcr-route").await?;
    f.kube
        .kubectl_stdin(&["apply", "-f", "-"], Some(&all_to("v2")))?;
    f.reaching(&["v2"]).await?;
    assert_eq!(f.sources("virtualservices"), [SOURCE]);
    let table = f.cp.cli(&["get", "virtualservices"])?;
    assert!(
        table
            .lines()
            .any(|l| l.contains("reviews") && l.contains(SOURCE)),
        "{table}"
    );

    // The same resource applied with trellis: its copy is in force, the
    // cluster's is kept, shadowed.
    let own = f.file("vs.yaml", &all_to("v1"))?;
    f.cp.cli(&["apply", "-f", &own])?;
    f.reaching(&["v1"]).await?;
    assert_eq!(
        f.sources("vs"),
        [
            format!("{SOURCE} (shadowed by trellis)"),
            "trellis".to_string()
        ]
    );
    let table = f.cp.cli(&["get", "vs"])?;
    assert!(table.contains("(shadowed by trellis)"), "{table}");
    // Deleted with trellis: the cluster's copy is in force again.
    f.cp.cli(&["delete", "-f", &own])?;
    f.reaching(&["v2"]).await?;
    // What only the cluster holds is deleted there.
    let Err(e) = f.cp.cli(&["delete", "-f", &own]) else {
        panic!("trellis deleted the cluster's VirtualService");
    };
    assert!(
        format!("{e:#}").contains(
            "comes from Kubernetes cluster cluster-1: delete it there with \
             `kubectl delete virtualservices reviews -n default`"
        ),
        "{e:#}"
    );
    f.reaching(&["v2"]).await?;
    f.kube.kubectl(&["delete", "virtualservice", "reviews"])?;
    f.reaching(&["v1", "v2"]).await?;
    assert_eq!(f.sources("vs"), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_not_in_force_and_a_restart_writes_nothing() -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let mut f = Fixture::start("kcr-invalid").await?;
    // No webhook here: the API server stores a misspelt field (the CRD
    // keeps unknown fields), and the mesh refuses it by its path.
    let typo = format!("{}      wieght: 100\n", all_to("v2"));
    f.kube.kubectl_stdin(&["apply", "-f", "-"], Some(&typo))?;
    let analysis = wait_for(
        Duration::from_secs(30),
        "trellis analyze to report it",
        || async {
            let out = f.cp.cli_raw(&["analyze"]).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("SchemaValidationError")
                .then_some((out.status, text))
        },
    )
    .await?;
    assert!(!analysis.0.success(), "analyze exits non-zero on an error");
    assert!(
        analysis.1.contains("spec.http[0].route[0].wieght")
            && analysis.1.contains("in Kubernetes cluster cluster-1"),
        "{}",
        analysis.1
    );
    assert!(f
        .cp
        .node(1)
        .output()
        .contains("an Istio resource of the cluster is invalid"));
    assert_eq!(f.sources("vs"), Vec::<String>::new(), "not in force");
    assert_eq!(versions(&f.url, 10), ["v1", "v2"]);
    // Fixed in the cluster: in force.
    f.kube
        .kubectl_stdin(&["apply", "-f", "-"], Some(&all_to("v2")))?;
    f.reaching(&["v2"]).await?;

    // The node restarts: its first comparison of the cluster (Istio
    // resources included) with the store finds nothing to write.
    let wrote = |cp: &Cluster| {
        cp.node(1)
            .output()
            .matches("Kubernetes discovery wrote its changes")
            .count()
    };
    let before = wrote(&f.cp);
    f.cp.stop(1)?;
    f.cp.restart(1).await?;
    let node = f.cp.node(1);
    let line = comparison_after_restart(node).await?;
    assert!(
        line.contains("upserts=0") && line.contains("deletes=0"),
        "{line}"
    );
    f.reaching(&["v2"]).await?;
    assert_eq!(
        wrote(&f.cp),
        before,
        "a write after the restart: {}",
        node.output()
    );
    Ok(())
}
