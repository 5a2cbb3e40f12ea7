//! Pod identity: a pod's projected service-account token (audience
//! `trellis-ca`) reviewed by its own cluster's API server.
//!
//! [`Reviewer::review`] sends a TokenReview (authentication.k8s.io/v1,
//! `spec.audiences: [trellis-ca]`) and [`verdict`] decides, as a plain
//! function of the API server's answer and of the token's unverified
//! claims, who the token belongs to or why it is refused. The claims only
//! make a refusal say what to fix (another cluster's issuer, the wrong
//! audience, an expiry): the API server alone vouches for a token. The
//! node needs RBAC `create` on `tokenreviews` (docs/kubernetes.md).
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;
use trellis_identity::kube_token::{service_account_user, Claims, KubeTokenError};
use trellis_identity::rfc3339::format_rfc3339;
use trellis_identity::spiffe::GATEWAY_NAMESPACE;

pub use trellis_identity::kube_token::AUDIENCE;

/// The `extra` key of a reviewed token bound to a pod.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// Whom the API server says a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
    /// The pod the token is bound to, if the API server says.
    pub pod: Option<String>,
}

/// Why a token gives no identity; each says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the token was issued by another Kubernetes cluster (issuer `{claimed}`; this \
         control-plane node's cluster is `{ours}`): a pod must present its token to a \
         control-plane node of its own cluster (the API server said: {error})"
    )]
    OtherCluster {
        claimed: String,
        ours: String,
        error: String,
    },
    #[error(
        "the token is for audiences {audiences:?}, not `{AUDIENCE}`: give the agent a projected \
         service-account token with `audience: {AUDIENCE}` (--kube-token-file)"
    )]
    Audience { audiences: Vec<String> },
    #[error(
        "the token expired at {at}: the kubelet renews a projected token in its file, and the \
         agent reads the file anew on each try (the API server said: {error})"
    )]
    Expired { at: String, error: String },
    #[error(
        "the cluster's API server did not authenticate the token (forged, expired, or its \
         service account or pod deleted?): {error}{}",
        issuer_hint(.issuer)
    )]
    NotAuthenticated {
        error: String,
        /// The issuer the token claims, when this node does not know its
        /// own cluster's.
        issuer: Option<String>,
    },
    #[error(
        "the token cannot be read ({reason}), and the API server did not authenticate it: {error}"
    )]
    Unreadable { reason: String, error: String },
    #[error("the token authenticates `{0}`, which is not a service account (system:serviceaccount:NS:SA)")]
    NotAServiceAccount(String),
    #[error(
        "namespace {GATEWAY_NAMESPACE} is Trellis's own: its identities (the east-west \
         gateways') come from gateway join tokens, not from pods' service accounts"
    )]
    ReservedNamespace,
}

fn issuer_hint(issuer: &Option<String>) -> String {
    match issuer {
        Some(iss) => format!(
            "; the token claims issuer `{iss}`: a token of another cluster must be presented \
             to a control-plane node of that cluster"
        ),
        None => String::new(),
    }
}

/// Why a review did not happen or did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "cannot review the token with the cluster's API server (the control-plane node's \
         account needs `create` on `tokenreviews.authentication.k8s.io`)"
    )]
    Api(#[source] kube::Error),
}

