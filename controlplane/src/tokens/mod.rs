//! Join tokens: how a new control-plane node or VM is invited into the mesh.
//!
//! Like `kubeadm join --discovery-token-ca-cert-hash`, the token string an
//! operator copies carries everything the new node needs on first contact:
//! control-plane addresses, a pin of the mesh root CA (so the node can trust
//! the control plane before it has any certificate), and a secret proving it
//! was invited.
//!
//! - [`JoinToken`]: the token itself; `generate`, `encode` (`trellis1.…`),
//!   `parse` of operator input. Defined in [`trellis_identity::join_token`],
//!   so that the VM agent parses tokens without depending on this crate.
//! - [`TokenRecord`]: what the control plane stores (only a hash of the
//!   secret) and `check`/`redeem`, the decision to admit a join.
//! - [`TokenKind`]: control-plane node or VM with a `namespace/serviceaccount`
//!   identity.
//! - [`Throttle`]: per-peer lockout after repeated failures.
//! - [`TokenError`]: every refusal, worded to tell the operator what to do;
//!   parse errors are [`TokenParseError`]s.
//!
//! Everything here is pure: no I/O, and time is passed in as unix seconds.
//! The API and store code call these functions and persist the results.

mod error;
mod kind;
mod record;
mod throttle;

pub use error::TokenError;
pub use kind::{KindRequired, TokenKind};
pub use record::{secret_sha256, TokenRecord, TokenStatus};
pub use throttle::{Throttle, DEFAULT_MAX_PEERS};
pub use trellis_identity::join_token::{
    parse_vm_identity, JoinToken, TokenParseError, MAX_ADDRS, MAX_TOKEN_LEN, TOKEN_PREFIX,
};
pub use trellis_identity::rfc3339::{format_rfc3339, Rfc3339};
