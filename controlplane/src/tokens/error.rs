//! [`TokenError`]: every way a join token can be refused, phrased for the operator.

use super::kind::KindRequired;
use trellis_identity::rfc3339::Rfc3339;

/// Why a join token was rejected.
///
/// Parse errors (`Empty` .. `BadPin`) mean the string the operator pasted is
/// wrong; check errors (`SecretMismatch` .. `WrongKind`) mean the control
/// plane refused a well-formed token; `Throttled` means the peer must wait.
/// None of them is worth retrying unchanged except `Throttled`, after
/// `retry_after_secs`.
///
/// Fields that echo token contents are sanitised (escaped, truncated) because
/// they come from untrusted input and end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no join token given; pass the token printed by `trellis token create`")]
    Empty,

    #[error(
        "join token is {len} bytes long, more than the {max} a Trellis token can be; \
         check that only the token was pasted"
    )]
    TooLong { len: usize, max: usize },

    #[error(
        "this is not a Trellis join token; tokens start with `trellis1.` \
         and are printed by `trellis token create`"
    )]
    NotATrellisToken,

    #[error(
        "join token version `{version}` is not supported by this build, which reads `trellis1` \
         tokens; use a trellis binary from the same release as the control plane"
    )]
    UnsupportedVersion { version: String },

    #[error(
        "join token is damaged: the text after `trellis1.` is not valid base64url ({detail}); \
         copy the whole token again as one word, without spaces or line breaks"
    )]
    BadBase64 { detail: String },

    #[error(
        "join token is damaged: its contents do not decode ({detail}); \
         copy the whole token again or create a new one with `trellis token create`"
    )]
    BadJson { detail: String },

    #[error(
        "join token id `{id}` is invalid: expected 8 lowercase letters or digits; \
         copy the whole token again or create a new one with `trellis token create`"
    )]
    BadId { id: String },

    #[error(
        "join token secret is malformed: expected 43 base64url characters (32 bytes); \
         copy the whole token again or create a new one with `trellis token create`"
    )]
    BadSecret,

    #[error(
        "join token lists no control-plane addresses, so there is nothing to contact; \
         create a new one with `trellis token create` on a running control plane"
    )]
    NoAddresses,

    #[error(
        "join token lists {count} control-plane addresses, more than the {max} allowed; \
         create a new one with `trellis token create`"
    )]
    TooManyAddresses { count: usize, max: usize },

    #[error(
        "join token address `{addr}` is invalid: {reason}; \
         create a new one with `trellis token create`"
    )]
    BadAddress { addr: String, reason: &'static str },

    #[error(
        "join token root CA pin is invalid: {reason}; expected 64 hex characters (a SHA-256 \
         digest); copy the whole token again or create a new one with `trellis token create`"
    )]
    BadPin { reason: String },

    #[error(
        "VM identity `{identity}` is invalid: {reason}; write it as `namespace/serviceaccount`, \
         e.g. `default/web`, each part lowercase letters, digits and `-`"
    )]
    BadVmIdentity {
        identity: String,
        reason: &'static str,
    },

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

/// Makes untrusted text safe to embed in an error message: keeps printable
/// ASCII, escapes everything else (control characters, terminal escapes,
/// bidi overrides), and keeps at most `max_chars` of the original.
pub(crate) fn sanitize(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max_chars) {
        if c == ' ' || c.is_ascii_graphic() {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    if s.chars().nth(max_chars).is_some() {
        out.push_str("...");
    }
    out
}
