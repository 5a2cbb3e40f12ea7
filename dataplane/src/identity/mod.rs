//! The agent's workload certificate: where it comes from and how it stays
//! fresh.
//!
//! - From files (`--cert-chain`, `--key`, `--roots`), for tests and for
//!   certificates issued by other means. Not renewed.
//! - From the control plane with a VM join token (`--token`): the key is
//!   generated here and never leaves the host; the CSR goes to the CA over
//!   TLS that trusts only the root pinned in the token. Key, chain and roots
//!   are kept in the data directory (0600), so a restarted agent resumes
//!   without the token (which may be used up by then). The certificate is
//!   renewed at half its lifetime over mTLS with the current certificate;
//!   while the control plane is unreachable the agent keeps serving on what
//!   it has and retries.
//! - From the control plane with a Kubernetes pod's projected
//!   service-account token (`--kube-token-file`, audience `trellis-ca`):
//!   the same, but the first CSR carries the token, read anew from its file
//!   (the kubelet rotates it), for the identity of its service account; the
//!   control plane is reached at `--control-plane` and trusted through the
//!   mesh's root (`--roots`), whose URI SAN names the trust domain.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use trellis_api::v1::ca_client::CaClient;
use trellis_api::v1::IssueCertificateRequest;
use trellis_identity::files::write_private;
use trellis_identity::join_token::JoinToken;
use trellis_identity::kube_token::{Claims, KubeTokenError};
use trellis_identity::verify::{
    client_config, Expect, Identity, PinnedRootVerifier, SpiffeServerVerifier,
};
use trellis_identity::{csr, grpc, pem, SpiffeId};

use crate::tls::MeshTls;

/// Why the agent has no certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] trellis_identity::join_token::TokenParseError),
    #[error(
        "this join token carries no workload identity, so it cannot give the agent a \
         certificate; create a VM token with `trellis token create --kind vm --identity NS/SA`"
    )]
    NotAVmToken,
    #[error("{0}")]
    Certificate(#[from] trellis_identity::IdentityError),
    #[error("the service-account token in {path}: {source}")]
    KubeToken {
        path: PathBuf,
        source: KubeTokenError,
    },
    #[error("cannot make a key and CSR: {0}")]
    Csr(#[from] csr::CsrGenError),
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
    #[error("no identity: pass --token, --kube-token-file, or --cert-chain, --key and --roots")]
    NoSource,
}

/// Where the certificate comes from.
#[derive(Clone, Debug)]
pub enum Source {
    Files {
        chain: PathBuf,
        key: PathBuf,
        roots: PathBuf,
    },
    Token {
        /// The token string; `None` when resuming from the data directory.
        token: Option<String>,
        data_dir: PathBuf,
    },
    /// A pod's projected service-account token.
    Kubernetes {
        token_file: PathBuf,
        /// The mesh's root certificate(s), to trust the control plane by.
        roots: PathBuf,
        control_plane: Vec<String>,
        data_dir: PathBuf,
    },
}

impl Source {
    /// Where an obtained certificate is kept and renewed from; `None`:
    /// it comes from files and is not renewed.
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            Source::Files { .. } => None,
            Source::Token { data_dir, .. } | Source::Kubernetes { data_dir, .. } => Some(data_dir),
        }
    }
}