/// The API server's `status` of a TokenReview of a token with `claims`
/// (`Err`: they cannot be read), judged: `our_issuer` is the issuer of
/// this cluster's tokens if known, `now` unix seconds.
pub fn verdict(
    status: &TokenReviewStatus,
    claims: Result<&Claims, &KubeTokenError>,
    our_issuer: Option<&str>,
    now: i64,
) -> Result<Reviewed, Refusal> {
    if status.authenticated != Some(true) {
        let error = status
            .error
            .clone()
            .unwrap_or_else(|| "no reason given".into());
        let claims = claims.map_err(|e| Refusal::Unreadable {
            reason: e.to_string(),
            error: error.clone(),
        })?;
        return Err(match our_issuer {
            Some(ours) if ours != claims.iss => Refusal::OtherCluster {
                claimed: claims.iss.clone(),
                ours: ours.to_string(),
                error,
            },
            _ if !claims.audiences().iter().any(|a| a == AUDIENCE) => Refusal::Audience {
                audiences: claims.audiences().to_vec(),
            },
            _ => match claims.exp.filter(|&exp| exp <= now) {
                Some(exp) => Refusal::Expired {
                    at: format_rfc3339(exp.max(0) as u64),
                    error,
                },
                None => Refusal::NotAuthenticated {
                    error,
                    issuer: our_issuer.is_none().then(|| claims.iss.clone()),
                },
            },
        });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((ns, sa)) = service_account_user(&username) else {
        return Err(Refusal::NotAServiceAccount(username));
    };
    if ns == GATEWAY_NAMESPACE {
        return Err(Refusal::ReservedNamespace);
    }
    // An API server that does not know audiences would authenticate a
    // token for any: the answer must name ours (TokenReviewStatus docs).
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == AUDIENCE) {
        return Err(Refusal::Audience { audiences });
    }
    let pod = user
        .extra
        .and_then(|mut e| e.remove(POD_NAME))
        .and_then(|names| names.into_iter().next());
    Ok(Reviewed {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
        pod,
    })
}

/// Reviews pods' tokens with one cluster's API server.
pub struct Reviewer {
    client: kube::Client,
    /// The issuer of the cluster's tokens, once read from its discovery
    /// document.
    issuer: OnceCell<String>,
}

impl Reviewer {
    pub fn new(client: kube::Client) -> Reviewer {
        Reviewer {
            client,
            issuer: OnceCell::new(),
        }
    }

    /// Whom `token` belongs to, if the API server authenticates it for
    /// [`AUDIENCE`].
    pub async fn review(&self, token: &str) -> Result<Reviewed, ReviewError> {
        let token = token.trim();
        let review = TokenReview {
            spec: TokenReviewSpec {
                audiences: Some(vec![AUDIENCE.to_string()]),
                token: Some(token.to_string()),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(ReviewError::Api)?;
        let status = answer.status.unwrap_or_default();
        let claims = Claims::decode(token);
        let ours = match status.authenticated {
            Some(true) => None,
            _ => self.issuer().await,
        };
        Ok(verdict(&status, claims.as_ref(), ours, unix_now())?)
    }

    /// The issuer of this cluster's service-account tokens, from its
    /// OpenID discovery document; `None` if the API server does not serve
    /// it (then a refusal names the token's issuer without comparing).
    async fn issuer(&self) -> Option<&str> {
        let read = self
            .issuer
            .get_or_try_init(|| async {
                let req = http::Request::get("/.well-known/openid-configuration")
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?;
                let doc: serde_json::Value =
                    self.client.request(req).await.map_err(|e| e.to_string())?;
                doc["issuer"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "no `issuer` in it".to_string())
            })
            .await;
        match read {
            Ok(iss) => Some(iss),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster's OpenID discovery document");
                None
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    const EAST: &str = "https://kubernetes.default.svc.east";
    const NOW: i64 = 1_800_000_000;

    fn authenticated(user: &str, audiences: &[&str], pod: Option<&str>) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                extra: pod.map(|p| BTreeMap::from([(POD_NAME.to_string(), vec![p.to_string()])])),
                ..Default::default()
            }),
            error: None,
        }
    }

