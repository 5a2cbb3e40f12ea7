//! Bad tokens, CSRs and callers are refused, each with its own reason, and
//! refusals change nothing. Each test starts its own one-node control
//! plane (a fraction of a second).

use std::time::Duration;

use base64::Engine;
use tonic::transport::Channel;
use tonic::Code;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::ca_client::CaClient;
use trellis_api::v1::{Empty, IssueCertificateRequest, IssueCertificateResponse};
use trellis_e2e::{wait_for, Cluster};
use trellis_identity::admin_config::AdminConfig;
use trellis_identity::csr::{self, KeyAndCsr};
use trellis_identity::verify::{CertCell, Identity};
use trellis_identity::{grpc, pem};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A TLS client of the cluster's node 1, with `identity` if given.
async fn ca_client(c: &Cluster, identity: Option<&Identity>) -> anyhow::Result<CaClient<Channel>> {
    let cert = identity.map(CertCell::new).transpose()?;
    let tls = AdminConfig::load(&c.admin_config())?.tls_as(cert)?;
    let (ch, _) = grpc::connect_any(&[c.node(1).addr.clone()], tls, None).await?;
    Ok(CaClient::new(ch))
}

fn join_error(res: anyhow::Result<u64>) -> String {
    match res {
        Ok(id) => panic!("the join was accepted (node {id})"),
        Err(e) => e.to_string(),
    }
}

/// The JSON inside a join token.
fn token_json(token: &str) -> anyhow::Result<serde_json::Value> {
    let body = token.strip_prefix("trellis1.").expect("prefix");
    Ok(serde_json::from_slice(&B64.decode(body)?)?)
}

fn token_from_json(json: &serde_json::Value) -> anyhow::Result<String> {
    Ok(format!(
        "trellis1.{}",
        B64.encode(serde_json::to_vec(json)?)
    ))
}

/// A real control-plane token with another secret.
fn with_wrong_secret(c: &Cluster) -> anyhow::Result<String> {
    let mut json = token_json(&c.token(&["--kind", "controlplane"])?)?;
    json["s"] = serde_json::Value::String(B64.encode([9u8; 32]));
    token_from_json(&json)
}