/// What authorizes a certificate request.
enum Proof<'a> {
    /// The caller's current certificate (renewal), on the TLS connection.
    Certificate,
    JoinToken(&'a str),
    KubernetesToken(&'a str),
}

/// A certificate in hand.
pub struct Loaded {
    pub identity: Identity,
    pub id: SpiffeId,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_after: i64,
    /// Control-plane addresses to renew with (token mode only).
    pub control_plane: Vec<String>,
    /// The WorkloadGroup the token named, to register in (token mode only).
    pub group: Option<String>,
}

const KEY: &str = "key.pem";
const CHAIN: &str = "cert-chain.pem";
const ROOTS: &str = "root-cert.pem";
const ADDRS: &str = "control-plane.json";
const GROUP: &str = "workload-group";

/// Loads or obtains the certificate; connections to the control plane
/// carry `mark` if given (the capture mark).
pub async fn load(source: &Source, mark: Option<u32>) -> Result<Loaded, IdentityError> {
    match source {
        Source::Files { chain, key, roots } => {
            from_pem(&read(chain)?, &read(key)?, &read(roots)?, Vec::new())
        }
        Source::Token { token, data_dir } => {
            if let Some(loaded) = resume(data_dir)? {
                return Ok(loaded);
            }
            let token = token.as_deref().ok_or(IdentityError::NoSource)?;
            redeem(token, &[], data_dir, mark).await
        }
        Source::Kubernetes {
            token_file,
            roots,
            control_plane,
            data_dir,
        } => {
            if let Some(loaded) = resume(data_dir)? {
                return Ok(loaded);
            }
            from_pod_token(token_file, roots, control_plane, data_dir, mark).await
        }
    }
}

/// Gets the first certificate of a pod with its service-account token
/// (read now: the kubelet rotates it) from the control plane at `addrs`,
/// trusted through `roots_file`, and keeps it in `data_dir`.
async fn from_pod_token(
    token_file: &Path,
    roots_file: &Path,
    addrs: &[String],
    data_dir: &Path,
    mark: Option<u32>,
) -> Result<Loaded, IdentityError> {
    let token = read(token_file)?;
    let bad_token = |source| IdentityError::KubeToken {
        path: token_file.into(),
        source,
    };
    let claims = Claims::decode(&token).map_err(bad_token)?;
    let (ns, sa) = claims.service_account().map_err(bad_token)?;
    let roots = pem::certs(&read(roots_file)?, &roots_file.display().to_string())?;
    let trust_domain = pem::root_trust_domain(&roots[0])?;
    let id = SpiffeId::workload(&trust_domain, ns, sa);
    let verifier = SpiffeServerVerifier::new(&roots, Expect::AnyControlPlane { trust_domain })?;
    let tls = client_config(None, Arc::new(verifier))?;
    let (channel, addr) = grpc::connect_any(addrs, Arc::new(tls), mark).await?;
    tracing::info!(%addr, %id, "requesting the workload certificate with the pod's service-account token");
    let proof = Proof::KubernetesToken(token.trim());
    issue(channel, &id, proof, data_dir, addrs.to_vec()).await
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.into(),
        source,
    })
}

fn from_pem(
    chain: &str,
    key: &str,
    roots: &str,
    control_plane: Vec<String>,
) -> Result<Loaded, IdentityError> {
    let identity = Identity::from_pem(chain, key)?;
    let roots = pem::certs(roots, "trust bundle")?;
    let id = pem::spiffe_id(&identity.chain[0])?;
    let (_, not_after) = pem::validity(&identity.chain[0])?;
    Ok(Loaded {
        identity,
        id,
        roots,
        not_after,
        control_plane,
        group: None,
    })
}

/// The certificate kept in `data_dir`, if there is one still valid.
fn resume(data_dir: &Path) -> Result<Option<Loaded>, IdentityError> {
    let chain = data_dir.join(CHAIN);
    if !chain.exists() {
        return Ok(None);
    }
    let addrs: Vec<String> =
        serde_json::from_str(&read(&data_dir.join(ADDRS))?).unwrap_or_default();
    let mut loaded = from_pem(
        &read(&chain)?,
        &read(&data_dir.join(KEY))?,
        &read(&data_dir.join(ROOTS))?,
        addrs,
    )?;
    loaded.group = std::fs::read_to_string(data_dir.join(GROUP))
        .ok()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty());
    if loaded.not_after <= unix_now() {
        tracing::warn!(
            not_after = %trellis_identity::rfc3339::format_rfc3339(loaded.not_after as u64),
            "the stored certificate has expired; requesting a new one with the token"
        );
        return Ok(None);
    }
    Ok(Some(loaded))
}

