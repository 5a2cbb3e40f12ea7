//! Bad tokens, CSRs and callers are refused, each with its own reason, and
//! refusals change nothing.

use base64::Engine;
use tonic::Code;
use trellis_api::v1::admin_client::AdminClient;
use trellis_api::v1::ca_client::CaClient;
use trellis_api::v1::{Empty, IssueCertificateRequest};
use trellis_e2e::Cluster;
use trellis_identity::admin_config::AdminConfig;
use trellis_identity::verify::{CertCell, Identity};
use trellis_identity::{csr, grpc, pem};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A TLS client of the cluster's node 1, with `identity` if given.
async fn ca_client(
    c: &Cluster,
    identity: Option<&Identity>,
) -> anyhow::Result<CaClient<tonic::transport::Channel>> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_tokens_are_refused_each_with_its_reason_then_throttled() -> anyhow::Result<()> {
    let mut c = Cluster::init(&[]).await?;

    // Garbled: refused before any contact.
    let e = join_error(c.join_with("hello", false, &[]).await);
    assert!(e.contains("not a Trellis join token"), "{e}");

    // A token that pins another root: the joiner refuses the server.
    let good = c.token(&["--kind", "controlplane"])?;
    let body = good.strip_prefix("trellis1.").expect("prefix");
    let mut json: serde_json::Value = serde_json::from_slice(&B64.decode(body)?)?;
    json["p"] = serde_json::Value::String("ab".repeat(32));
    let forged = format!("trellis1.{}", B64.encode(serde_json::to_vec(&json)?));
    let e = join_error(c.join_with(&forged, false, &[]).await);
    assert!(e.contains("does not match the join token's pin"), "{e}");

    // A wrong secret for a real id.
    let mut json: serde_json::Value = serde_json::from_slice(&B64.decode(body)?)?;
    json["s"] = serde_json::Value::String(B64.encode([9u8; 32]));
    let wrong_secret = format!("trellis1.{}", B64.encode(serde_json::to_vec(&json)?));
    let e = join_error(c.join_with(&wrong_secret, false, &[]).await);
    assert!(e.contains("secret"), "{e}");

    // A vm token cannot add a control-plane node.
    let vm = c.token(&["--kind", "vm", "--identity", "default/web"])?;
    let e = join_error(c.join_with(&vm, false, &[]).await);
    assert!(e.contains("vm") || e.contains("VM"), "{e}");

    // Revoked.
    let revoked = c.token(&["--kind", "controlplane"])?;
    let revoked_id = {
        let body = revoked.strip_prefix("trellis1.").unwrap();
        let j: serde_json::Value = serde_json::from_slice(&B64.decode(body)?)?;
        j["i"].as_str().unwrap().to_string()
    };
    c.cli(&["token", "revoke", &revoked_id])?;
    let e = join_error(c.join_with(&revoked, false, &[]).await);
    assert!(e.contains("revoked"), "{e}");

    // Expired.
    let expired = c.token(&["--kind", "controlplane", "--ttl", "1s"])?;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let e = join_error(c.join_with(&expired, false, &[]).await);
    assert!(e.contains("expired"), "{e}");

    // Used up: one use, then refused.
    let once = c.token(&["--kind", "controlplane", "--uses", "1"])?;
    c.join_with(&once, false, &[]).await?;
    let e = join_error(c.join_with(&once, false, &[]).await);
    assert!(e.contains("used up"), "{e}");

    // The token list shows each state.
    let list = c.cli(&["token", "list", "-o", "json"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list)?;
    let status = |id: &str| {
        rows.iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["status"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(status(&revoked_id), "revoked");

    // Repeated failures from one peer are throttled.
    let mut ca = ca_client(&c, None).await?;
    let mut throttled = None;
    for _ in 0..8 {
        let key = csr::generate_csr("spiffe://e2e.trellis.test/ns/default/sa/web")?;
        let r = ca
            .issue_certificate(IssueCertificateRequest {
                csr_pem: key.csr_pem,
                token: wrong_secret.clone(),
                ttl_seconds: 0,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_signs_only_the_identity_the_caller_proved() -> anyhow::Result<()> {
    let c = Cluster::init(&[]).await?;
    let td = &c.trust_domain;
    let token = c.token(&["--kind", "vm", "--identity", "default/web", "--uses", "1"])?;
    let mut ca = ca_client(&c, None).await?;

    // No token and no certificate.
    let key = csr::generate_csr(&format!("spiffe://{td}/ns/default/sa/web"))?;
    let s = ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: key.csr_pem.clone(),
            token: String::new(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("issued without proof");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // A CSR for another identity than the token's: refused, token unspent.
    let other = csr::generate_csr(&format!("spiffe://{td}/ns/default/sa/db"))?;
    let s = ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: other.csr_pem,
            token: token.clone(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("signed a mismatched identity");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("sa/web"), "{}", s.message());

    // A lifetime over the maximum: refused.
    let s = ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: key.csr_pem.clone(),
            token: token.clone(),
            ttl_seconds: 365 * 24 * 3600,
        })
        .await
        .expect_err("accepted a lifetime over the maximum");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // Garbage instead of a CSR.
    let s = ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            token: token.clone(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("accepted garbage");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // The right CSR with the token: a 24 h leaf for exactly that identity,
    // chained to the root in the trust bundle.
    let issued = ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: key.csr_pem.clone(),
            token: token.clone(),
            ttl_seconds: 0,
        })
        .await?
        .into_inner();
    let chain = pem::certs(&issued.chain_pem.concat(), "chain")?;
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    assert_eq!(
        pem::spiffe_id(&chain[0])?.to_string(),
        format!("spiffe://{td}/ns/default/sa/web")
    );
    let lifetime = issued.not_after_unix
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64;
    assert!(
        (23 * 3600..=24 * 3600 + 60).contains(&lifetime),
        "lifetime {lifetime}s"
    );
    let identity = Identity::from_pem(&issued.chain_pem.concat(), &key.key_pem)?;
    // The mesh verifies it: the server accepts it as a client certificate.
    let mut renew = ca_client(&c, Some(&identity)).await?;
    let bundle = renew.get_trust_bundle(Empty {}).await?.into_inner();
    assert_eq!(bundle.roots_pem, issued.trust_bundle_pem);

    // The token had one use: it is spent now.
    let again = csr::generate_csr(&format!("spiffe://{td}/ns/default/sa/web"))?;
    let s = ca
        .issue_certificate(IssueCertificateRequest {
            csr_pem: again.csr_pem.clone(),
            token: token.clone(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("a used-up token was accepted");
    assert!(s.message().contains("used up"), "{}", s.message());

    // Renewal with the current certificate: the same identity only.
    let renewed = renew
        .issue_certificate(IssueCertificateRequest {
            csr_pem: again.csr_pem,
            token: String::new(),
            ttl_seconds: 3600,
        })
        .await?
        .into_inner();
    let leaf = pem::certs(&renewed.chain_pem[0], "leaf")?;
    assert_eq!(
        pem::spiffe_id(&leaf[0])?.to_string(),
        format!("spiffe://{td}/ns/default/sa/web")
    );
    let other = csr::generate_csr(&format!("spiffe://{td}/ns/kube-system/sa/admin"))?;
    let s = renew
        .issue_certificate(IssueCertificateRequest {
            csr_pem: other.csr_pem,
            token: String::new(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("renewal escalated to another identity");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");

    // A workload identity may not use the admin API.
    let tls = AdminConfig::load(&c.admin_config())?.tls_as(Some(CertCell::new(&identity)?))?;
    let (ch, _) = grpc::connect_any(&[c.node(1).addr.clone()], tls, None).await?;
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
