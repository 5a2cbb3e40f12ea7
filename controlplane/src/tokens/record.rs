//! [`TokenRecord`]: what the control plane stores about a token, and the
//! decision whether a presented secret may join.

use std::fmt;

use ring::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};

use super::error::TokenError;
use super::kind::{KindRequired, TokenKind};
use super::JoinToken;

/// The stored side of a join token. Holds only the SHA-256 of the secret, so
/// a leaked store (or backup) does not leak usable tokens.
///
/// Times are unix seconds, passed in by the caller; this type never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Lowercase hex SHA-256 of the secret string.
    pub secret_sha256: String,
    pub kind: TokenKind,
    pub created_at: u64,
    /// First second at which the token is no longer accepted.
    pub expires_at: u64,
    /// `None`: unlimited uses until expiry.
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked_at: Option<u64>,
}

/// A token's state as shown by `trellis token list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenStatus {
    Active,
    Expired,
    Revoked,
    UsedUp,
}

impl fmt::Display for TokenStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenStatus::Active => "active",
            TokenStatus::Expired => "expired",
            TokenStatus::Revoked => "revoked",
            TokenStatus::UsedUp => "used up",
        })
    }
}

impl TokenRecord {
    /// The record to store for a freshly generated `token`, valid for
    /// `ttl_secs` from `now`.
    pub fn new(
        token: &JoinToken,
        kind: TokenKind,
        now: u64,
        ttl_secs: u64,
        max_uses: Option<u32>,
    ) -> TokenRecord {
        TokenRecord {
            id: token.id.clone(),
            secret_sha256: secret_sha256(&token.secret),
            kind,
            created_at: now,
            expires_at: now.saturating_add(ttl_secs),
            max_uses,
            uses: 0,
            revoked_at: None,
        }
    }

    /// Decides whether `secret` may be used now for a join of `expected_kind`.
    ///
    /// The secret is checked first, so a caller who does not hold it learns
    /// nothing about the token beyond "wrong secret"; then kind, revocation,
    /// expiry and use count, each with its own error.
    pub fn check(
        &self,
        secret: &str,
        expected_kind: KindRequired,
        now: u64,
    ) -> Result<(), TokenError> {
        self.check_hash(&secret_sha256(secret), expected_kind, now)
    }

    /// [`check`](Self::check) given the hex SHA-256 of the secret: what the
    /// replicated store sees, so that secrets never enter the Raft log.
    pub fn check_hash(
        &self,
        presented_sha256: &str,
        expected_kind: KindRequired,
        now: u64,
    ) -> Result<(), TokenError> {
        let mut presented = [0u8; 32];
        if hex::decode_to_slice(presented_sha256, &mut presented).is_err() {
            return Err(TokenError::SecretMismatch {
                id: self.id.clone(),
            });
        }
        let mut stored = [0u8; 32];
        hex::decode_to_slice(&self.secret_sha256, &mut stored).map_err(|_| {
            TokenError::CorruptRecord {
                id: self.id.clone(),
                detail: "its secret hash is not 64 hex characters",
            }
        })?;
        if !constant_time_eq(&stored, &presented) {
            return Err(TokenError::SecretMismatch {
                id: self.id.clone(),
            });
        }
        let token_kind = self.kind.required();
        if !expected_kind.admits(token_kind) {
            return Err(TokenError::WrongKind {
                id: self.id.clone(),
                token_kind,
                required: expected_kind,
            });
        }
        if let Some(revoked_at) = self.revoked_at {
            return Err(TokenError::Revoked {
                id: self.id.clone(),
                revoked_at,
            });
        }
        if now >= self.expires_at {
            return Err(TokenError::Expired {
                id: self.id.clone(),
                expires_at: self.expires_at,
            });
        }
        if let Some(max_uses) = self.max_uses {
            if self.uses >= max_uses {
                return Err(TokenError::UsedUp {
                    id: self.id.clone(),
                    uses: self.uses,
                    max_uses,
                });
            }
        }
        Ok(())
    }

    /// Counts one successful join.
    pub fn consume(&mut self) {
        self.uses = self.uses.saturating_add(1);
    }

    /// [`check`](Self::check), then [`consume`](Self::consume) on success:
    /// the usual step applied when a join is accepted.
    pub fn redeem(
        &mut self,
        secret: &str,
        expected_kind: KindRequired,
        now: u64,
    ) -> Result<(), TokenError> {
        self.check(secret, expected_kind, now)?;
        self.consume();
        Ok(())
    }

    /// Marks the token revoked at `now`. Revoking twice keeps the first time.
    pub fn revoke(&mut self, now: u64) {
        self.revoked_at.get_or_insert(now);
    }

    /// The token's state at `now`. When several apply, the most deliberate
    /// one wins: revoked, then expired, then used up.
    pub fn summary(&self, now: u64) -> TokenStatus {
        if self.revoked_at.is_some() {
            TokenStatus::Revoked
        } else if now >= self.expires_at {
            TokenStatus::Expired
        } else if self.max_uses.is_some_and(|max| self.uses >= max) {
            TokenStatus::UsedUp
        } else {
            TokenStatus::Active
        }
    }
}

/// Hex SHA-256 of a token secret, as records store it.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(sha256(secret))
}

fn sha256(s: &str) -> [u8; 32] {
    let d = digest(&SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two digests without an early exit.
///
/// Not `ring::constant_time::verify_slices_are_equal`: ring 0.17 deprecated
/// it as an internal API "with no promises regarding side channels". What is
/// compared are SHA-256 digests, so even a timing leak would reveal bits of a
/// hash, not of the secret; this is defence in depth, and `black_box` keeps
/// the optimiser from turning the fold into a short-circuiting loop.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
