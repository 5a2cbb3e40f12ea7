//! [`JoinToken`]: the one-word credential an operator hands to a joining node.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, Engine as _};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::error::{sanitize, TokenError};

/// Prefix of every encoded token; the digit is the format version.
pub const TOKEN_PREFIX: &str = "trellis1.";

/// Longest token string [`JoinToken::parse`] will look at. A token with a
/// handful of addresses is a few hundred bytes; the cap bounds the work done
/// on untrusted input before any decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Most control-plane addresses a token may carry.
pub const MAX_ADDRS: usize = 32;

/// Longest single address (a DNS name is at most 253 bytes, plus scheme and port).
const MAX_ADDR_LEN: usize = 300;

const ID_LEN: usize = 8;
const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_BYTES: usize = 32;
/// base64url without padding of 32 bytes.
const SECRET_LEN: usize = 43;

/// Lenient about `=` padding on input (some tools add it back); the token
/// body is otherwise strict base64url.
const BODY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A join token as the operator sees it: enough for a new node to find the
/// control plane, trust it on first contact, and prove it was invited.
///
/// Encoded as `trellis1.` followed by base64url (no padding) of the compact
/// JSON `{"i":id,"s":secret,"a":[addrs],"p":hex pin}`: one shell-safe word
/// that is easy to recognise, versioned, and extensible with new optional
/// fields without a new prefix. Unknown JSON fields are ignored for that
/// reason; anything that changes how a token must be trusted gets a new
/// version digit instead.
///
/// `Debug` redacts the secret, and there is deliberately no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 8 lowercase letters or digits; public, used to look the token up and
    /// in operator messages.
    pub id: String,
    /// 32 random bytes, base64url without padding; only its SHA-256 is stored.
    pub secret: String,
    /// Control-plane addresses the joining node may contact, in order of preference.
    pub addrs: Vec<String>,
    /// SHA-256 pin of the mesh root CA; the joining node refuses a control
    /// plane whose root does not match.
    pub root_pin: [u8; 32],
}

/// Wire form, borrowed for encoding.
#[derive(Serialize)]
struct WireRef<'a> {
    i: &'a str,
    s: &'a str,
    a: &'a [String],
    p: String,
}

/// Wire form, owned for decoding. A missing `a` decodes as empty so that it
/// is reported as [`TokenError::NoAddresses`], not as a JSON error.
#[derive(Deserialize)]
struct Wire {
    i: String,
    s: String,
    #[serde(default)]
    a: Vec<String>,
    p: String,
}

impl JoinToken {
    /// A new token with a random id and secret.
    ///
    /// `addrs` should hold at least one address: a token without one fails
    /// [`JoinToken::validate`] and cannot be parsed back. Call `validate` on
    /// the result before printing it if `addrs` comes from configuration.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, which on the
    /// platforms Trellis supports only happens when the kernel is broken;
    /// handing out a predictable token would be worse than stopping.
    pub fn generate(addrs: Vec<String>, root_pin: [u8; 32]) -> JoinToken {
        let rng = SystemRandom::new();
        JoinToken {
            id: random_id(&rng),
            secret: URL_SAFE_NO_PAD.encode(random_bytes::<SECRET_BYTES>(&rng)),
            addrs,
            root_pin,
        }
    }

