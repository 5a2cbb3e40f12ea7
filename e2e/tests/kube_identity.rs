//! Pod identity against real API servers (kube-apiserver v1.20, e2e/src/kube.rs):
//! a real `trellis-agent` given a pod's service-account token
//! (`--kube-token-file`, audience `trellis-ca`, from the TokenRequest API)
//! gets the certificate of its service account from a control-plane node
//! running `--kubernetes` with the cluster's kubeconfig, which reviews the
//! token with a TokenReview. And every token that proves nothing is
//! refused with its reason in the agent's error: signed by another key,
//! from another cluster, for another audience, of a deleted service
//! account, or presented to a node outside Kubernetes; and a CSR for
//! another identity than the token's.
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ::kube::api::{Api, DeleteParams, PostParams};
use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec, ServiceAccount};
use tonic::Code;
use trellis_api::v1::ca_client::CaClient;
use trellis_api::v1::IssueCertificateRequest;
use trellis_e2e::kube::{unavailable, KubeCluster, Options};
use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, remove_env_prefixed, wait_for, Cluster, Proc};
use trellis_identity::admin_config::AdminConfig;
use trellis_identity::{csr, grpc, pem};
use trellis_kubernetes::client::{client, Source};

/// The loopback series of this test binary (e2e/src/loopback.rs).
const SERIES: u8 = 47;
/// The namespace of the test's service accounts.
const NS: &str = "shop";
/// Agents' hosts in the block: one per run.
const HOSTS: std::ops::Range<u8> = 10..20;

/// A Kubernetes cluster with a namespace, and a control-plane node of the
/// mesh running in it (`--kubernetes` with its kubeconfig); agents run on
/// loopback addresses of `block`. Field order is drop order: the node
/// before the API server.
struct Fixture {
    cp: Cluster,
    cluster: KubeCluster,
    api: ::kube::Client,
    /// The mesh's root certificate, as a pod would have it mounted.
    roots: PathBuf,
    block: Block,
    next_host: u8,
}

