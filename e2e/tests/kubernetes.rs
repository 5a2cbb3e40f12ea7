//! Trellis's Kubernetes client against a real `kube-apiserver` v1.20
//! (e2e/src/kube.rs; the binaries are built once by e2e/kube/build.sh).
use ::kube::api::{Api, PostParams};
use k8s_openapi::api::core::v1::Namespace;
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_kubernetes::client::{client, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_writes_and_reads_a_real_api_server_from_a_kubeconfig() -> anyhow::Result<()> {
    if let Some(why) = unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let cluster = KubeCluster::start("smoke", Options::default())?;
    let c = client(&Source::Kubeconfig(cluster.kubeconfig.clone())).await?;
    let namespaces: Api<Namespace> = Api::all(c);
    let name = format!("trellis-smoke-{}", std::process::id());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    namespaces.create(&PostParams::default(), &ns).await?;
    // Read back by another client: kubectl.
    let listed = cluster.kubectl(&["get", "namespace", &name, "-o", "name"])?;
    assert_eq!(listed.trim(), format!("namespace/{name}"));
    // And a kubeconfig that does not exist is an error naming it.
    let Err(err) = client(&Source::Kubeconfig("/nonexistent/kubeconfig".into())).await else {
        panic!("a client from a kubeconfig that does not exist");
    };
    assert!(
        format!("{err:#}").contains("/nonexistent/kubeconfig"),
        "{err:#}"
    );
    Ok(())
}