    fn refused(error: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(false),
            error: Some(error.into()),
            ..Default::default()
        }
    }

    fn claims(iss: &str, aud: &[&str], exp: i64) -> Claims {
        let json = serde_json::json!({"iss": iss, "aud": aud, "exp": exp, "sub": "system:serviceaccount:shop:cart"});
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_authenticated_service_account_for_trellis_ca_is_its_namespace_and_name() {
        let c = claims(EAST, &[AUDIENCE], NOW + 600);
        let status = authenticated(
            "system:serviceaccount:shop:cart",
            &[AUDIENCE],
            Some("cart-7d9"),
        );
        assert_eq!(
            verdict(&status, Ok(&c), None, NOW),
            Ok(Reviewed {
                namespace: "shop".into(),
                service_account: "cart".into(),
                pod: Some("cart-7d9".into()),
            })
        );
        let unbound = authenticated("system:serviceaccount:shop:cart", &[AUDIENCE], None);
        assert_eq!(verdict(&unbound, Ok(&c), None, NOW).unwrap().pod, None);
    }

    #[test]
    fn an_authenticated_token_must_be_a_service_account_for_our_audience() {
        let c = claims(EAST, &[AUDIENCE], NOW + 600);
        let user = authenticated("alice", &[AUDIENCE], None);
        assert_eq!(
            verdict(&user, Ok(&c), None, NOW),
            Err(Refusal::NotAServiceAccount("alice".into()))
        );
        let gateway = authenticated(
            "system:serviceaccount:trellis-system:eastwest-gateway-net-west",
            &[AUDIENCE],
            None,
        );
        assert_eq!(
            verdict(&gateway, Ok(&c), None, NOW),
            Err(Refusal::ReservedNamespace)
        );
        // An API server that ignored spec.audiences.
        let any = authenticated("system:serviceaccount:shop:cart", &[], None);
        assert_eq!(
            verdict(&any, Ok(&c), None, NOW),
            Err(Refusal::Audience { audiences: vec![] })
        );
    }

    #[test]
    fn a_refused_token_is_explained_by_what_it_claims() {
        let error = "[invalid bearer token, square/go-jose: error in cryptographic primitive]";
        let status = refused(error);
        let west = claims(
            "https://kubernetes.default.svc.west",
            &[AUDIENCE],
            NOW + 600,
        );
        let api = claims(EAST, &["https://kubernetes.default.svc"], NOW + 600);
        let expired = claims(EAST, &[AUDIENCE], NOW - 1);
        let forged = claims(EAST, &[AUDIENCE], NOW + 600);
        let unreadable = KubeTokenError::NotAJwt("not three parts");
        // (claims, this cluster's issuer if known, the refusal, words in its message)
        let cases = [
            (
                Ok(&west),
                Some(EAST),
                Refusal::OtherCluster {
                    claimed: "https://kubernetes.default.svc.west".into(),
                    ours: EAST.into(),
                    error: error.into(),
                },
                "issued by another Kubernetes cluster (issuer `https://kubernetes.default.svc.west`",
            ),
            (
                Ok(&api),
                Some(EAST),
                Refusal::Audience {
                    audiences: vec!["https://kubernetes.default.svc".into()],
                },
                "not `trellis-ca`",
            ),
            (
                Ok(&expired),
                Some(EAST),
                Refusal::Expired {
                    at: format_rfc3339((NOW - 1) as u64),
                    error: error.into(),
                },
                "the token expired at 2027-01-15T07:59:59Z",
            ),
            (
                Ok(&forged),
                Some(EAST),
                Refusal::NotAuthenticated {
                    error: error.into(),
                    issuer: None,
                },
                "did not authenticate the token (forged, expired, or its service account or pod deleted?): [invalid bearer token",
            ),
            (
                Ok(&west),
                None,
                Refusal::NotAuthenticated {
                    error: error.into(),
                    issuer: Some("https://kubernetes.default.svc.west".into()),
                },
                "the token claims issuer `https://kubernetes.default.svc.west`: a token of another cluster",
            ),
            (
                Err(&unreadable),
                Some(EAST),
                Refusal::Unreadable {
                    reason: unreadable.to_string(),
                    error: error.into(),
                },
                "the token cannot be read (not a Kubernetes service-account token",
            ),
        ];
        for (claims, ours, want, words) in cases {
            let got = verdict(&status, claims, ours, NOW).unwrap_err();
            assert_eq!(got, want);
            let msg = got.to_string();
            assert!(msg.contains(words), "{words:?} not in: {msg}");
        }
    }
}