/// Gets the first certificate with a VM join token from the control plane
/// at `addrs` (the token's when empty), trusted only if its root matches
/// the token's pin, and keeps it in `data_dir` (where [`load`] resumes
/// from). `trellis vm join` calls it before the agent's unit starts.
pub async fn redeem(
    token_str: &str,
    addrs: &[String],
    data_dir: &Path,
    mark: Option<u32>,
) -> Result<Loaded, IdentityError> {
    let token = JoinToken::parse(token_str)?;
    let id = token.workload_id().ok_or(IdentityError::NotAVmToken)?;
    let addrs = if addrs.is_empty() {
        &token.addrs[..]
    } else {
        addrs
    };
    let tls = client_config(None, Arc::new(PinnedRootVerifier::new(token.root_pin)))?;
    let (channel, addr) = grpc::connect_any(addrs, Arc::new(tls), mark).await?;
    tracing::info!(%addr, %id, "requesting the workload certificate with the join token");
    let proof = Proof::JoinToken(token_str);
    let mut loaded = issue(channel, &id, proof, data_dir, addrs.to_vec()).await?;
    if let Some(g) = &token.group {
        let path = data_dir.join(GROUP);
        write_private(&path, g.as_bytes())
            .map_err(|source| IdentityError::Write { path, source })?;
        loaded.group = Some(g.clone());
    }
    Ok(loaded)
}

async fn issue(
    channel: tonic::transport::Channel,
    id: &SpiffeId,
    proof: Proof<'_>,
    data_dir: &Path,
    control_plane: Vec<String>,
) -> Result<Loaded, IdentityError> {
    let kc = csr::generate_csr(&id.to_string())?;
    let mut req = IssueCertificateRequest {
        csr_pem: kc.csr_pem,
        ..Default::default()
    };
    match proof {
        Proof::Certificate => {}
        Proof::JoinToken(t) => req.token = t.to_string(),
        Proof::KubernetesToken(t) => req.kubernetes_token = t.to_string(),
    }
    let resp = CaClient::new(channel)
        .issue_certificate(req)
        .await
        .map_err(|s| IdentityError::Refused(s.message().to_string()))?
        .into_inner();
    let chain = resp.chain_pem.concat();
    let roots = resp.trust_bundle_pem.concat();
    let loaded = from_pem(&chain, &kc.key_pem, &roots, control_plane)?;
    std::fs::create_dir_all(data_dir).map_err(|source| IdentityError::Write {
        path: data_dir.into(),
        source,
    })?;
    let addrs = serde_json::to_vec(&loaded.control_plane).unwrap_or_default();
    for (name, data) in [
        (KEY, kc.key_pem.as_bytes()),
        (CHAIN, chain.as_bytes()),
        (ROOTS, roots.as_bytes()),
        (ADDRS, &addrs[..]),
    ] {
        let path = data_dir.join(name);
        write_private(&path, data).map_err(|source| IdentityError::Write { path, source })?;
    }
    Ok(loaded)
}