/// The status of token `id` in `trellis token list`.
fn listed_status(c: &Cluster, id: &str) -> anyhow::Result<String> {
    let list = c.cli(&["token", "list", "-o", "json"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list)?;
    Ok(rows
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["status"].as_str())
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_join_token_is_refused_before_any_contact() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let e = join_error(c.join_with("hello", false, &[]).await);
    assert!(e.contains("not a Trellis join token"), "{e}");
    Ok(())
}

/// A token that pins another root: the joiner refuses the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_pinning_another_root_is_refused_by_the_joiner() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let mut json = token_json(&c.token(&["--kind", "controlplane"])?)?;
    json["p"] = serde_json::Value::String("ab".repeat(32));
    let forged = token_from_json(&json)?;
    let e = join_error(c.join_with(&forged, false, &[]).await);
    assert!(e.contains("does not match the join token's pin"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_with_a_wrong_secret_is_refused() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let wrong_secret = with_wrong_secret(&c)?;
    let e = join_error(c.join_with(&wrong_secret, false, &[]).await);
    assert!(e.contains("secret"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_token_cannot_add_a_control_plane_node() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let vm = c.token(&["--kind", "vm", "--identity", "default/web"])?;
    let e = join_error(c.join_with(&vm, false, &[]).await);
    assert!(e.contains("vm") || e.contains("VM"), "{e}");
    Ok(())
}

/// A revoked token is refused, and the token list shows it revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_join_token_is_refused_and_listed_as_revoked() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let revoked = c.token(&["--kind", "controlplane"])?;
    let revoked_id = token_json(&revoked)?["i"].as_str().unwrap().to_string();
    c.cli(&["token", "revoke", &revoked_id])?;
    let e = join_error(c.join_with(&revoked, false, &[]).await);
    assert!(e.contains("revoked"), "{e}");
    assert_eq!(listed_status(&c, &revoked_id)?, "revoked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_join_token_is_refused() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let expired = c.token(&["--kind", "controlplane", "--ttl", "1s"])?;
    let id = token_json(&expired)?["i"].as_str().unwrap().to_string();
    // The control plane lists a token expired by the rule (and the clock)
    // it joins by.
    wait_for(Duration::from_secs(5), "the token expired", || async {
        (listed_status(&c, &id).ok()? == "expired").then_some(())
    })
    .await?;
    let e = join_error(c.join_with(&expired, false, &[]).await);
    assert!(e.contains("expired"), "{e}");
    Ok(())
}

/// Used up: one use, then refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_join_token_is_refused() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let once = c.token(&["--kind", "controlplane", "--uses", "1"])?;
    c.join_with(&once, false, &[]).await?;
    let e = join_error(c.join_with(&once, false, &[]).await);
    assert!(e.contains("used up"), "{e}");
    Ok(())
}

/// Repeated failures from one peer are throttled, with a message that
/// says when to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_from_one_peer_are_throttled() -> anyhow::Result<()> {
    let c = Cluster::init(&[]).await?;
    let wrong_secret = with_wrong_secret(&c)?;
    let mut ca = ca_client(&c, None).await?;
    let mut throttled = None;
    for _ in 0..8 {
        let key = csr::generate_csr("spiffe://e2e.trellis.test/ns/default/sa/web")?;
        let r = ca
            .issue_certificate(IssueCertificateRequest {
                csr_pem: key.csr_pem,
                token: wrong_secret.clone(),
                ttl_seconds: 0,
                ..Default::default()
            })
            .await;
        let s = r.expect_err("a bad token was accepted");
        if s.code() == Code::ResourceExhausted {
            throttled = Some(s.message().to_string());
            break;
        }
    }
    let msg = throttled.expect("repeated failures were never throttled");
    assert!(msg.contains("retry") || msg.contains("try again"), "{msg}");
    Ok(())
}

/// A one-node control plane, a single-use VM token for `default/web`, a
/// CSR for that identity and a CA client without a certificate.
struct Ca {
    c: Cluster,
    token: String,
    key: KeyAndCsr,
    ca: CaClient<Channel>,
}

impl Ca {
    async fn start() -> anyhow::Result<Ca> {
        let c = Cluster::init(&[]).await?;
        let token = c.token(&["--kind", "vm", "--identity", "default/web", "--uses", "1"])?;
        let key = csr::generate_csr(&spiffe(&c, "default", "web"))?;
        let ca = ca_client(&c, None).await?;
        Ok(Ca { c, token, key, ca })
    }

    /// Issues a certificate for the CSR with the token.
    async fn issue(&mut self) -> anyhow::Result<IssueCertificateResponse> {
        Ok(self
            .ca
            .issue_certificate(IssueCertificateRequest {
                csr_pem: self.key.csr_pem.clone(),
                token: self.token.clone(),
                ttl_seconds: 0,
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// The identity of what [`Ca::issue`] returned.
    fn identity(&self, issued: &IssueCertificateResponse) -> anyhow::Result<Identity> {
        Ok(Identity::from_pem(
            &issued.chain_pem.concat(),
            &self.key.key_pem,
        )?)
    }
}

fn spiffe(c: &Cluster, ns: &str, sa: &str) -> String {
    format!("spiffe://{}/ns/{ns}/sa/{sa}", c.trust_domain)
}

/// No token and no certificate: unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_refuses_a_csr_with_neither_a_token_nor_a_certificate() -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let s = ca
        .ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: ca.key.csr_pem.clone(),
            token: String::new(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("issued without proof");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    Ok(())
}

/// A CSR for another identity than the token's: refused, and the
/// single-use token unspent (it issues the right CSR after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_refuses_a_csr_for_another_identity_than_the_tokens_leaving_it_unspent(
) -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let other = csr::generate_csr(&spiffe(&ca.c, "default", "db"))?;
    let s = ca
        .ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: other.csr_pem,
            token: ca.token.clone(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("signed a mismatched identity");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("sa/web"), "{}", s.message());
    ca.issue().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_refuses_a_lifetime_over_the_maximum() -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let s = ca
        .ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: ca.key.csr_pem.clone(),
            token: ca.token.clone(),
            ttl_seconds: 365 * 24 * 3600,
            ..Default::default()
        })
        .await
        .expect_err("accepted a lifetime over the maximum");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_refuses_garbage_instead_of_a_csr() -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let s = ca
        .ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            token: ca.token.clone(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("accepted garbage");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    Ok(())
}

/// The right CSR with the token: a 24 h leaf for exactly that identity,
/// chained to the root in the trust bundle, which the mesh accepts as a
/// client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_issues_a_24h_leaf_for_exactly_the_tokens_identity() -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let issued = ca.issue().await?;
    let chain = pem::certs(&issued.chain_pem.concat(), "chain")?;
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(
        pem::spiffe_id(&chain[0])?.to_string(),
        spiffe(&ca.c, "default", "web")
    );
    let lifetime = issued.not_after_unix
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
    assert!(
        (23 * 3600..=24 * 3600 + 60).contains(&lifetime),
        "lifetime {lifetime}s"
    );
    let identity = ca.identity(&issued)?;
    let mut client = ca_client(&ca.c, Some(&identity)).await?;
    let bundle = client.get_trust_bundle(Empty {}).await?.into_inner();
    assert_eq!(bundle.roots_pem, issued.trust_bundle_pem);
    Ok(())
}

/// The token had one use: spent by the first certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_is_spent_by_its_first_certificate() -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    ca.issue().await?;
    let again = csr::generate_csr(&spiffe(&ca.c, "default", "web"))?;
    let s = ca
        .ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: again.csr_pem,
            token: ca.token.clone(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("a used-up token was accepted");
    assert!(s.message().contains("used up"), "{}", s.message());
    Ok(())
}

/// Renewal with the current certificate: the same identity only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_the_current_certificate_gives_the_same_identity_and_no_other(
) -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let issued = ca.issue().await?;
    let mut renew = ca_client(&ca.c, Some(&ca.identity(&issued)?)).await?;
    let again = csr::generate_csr(&spiffe(&ca.c, "default", "web"))?;
    let renewed = renew
        .issue_certificate(IssueCertificateRequest {
            csr_pem: again.csr_pem,
            token: String::new(),
            ttl_seconds: 3600,
            ..Default::default()
        })
        .await?
        .into_inner();
    let leaf = pem::certs(&renewed.chain_pem[0], "leaf")?;
    assert_eq!(
        pem::spiffe_id(&leaf[0])?.to_string(),
        spiffe(&ca.c, "default", "web")
    );
    let other = csr::generate_csr(&spiffe(&ca.c, "kube-system", "admin"))?;
    let s = renew
        .issue_certificate(IssueCertificateRequest {
            csr_pem: other.csr_pem,
            token: String::new(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .expect_err("renewal escalated to another identity");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_identity_may_not_use_the_admin_api() -> anyhow::Result<()> {
    let mut ca = Ca::start().await?;
    let issued = ca.issue().await?;
    let identity = ca.identity(&issued)?;
    let tls = AdminConfig::load(&ca.c.admin_config())?.tls_as(Some(CertCell::new(&identity)?))?;
    let (ch, _) = grpc::connect_any(&[ca.c.node(1).addr.clone()], tls, None).await?;
    let s = AdminClient::new(ch)
        .members(Empty {})
        .await
        .expect_err("a workload used the admin API");
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_key_is_refused_at_join_and_at_start() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;
    let other_key = c.root.path().join("other.key");
    std::fs::write(
        &other_key,
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode([3u8; 32])
        ),
    )?;
    let token = c.token(&["--kind", "controlplane"])?;
    let key_arg = other_key.display().to_string();
    let e = join_error(
        c.join_with(&token, false, &["--ca-key-file", &key_arg])
            .await,
    );
    assert!(e.contains("not this mesh's CA key"), "{e}");

    // Node 1 refuses to start with a wrong key.
    c.stop(1)?;
    let out = std::process::Command::new(trellis_e2e::bin("trellis-controlplane"))
        .args(["run", "--data-dir"])
        .arg(&c.node(1).dir)
        .args(["--listen", &c.node(1).addr, "--ca-key-file", &key_arg])
        .output()?;
    assert!(!out.status.success(), "started with a wrong CA key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("seal key is wrong") || err.contains("CA key"),
        "{err}"
    );
    // With the right key it starts, and the data is intact.
    c.restart(1).await?;
    c.wait_writable(1).await?;
    Ok(())
}