    /// The token string to give the operator, e.g. `trellis1.eyJpIjoi...`.
    pub fn encode(&self) -> String {
        let wire = WireRef {
            i: &self.id,
            s: &self.secret,
            a: &self.addrs,
            p: hex::encode(self.root_pin),
        };
        let json =
            serde_json::to_vec(&wire).expect("a struct of strings always serialises to JSON");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses a token string as pasted by an operator (surrounding
    /// whitespace is ignored) and validates every field.
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong {
                len: s.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let body = match s.strip_prefix(TOKEN_PREFIX) {
            Some(body) => body,
            None => return Err(prefix_error(s)),
        };
        let json = BODY_ENGINE
            .decode(body)
            .map_err(|e| TokenError::BadBase64 {
                detail: if body.chars().any(char::is_whitespace) {
                    "it contains spaces or line breaks".to_owned()
                } else {
                    e.to_string()
                },
            })?;
        // serde_json quotes offending values, which are untrusted.
        let wire: Wire = serde_json::from_slice(&json).map_err(|e| TokenError::BadJson {
            detail: sanitize(&e.to_string(), 120),
        })?;
        validate_id(&wire.i)?;
        validate_secret(&wire.s)?;
        validate_addrs(&wire.a)?;
        let root_pin = parse_pin(&wire.p)?;
        Ok(JoinToken {
            id: wire.i,
            secret: wire.s,
            addrs: wire.a,
            root_pin,
        })
    }

    /// Checks every field as [`JoinToken::parse`] would, so a token built in
    /// code can be checked before it is printed.
    pub fn validate(&self) -> Result<(), TokenError> {
        validate_id(&self.id)?;
        validate_secret(&self.secret)?;
        validate_addrs(&self.addrs)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("addrs", &self.addrs)
            .field("root_pin", &hex::encode(self.root_pin))
            .finish()
    }
}

/// Tells "some other string" apart from "a Trellis token of another version".
fn prefix_error(s: &str) -> TokenError {
    let head = s.split('.').next().unwrap_or_default();
    match head.strip_prefix("trellis") {
        Some(v) if s.contains('.') && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            TokenError::UnsupportedVersion {
                version: sanitize(head, 16),
            }
        }
        _ => TokenError::NotATrellisToken,
    }
}

fn random_bytes<const N: usize>(rng: &SystemRandom) -> [u8; N] {
    let mut buf = [0u8; N];
    rng.fill(&mut buf)
        .expect("the operating system's random number generator failed");
    buf
}

fn random_id(rng: &SystemRandom) -> String {
    let mut id = String::with_capacity(ID_LEN);
    while id.len() < ID_LEN {
        for b in random_bytes::<16>(rng) {
            // Rejection sampling: 252 is the largest multiple of 36 below
            // 256, so every character is equally likely.
            if b < 252 && id.len() < ID_LEN {
                id.push(char::from(ID_ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    id
}

fn validate_id(id: &str) -> Result<(), TokenError> {
    let ok = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadId {
            id: sanitize(id, 16),
        })
    }
}

fn validate_secret(secret: &str) -> Result<(), TokenError> {
    // The strict engine also rejects non-canonical trailing bits, so exactly
    // one string encodes each secret and the stored hash is unambiguous.
    match URL_SAFE_NO_PAD.decode(secret) {
        Ok(bytes) if secret.len() == SECRET_LEN && bytes.len() == SECRET_BYTES => Ok(()),
        _ => Err(TokenError::BadSecret),
    }
}

fn validate_addrs(addrs: &[String]) -> Result<(), TokenError> {
    if addrs.is_empty() {
        return Err(TokenError::NoAddresses);
    }
    if addrs.len() > MAX_ADDRS {
        return Err(TokenError::TooManyAddresses {
            count: addrs.len(),
            max: MAX_ADDRS,
        });
    }
    for addr in addrs {
        // Syntax beyond this (host:port, URL) is checked by the code that
        // dials, which knows which forms it accepts.
        let reason = if addr.is_empty() {
            Some("it is empty")
        } else if addr.len() > MAX_ADDR_LEN {
            Some("it is too long")
        } else if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("it contains spaces or control characters")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(TokenError::BadAddress {
                addr: sanitize(addr, 64),
                reason,
            });
        }
    }
    Ok(())
}

fn parse_pin(p: &str) -> Result<[u8; 32], TokenError> {
    if p.len() != 64 {
        return Err(TokenError::BadPin {
            reason: format!("it has {} characters", p.len()),
        });
    }
    let mut pin = [0u8; 32];
    hex::decode_to_slice(p, &mut pin).map_err(|_| TokenError::BadPin {
        reason: "it contains a character that is not hexadecimal".to_owned(),
    })?;
    Ok(pin)
}

#[cfg(test)]
#[path = "join_token_tests.rs"]
mod tests;