/// Renews the certificate in `tls` when half of its remaining lifetime has
/// passed (the CA backdates `notBefore`, so the remaining lifetime, not the
/// whole, is what counts), for as long as the agent runs. After a failure it
/// retries with backoff (capped at a minute) and keeps the current
/// certificate meanwhile. A pod whose certificate expired meanwhile (the
/// control plane was out of reach for longer than its lifetime) asks with
/// its service-account token again, as at start.
pub async fn renew_forever(
    tls: Arc<MeshTls>,
    source: Source,
    mut not_after: i64,
    control_plane: Vec<String>,
    mark: Option<u32>,
) {
    let Some(data_dir) = source.data_dir() else {
        return;
    };
    let mut retry = Duration::from_secs(1);
    loop {
        let wait = ((not_after - unix_now()) / 2).max(1) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
        loop {
            let renewed = match pod_token_renewal(&source, not_after, unix_now()) {
                Some((token_file, roots, addrs)) => {
                    tracing::warn!(
                        not_after = %trellis_identity::rfc3339::format_rfc3339(not_after as u64),
                        "the workload certificate has expired; requesting a new one with the pod's token"
                    );
                    from_pod_token(token_file, roots, addrs, data_dir, mark)
                        .await
                        .and_then(|l| install(&tls, l))
                }
                None => renew_once(&tls, &control_plane, data_dir, mark).await,
            };
            match renewed {
                Ok(l) => {
                    tracing::info!(
                        not_after = %trellis_identity::rfc3339::format_rfc3339(l.not_after as u64),
                        "renewed the workload certificate"
                    );
                    not_after = l.not_after;
                    retry = Duration::from_secs(1);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "certificate renewal failed; still serving on the current certificate");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

async fn renew_once(
    tls: &MeshTls,
    control_plane: &[String],
    data_dir: &Path,
    mark: Option<u32>,
) -> Result<Loaded, IdentityError> {
    let verifier = SpiffeServerVerifier::new(
        &tls.roots(),
        Expect::AnyControlPlane {
            trust_domain: tls.identity().trust_domain().to_string(),
        },
    )?;
    let config = client_config(Some(tls.cert().clone()), Arc::new(verifier))?;
    let (channel, _) = grpc::connect_any(control_plane, Arc::new(config), mark).await?;
    let loaded = issue(
        channel,
        tls.identity(),
        Proof::Certificate,
        data_dir,
        control_plane.to_vec(),
    )
    .await?;
    install(tls, loaded)
}

/// Serves on `loaded` from now on.
fn install(tls: &MeshTls, loaded: Loaded) -> Result<Loaded, IdentityError> {
    tls.cert().set(&loaded.identity)?;
    tls.set_roots(loaded.roots.clone())?;
    Ok(loaded)
}

/// The pod token file, roots file and control-plane addresses to renew
/// with when the certificate (valid until `not_after`) has expired by
/// `now` and `source` is a pod's: an expired certificate proves nothing to
/// the control plane, the token (read anew: the kubelet rotates it) does.
/// `None`: renew with the current certificate.
fn pod_token_renewal(
    source: &Source,
    not_after: i64,
    now: i64,
) -> Option<(&Path, &Path, &[String])> {
    match source {
        Source::Kubernetes {
            token_file,
            roots,
            control_plane,
            ..
        } if not_after <= now => Some((token_file, roots, control_plane)),
        _ => None,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod's source whose token file holds `token` (none: no file).
    fn pod(dir: &Path, token: Option<&str>) -> Source {
        let token_file = dir.join("token");
        if let Some(t) = token {
            std::fs::write(&token_file, t).unwrap();
        }
        Source::Kubernetes {
            token_file,
            roots: dir.join("root-cert.pem"),
            // Never reached: each case fails before connecting.
            control_plane: vec!["192.0.2.1:15012".into()],
            data_dir: dir.join("data"),
        }
    }

    #[test]
    fn only_a_pod_renews_an_expired_certificate_with_its_token() {
        let dir = Path::new("/pod");
        let pod = pod(dir, None);
        let (now, valid, expired) = (1_000, 1_001, 1_000);
        assert_eq!(pod_token_renewal(&pod, valid, now), None);
        assert_eq!(
            pod_token_renewal(&pod, expired, now),
            Some((
                dir.join("token").as_path(),
                dir.join("root-cert.pem").as_path(),
                &["192.0.2.1:15012".to_string()][..]
            ))
        );
        // A VM's join token was redeemed once: nothing to fall back to.
        let vm = Source::Token {
            token: None,
            data_dir: dir.join("data"),
        };
        assert_eq!(pod_token_renewal(&vm, expired, now), None);
    }

    #[tokio::test]
    async fn a_pods_token_that_names_no_service_account_fails_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token").display().to_string();
        let missing = load(&pod(dir.path(), None), None).await.err().unwrap();
        assert!(
            missing
                .to_string()
                .starts_with(&format!("cannot read {path}: ")),
            "{missing}"
        );
        let garbage = load(&pod(dir.path(), Some("not-a-jwt\n")), None)
            .await
            .err()
            .unwrap();
        assert_eq!(
            garbage.to_string(),
            format!(
                "the service-account token in {path}: not a Kubernetes service-account token: \
                 expected a JWT (three base64url parts separated by `.`), not three parts"
            )
        );
        // A user's token (eyJzdWIiOiJhbGljZSJ9: {"sub":"alice"}).
        let user = "e30.eyJzdWIiOiJhbGljZSJ9.c2ln";
        let err = load(&pod(dir.path(), Some(user)), None)
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "the service-account token in {path}: the token's subject `alice` is not a \
                 service account (system:serviceaccount:NS:SA)"
            )
        );
    }
}