impl Fixture {
    async fn start(name: &str, node_in_cluster: bool) -> anyhow::Result<Fixture> {
        let cluster = KubeCluster::start(name, Options::default())?;
        let api = client(&Source::Kubeconfig(cluster.kubeconfig.clone())).await?;
        let mut ns = Namespace::default();
        ns.metadata.name = Some(NS.into());
        Api::<Namespace>::all(api.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let kubeconfig = cluster.kubeconfig.display().to_string();
        // Certificates of 8 s: one expires while a test keeps the node away.
        let flags: &[&str] = if node_in_cluster {
            &["--kubernetes", &kubeconfig, "--cert-ttl-secs", "8"]
        } else {
            &[]
        };
        let cp = Cluster::init(flags).await?;
        let roots = cp.root.path().join("root-cert.pem");
        std::fs::write(&roots, AdminConfig::load(&cp.admin_config())?.trust_bundle)?;
        let listeners: Vec<(u8, u16)> = HOSTS.map(|h| (h, 15000)).collect();
        Ok(Fixture {
            cp,
            cluster,
            api,
            roots,
            block: Block::take(SERIES, &listeners)?,
            next_host: HOSTS.start,
        })
    }

    /// A service account `name` in [`NS`].
    async fn service_account(&self, name: &str) -> anyhow::Result<()> {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some(name.into());
        Api::<ServiceAccount>::namespaced(self.api.clone(), NS)
            .create(&PostParams::default(), &sa)
            .await?;
        Ok(())
    }

    /// A token of service account `name` for `audience` from the
    /// TokenRequest API, bound to `pod` if given.
    async fn token(&self, name: &str, audience: &str, pod: Option<&Pod>) -> anyhow::Result<String> {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.into()],
                expiration_seconds: Some(600),
                bound_object_ref: pod.map(|p| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: p.metadata.name.clone(),
                    uid: p.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let answer = Api::<ServiceAccount>::namespaced(self.api.clone(), NS)
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        Ok(answer.status.context("no token in the answer")?.token)
    }

    /// A pod of service account `sa` (no kubelet runs it: the token is
    /// bound to the API object).
    async fn pod(&self, name: &str, sa: &str) -> anyhow::Result<Pod> {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.spec = Some(PodSpec {
            service_account_name: Some(sa.into()),
            // No service-account token Secret: no token controller runs.
            automount_service_account_token: Some(false),
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "app".into(),
                image: Some("app".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        Ok(Api::<Pod>::namespaced(self.api.clone(), NS)
            .create(&PostParams::default(), &pod)
            .await?)
    }

    /// A `trellis-agent` whose pod's token is `token`, asking node 1.
    fn agent(&mut self, name: &str, token: &str) -> anyhow::Result<Agent> {
        let dir = self.cp.root.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token)?;
        let ip = self.block.ip(self.next_host).to_string();
        self.next_host += 1;
        let data = dir.join("data");
        let mut cmd = Command::new(bin("trellis-agent"));
        remove_env_prefixed(&mut cmd, "TRELLIS_");
        cmd.arg("--kube-token-file")
            .arg(&token_file)
            .arg("--roots")
            .arg(&self.roots)
            .args(["--control-plane", &self.cp.nodes[0].addr])
            .arg("--data-dir")
            .arg(&data);
        trellis_e2e::agent_listeners(&mut cmd, &ip);
        cmd.args(["--app-host", &ip, "--address", &ip]);
        let proc_ = Proc::spawn(name, &mut cmd, &dir.join("agent.log"))?;
        Ok(Agent { proc_, data })
    }

    /// What a `trellis-agent` with `token` said when it gave up; it must
    /// give up.
    async fn refused(&mut self, name: &str, token: &str) -> anyhow::Result<String> {
        let mut agent = self.agent(name, token)?;
        wait_for(Duration::from_secs(30), "the agent gives up", || {
            std::future::ready(agent.proc_.check_running().is_err().then_some(()))
        })
        .await
        .with_context(|| agent.proc_.output())?;
        assert!(
            !agent.data.join("cert-chain.pem").exists(),
            "{name}: a certificate was written"
        );
        let out = agent.proc_.output();
        let error = out
            .lines()
            .find(|l| l.contains("refused"))
            .unwrap_or_default();
        eprintln!("{name}: {error}");
        Ok(out)
    }
}

struct Agent {
    proc_: Proc,
    data: PathBuf,
}

impl Agent {
    /// The identity of the certificate the agent keeps, once it has one.
    async fn identity(&mut self) -> anyhow::Result<String> {
        let chain = self.data.join("cert-chain.pem");
        let proc_ = &mut self.proc_;
        wait_for(Duration::from_secs(30), "the agent's certificate", || {
            let running = proc_.check_running();
            let read = std::fs::read_to_string(&chain).ok();
            std::future::ready(match (running, read) {
                (Err(e), _) => Some(Err(e)),
                (Ok(()), Some(pem)) => Some(Ok(pem)),
                (Ok(()), None) => None,
            })
        })
        .await??;
        let pem = std::fs::read_to_string(&chain)?;
        let certs = pem::certs(&pem, "the agent's chain")?;
        Ok(pem::spiffe_id(&certs[0])?.to_string())
    }
}

fn skip() -> bool {
    match unavailable() {
        Some(why) => {
            eprintln!("skipping: {why}");
            true
        }
        None => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_the_certificate_of_its_service_account_with_its_token() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let mut f = Fixture::start("kident-pod", true).await?;
    f.service_account("cart").await?;
    let pod = f.pod("cart-1", "cart").await?;
    let token = f.token("cart", "trellis-ca", Some(&pod)).await?;
    let mut agent = f.agent("cart", &token)?;
    let id = agent
        .identity()
        .await
        .with_context(|| agent.proc_.output())?;
    assert_eq!(
        id,
        format!("spiffe://{}/ns/{NS}/sa/cart", f.cp.trust_domain)
    );
    agent.proc_.check_running()?;
    // The node's log names the pod the token is bound to.
    let log = f.cp.nodes[0].output();
    assert!(
        log.lines()
            .any(|l| l.contains("issued certificate to a pod")
                && l.contains("pod=cart-1")
                && l.contains("/ns/shop/sa/cart")),
        "no log line of the pod's certificate: {log}"
    );

    // The node is away for longer than the certificate's lifetime: the
    // expired certificate proves nothing, so the agent asks with its token
    // again (read anew from its file), without a restart.
    f.cp.stop(1)?;
    let chain = agent.data.join("cert-chain.pem");
    let expiry = || -> anyhow::Result<i64> {
        let pem = std::fs::read_to_string(&chain)?;
        Ok(pem::validity(&pem::certs(&pem, "the agent's chain")?[0])?.1)
    };
    let expired = expiry()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let left = u64::try_from(expired + 1)
        .unwrap_or(0)
        .saturating_sub(now.as_secs());
    tokio::time::sleep(Duration::from_secs(left)).await;
    f.cp.restart(1).await?;
    wait_for(
        Duration::from_secs(60),
        "a new certificate after the old one expired",
        || std::future::ready(expiry().ok().filter(|e| *e > expired)),
    )
    .await
    .with_context(|| agent.proc_.output())?;
    let out = agent.proc_.output();
    assert!(
        out.contains("requesting a new one with the pod's token"),
        "{out}"
    );
    agent.proc_.check_running()?;
    assert_eq!(
        agent.identity().await?,
        format!("spiffe://{}/ns/{NS}/sa/cart", f.cp.trust_domain)
    );
    Ok(())
}

/// `token`'s header and claims signed anew with the RSA key in `key`
/// (RS256): a forged token.
fn resign(token: &str, key: &std::path::Path) -> anyhow::Result<String> {
    let signed = token.rsplit_once('.').context("not a JWT")?.0;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(signed.as_bytes())?;
            child.wait_with_output()
        })?;
    if !out.status.success() {
        bail!("openssl dgst -sign failed");
    }
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_prove_nothing_are_refused_with_their_reason() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let mut f = Fixture::start("kident-east", true).await?;
    // Another cluster, with a service account of the same name.
    // Its mesh node runs outside Kubernetes (no --kubernetes).
    let mut west = Fixture::start("kident-west", false).await?;
    f.service_account("cart").await?;
    west.service_account("cart").await?;
    let genuine = f.token("cart", "trellis-ca", None).await?;

    // East's own token, signed with west's service-account key.
    let forged = resign(&genuine, &west.cluster.dir().join("pki/sa.key"))?;
    let out = f.refused("forged", &forged).await?;
    for want in [
        "the control plane refused the certificate request",
        "did not authenticate the token (forged, expired, or its service account or pod deleted?)",
        // The API server's own words.
        "invalid bearer token",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }

    // West's genuine token, presented to east's node.
    let west_token = west.token("cart", "trellis-ca", None).await?;
    let out = f.refused("west", &west_token).await?;
    let claimed = format!("issuer `{}`", west.cluster.issuer);
    for want in [
        "the token was issued by another Kubernetes cluster",
        claimed.as_str(),
        "a pod must present its token to a control-plane node of its own cluster",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }

    // A token for the API server, not for trellis-ca.
    let api_token = f.token("cart", &f.cluster.issuer, None).await?;
    let out = f.refused("audience", &api_token).await?;
    let want = format!(
        "the token is for audiences [\"{}\"], not `trellis-ca`",
        f.cluster.issuer
    );
    assert!(out.contains(&want), "{want:?} not in: {out}");

    // The token of a service account deleted since.
    f.service_account("gone").await?;
    let orphan = f.token("gone", "trellis-ca", None).await?;
    Api::<ServiceAccount>::namespaced(f.api.clone(), NS)
        .delete("gone", &DeleteParams::default())
        .await?;
    let out = f.refused("deleted", &orphan).await?;
    for want in [
        "did not authenticate the token",
        "serviceaccounts \"gone\" not found",
    ] {
        assert!(out.contains(want), "{want:?} not in: {out}");
    }

    // A genuine token, presented to a node outside Kubernetes.
    let out = west.refused("outsider", &genuine).await?;
    assert!(
        out.contains("this control-plane node does not run in a Kubernetes cluster"),
        "{out}"
    );
    // East's genuine token with a CSR for another service account, sent
    // straight to the CA: refused, naming the one the token proves.
    let tls = AdminConfig::load(&f.cp.admin_config())?.tls_as(None)?;
    let (channel, _) = grpc::connect_any(&[f.cp.nodes[0].addr.clone()], tls, None).await?;
    let admin = format!("spiffe://{}/ns/{NS}/sa/admin", f.cp.trust_domain);
    let s = CaClient::new(channel)
        .issue_certificate(IssueCertificateRequest {
            csr_pem: csr::generate_csr(&admin)?.csr_pem,
            kubernetes_token: genuine.clone(),
            ..Default::default()
        })
        .await
        .expect_err("signed another identity than the token's");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("/ns/shop/sa/cart"), "{}", s.message());

    // The genuine token itself is good: nothing above was refused for
    // something the fixture got wrong.
    let mut agent = f.agent("genuine", &genuine)?;
    agent
        .identity()
        .await
        .with_context(|| agent.proc_.output())?;
    Ok(())
}
