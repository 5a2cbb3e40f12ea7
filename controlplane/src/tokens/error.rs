//! [`TokenError`]: every way a join token can be refused, phrased for the operator.

use super::kind::KindRequired;
use trellis_identity::join_token::TokenParseError;
use trellis_identity::rfc3339::Rfc3339;

/// Why a join token was rejected.
///
/// `Parse` means the token string the operator pasted (or the VM identity
/// given for a new token) is wrong; check errors (`SecretMismatch` ..
/// `WrongKind`) mean the control plane refused a well-formed token;
/// `Throttled` means the peer must wait. None of them is worth retrying
/// unchanged except `Throttled`, after `retry_after_secs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Parse(#[from] TokenParseError),

    #[error(
        "token {id} was presented with the wrong secret; check that the whole token was copied, \
         or create a new one with `trellis token create`"
    )]
    SecretMismatch { id: String },

    #[error(
        "the stored record of token {id} is corrupt ({detail}); revoke it with \
         `trellis token revoke {id}` and create a new one with `trellis token create`"
    )]
    CorruptRecord { id: String, detail: &'static str },

    #[error(
        "token {id} was revoked at {}; create a new one with `trellis token create`",
        Rfc3339(*.revoked_at)
    )]
    Revoked { id: String, revoked_at: u64 },

    #[error(
        "token {id} expired at {}; create a new one with `trellis token create`",
        Rfc3339(*.expires_at)
    )]
    Expired { id: String, expires_at: u64 },

    #[error(
        "token {id} is used up ({uses} of {max_uses} uses); \
         create a new one with `trellis token create`"
    )]
    UsedUp {
        id: String,
        uses: u32,
        max_uses: u32,
    },

    #[error(
        "token {id} is a {token_kind} token and cannot be used to join a {required}; \
         create a {required} token with `trellis token create`"
    )]
    WrongKind {
        id: String,
        token_kind: KindRequired,
        required: KindRequired,
    },

    #[error(
        "too many failed join attempts from this address; retry in {retry_after_secs}s, \
         after checking the token (a wrong token will keep failing)"
    )]
    Throttled { retry_after_secs: u64 },
}
