//! A Kubernetes service-account token's claims, read WITHOUT verifying its
//! signature.
//!
//! Only the pod's own API server can verify the token (a TokenReview, which
//! the control plane runs). The claims serve two things that need no
//! trust: the agent names the identity it asks for in its CSR from them,
//! and the control plane explains a refusal (which issuer the token claims,
//! for which audiences, until when) to an operator.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

/// The audience a pod's token must be for: a projected service-account
/// token with `audience: trellis-ca`.
pub const AUDIENCE: &str = "trellis-ca";

/// Why a token's claims cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KubeTokenError {
    #[error(
        "not a Kubernetes service-account token: expected a JWT (three base64url parts \
         separated by `.`), {0}"
    )]
    NotAJwt(&'static str),
    #[error("the token's payload is not JSON claims: {0}")]
    Claims(String),
    #[error("the token's subject `{0}` is not a service account (system:serviceaccount:NS:SA)")]
    NotAServiceAccount(String),
}

/// The claims Trellis reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Claims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    aud: Audiences,
    /// Expiry, unix seconds.
    #[serde(default)]
    pub exp: Option<i64>,
}

/// `aud` is a string or an array of strings (RFC 7519, 4.1.3).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Default for Audiences {
    fn default() -> Self {
        Audiences::Many(Vec::new())
    }
}

impl Claims {
    /// The claims of `token` (surrounding whitespace ignored, as a file
    /// read whole has a newline).
    pub fn decode(token: &str) -> Result<Claims, KubeTokenError> {
        let mut parts = token.trim().split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(KubeTokenError::NotAJwt("not three parts"));
        };
        let json = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| KubeTokenError::NotAJwt("its payload is not base64url"))?;
        serde_json::from_slice(&json).map_err(|e| KubeTokenError::Claims(e.to_string()))
    }

    /// The audiences the token is for.
    pub fn audiences(&self) -> &[String] {
        match &self.aud {
            Audiences::One(a) => std::slice::from_ref(a),
            Audiences::Many(v) => v,
        }
    }

    /// (namespace, service account) of the subject.
    pub fn service_account(&self) -> Result<(&str, &str), KubeTokenError> {
        service_account_user(&self.sub)
            .ok_or_else(|| KubeTokenError::NotAServiceAccount(self.sub.clone()))
    }
}

/// (namespace, service account) of a Kubernetes user name
/// `system:serviceaccount:NS:SA`, as tokens and TokenReviews name one.
/// Both are DNS labels or subdomains, so neither holds `:` or `/`.
pub fn service_account_user(user: &str) -> Option<(&str, &str)> {
    let (ns, sa) = user
        .strip_prefix("system:serviceaccount:")?
        .split_once(':')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    (ok(ns) && ok(sa)).then_some((ns, sa))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn a_projected_token_names_its_issuer_audiences_and_service_account() {
        let token = jwt(
            r#"{"aud":["trellis-ca"],"exp":1700000000,"iss":"https://kubernetes.default.svc.east",
                "kubernetes.io":{"namespace":"shop","serviceaccount":{"name":"cart","uid":"u"}},
                "sub":"system:serviceaccount:shop:cart"}"#,
        );
        let c = Claims::decode(&format!("{token}\n")).unwrap();
        assert_eq!(c.iss, "https://kubernetes.default.svc.east");
        assert_eq!(c.audiences(), [AUDIENCE]);
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.service_account(), Ok(("shop", "cart")));
        // `aud` may be one string.
        let c = Claims::decode(&jwt(r#"{"aud":"api","sub":"x"}"#)).unwrap();
        assert_eq!(c.audiences(), ["api"]);
    }

    #[test]
    fn what_is_not_a_service_account_token_says_why() {
        for (token, want) in [
            (
                "abc".to_string(),
                KubeTokenError::NotAJwt("not three parts"),
            ),
            (
                "a.b.c.d".to_string(),
                KubeTokenError::NotAJwt("not three parts"),
            ),
            (
                "a.!!.c".to_string(),
                KubeTokenError::NotAJwt("its payload is not base64url"),
            ),
        ] {
            assert_eq!(Claims::decode(&token), Err(want), "{token}");
        }
        assert!(matches!(
            Claims::decode(&jwt("[1]")),
            Err(KubeTokenError::Claims(_))
        ));
        let user = Claims::decode(&jwt(r#"{"sub":"alice"}"#)).unwrap();
        assert_eq!(
            user.service_account().unwrap_err().to_string(),
            "the token's subject `alice` is not a service account (system:serviceaccount:NS:SA)"
        );
    }

    #[test]
    fn only_system_serviceaccount_users_with_two_names_are_service_accounts() {
        assert_eq!(
            service_account_user("system:serviceaccount:default:web"),
            Some(("default", "web"))
        );
        for user in [
            "system:serviceaccount:default",
            "system:serviceaccount::web",
            "system:serviceaccount:default:",
            "system:serviceaccount:a:b:c",
            "system:serviceaccount:a/b:c",
            "system:node:n1",
            "admin",
        ] {
            assert_eq!(service_account_user(user), None, "{user}");
        }
    }
}
