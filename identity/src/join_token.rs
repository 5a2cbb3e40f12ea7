//! [`JoinToken`]: the one-word credential an operator hands to a joining
//! node or VM, and [`TokenParseError`], every way its text can be wrong.
//!
//! Only the string format lives here, so that every component that reads
//! tokens (the control plane, the VM agent) parses them the same way; whether
//! the control plane accepts a well-formed token is its own decision.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, Engine as _};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::spiffe::{validate_trust_domain, SpiffeId};

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
/// JSON `{"i":id,"s":secret,"a":[addrs],"p":hex pin,"t":trust domain,"w":workload,
/// "g":group,"c":cluster}`, where `t`, `w`, `g` and `c` are optional: one shell-safe word that is easy to
/// recognise, versioned, and extensible with new optional fields without a
/// new prefix. Unknown JSON fields are ignored for that reason; anything that
/// changes how a token must be trusted gets a new version digit instead.
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
    /// Trust domain of the mesh (`example.org`); set on VM tokens.
    pub trust_domain: Option<String>,
    /// The VM identity `namespace/serviceaccount` the token is scoped to; set
    /// on VM tokens. Together with `trust_domain` it tells the VM which
    /// SPIFFE ID to ask for ([`JoinToken::workload_id`]); the control plane
    /// does not rely on it, but on the identity in its own record of the token.
    pub workload: Option<String>,
    /// The WorkloadGroup (its name, in the workload's namespace) an agent
    /// joining with this token registers in; optional, on VM tokens only.
    pub group: Option<String>,
    /// The cluster a control-plane node joining with this token belongs
    /// to; set on cluster tokens, so the node knows before it contacts the
    /// control plane that it joins a cluster (and needs no CA key unless
    /// it joins as a voter). The control plane relies on its own record.
    pub cluster: Option<String>,
}

/// Wire form, borrowed for encoding.
#[derive(Serialize)]
struct WireRef<'a> {
    i: &'a str,
    s: &'a str,
    a: &'a [String],
    p: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    t: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    w: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    g: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    c: Option<&'a str>,
}

/// Wire form, owned for decoding. A missing `a` decodes as empty so that it
/// is reported as [`TokenParseError::NoAddresses`], not as a JSON error.
#[derive(Deserialize)]
struct Wire {
    i: String,
    s: String,
    #[serde(default)]
    a: Vec<String>,
    p: String,
    t: Option<String>,
    w: Option<String>,
    g: Option<String>,
    c: Option<String>,
}

impl JoinToken {
    /// A new token with a random id and secret, not scoped to a workload.
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
            trust_domain: None,
            workload: None,
            group: None,
            cluster: None,
        }
    }

    /// The token scoped to the VM identity `workload` (`namespace/serviceaccount`)
    /// in `trust_domain`, so that a VM can derive its SPIFFE ID from the token
    /// alone. Like [`JoinToken::generate`], checked only by `validate`.
    pub fn with_workload(self, trust_domain: &str, workload: &str) -> JoinToken {
        JoinToken {
            trust_domain: Some(trust_domain.to_owned()),
            workload: Some(workload.to_owned()),
            ..self
        }
    }

    /// The token also naming the WorkloadGroup `group` (in the workload's
    /// namespace) the agent registers in.
    pub fn with_group(self, group: &str) -> JoinToken {
        JoinToken {
            group: Some(group.to_owned()),
            ..self
        }
    }

    /// The token naming the cluster `cluster` a control-plane node joins.
    pub fn with_cluster(self, cluster: &str) -> JoinToken {
        JoinToken {
            cluster: Some(cluster.to_owned()),
            ..self
        }
    }

    /// `spiffe://TD/ns/NS/sa/SA`, the identity a VM joining with this token
    /// will be issued; `None` unless the token carries a valid trust domain
    /// and workload.
    pub fn workload_id(&self) -> Option<SpiffeId> {
        let trust_domain = self.trust_domain.as_deref()?;
        validate_trust_domain(trust_domain).ok()?;
        let (ns, sa) = split_vm_identity(self.workload.as_deref()?).ok()?;
        Some(SpiffeId::workload(trust_domain, ns, sa))
    }

    /// The token string to give the operator, e.g. `trellis1.eyJpIjoi...`.
    pub fn encode(&self) -> String {
        let wire = WireRef {
            i: &self.id,
            s: &self.secret,
            a: &self.addrs,
            p: hex::encode(self.root_pin),
            t: self.trust_domain.as_deref(),
            w: self.workload.as_deref(),
            g: self.group.as_deref(),
            c: self.cluster.as_deref(),
        };
        let json =
            serde_json::to_vec(&wire).expect("a struct of strings always serialises to JSON");
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses a token string as pasted by an operator (surrounding
    /// whitespace is ignored) and validates every field.
    pub fn parse(s: &str) -> Result<JoinToken, TokenParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenParseError::Empty);
        }
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenParseError::TooLong {
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
            .map_err(|e| TokenParseError::BadBase64 {
                detail: if body.chars().any(char::is_whitespace) {
                    "it contains spaces or line breaks".to_owned()
                } else {
                    e.to_string()
                },
            })?;
        // serde_json quotes offending values, which are untrusted.
        let wire: Wire = serde_json::from_slice(&json).map_err(|e| TokenParseError::BadJson {
            detail: sanitize(&e.to_string(), 120),
        })?;
        validate_id(&wire.i)?;
        validate_secret(&wire.s)?;
        validate_addrs(&wire.a)?;
        let root_pin = parse_pin(&wire.p)?;
        validate_workload(wire.t.as_deref(), wire.w.as_deref())?;
        validate_group(wire.w.as_deref(), wire.g.as_deref())?;
        validate_cluster(wire.w.as_deref(), wire.c.as_deref())?;
        Ok(JoinToken {
            id: wire.i,
            secret: wire.s,
            addrs: wire.a,
            root_pin,
            trust_domain: wire.t,
            workload: wire.w,
            group: wire.g,
            cluster: wire.c,
        })
    }

    /// Checks every field as [`JoinToken::parse`] would, so a token built in
    /// code can be checked before it is printed.
    pub fn validate(&self) -> Result<(), TokenParseError> {
        validate_id(&self.id)?;
        validate_secret(&self.secret)?;
        validate_addrs(&self.addrs)?;
        validate_workload(self.trust_domain.as_deref(), self.workload.as_deref())?;
        validate_group(self.workload.as_deref(), self.group.as_deref())?;
        validate_cluster(self.workload.as_deref(), self.cluster.as_deref())
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("addrs", &self.addrs)
            .field("root_pin", &hex::encode(self.root_pin))
            .field("trust_domain", &self.trust_domain)
            .field("workload", &self.workload)
            .field("group", &self.group)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// Why a join token string, or a VM identity, was rejected: the text the
/// operator pasted or typed is wrong. Not worth retrying unchanged.
///
/// Fields that echo token contents are sanitised (escaped, truncated) because
/// they come from untrusted input and end up in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenParseError {
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
        "join token trust domain is invalid: {detail}; \
         copy the whole token again or create a new one with `trellis token create`"
    )]
    BadTrustDomain { detail: String },

    #[error(
        "join token workload `{workload}` is invalid: {reason}; expected \
         `namespace/serviceaccount`; copy the whole token again or create a new one \
         with `trellis token create`"
    )]
    BadWorkload {
        workload: String,
        reason: &'static str,
    },

    #[error(
        "join token workload group `{group}` is invalid: {reason}; copy the whole token \
         again or create a new one with `trellis token create`"
    )]
    BadGroup { group: String, reason: &'static str },

    #[error(
        "join token cluster is invalid: {reason}; copy the whole token again or create \
         a new one with `trellis token create --kind cluster`"
    )]
    BadCluster { reason: String },

    #[error(
        "VM identity `{identity}` is invalid: {reason}; write it as `namespace/serviceaccount`, \
         e.g. `default/web`, each part lowercase letters, digits and `-`"
    )]
    BadVmIdentity {
        identity: String,
        reason: &'static str,
    },
}

/// Splits and validates a VM identity `namespace/serviceaccount`, as typed
/// by an operator.
///
/// The namespace must be an RFC 1123 DNS label (as Kubernetes requires); the
/// service account an RFC 1123 subdomain, because Kubernetes allows dots in
/// service-account names. Both end up in a SPIFFE ID, so nothing else (no
/// upper case, `/`, `%`, spaces) is let through.
pub fn parse_vm_identity(identity: &str) -> Result<(String, String), TokenParseError> {
    let (ns, sa) =
        split_vm_identity(identity).map_err(|reason| TokenParseError::BadVmIdentity {
            identity: sanitize(identity, 64),
            reason,
        })?;
    Ok((ns.to_owned(), sa.to_owned()))
}

/// Tells "some other string" apart from "a Trellis token of another version".
fn prefix_error(s: &str) -> TokenParseError {
    let head = s.split('.').next().unwrap_or_default();
    match head.strip_prefix("trellis") {
        Some(v) if s.contains('.') && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            TokenParseError::UnsupportedVersion {
                version: sanitize(head, 16),
            }
        }
        _ => TokenParseError::NotATrellisToken,
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

fn validate_id(id: &str) -> Result<(), TokenParseError> {
    let ok = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TokenParseError::BadId {
            id: sanitize(id, 16),
        })
    }
}

fn validate_secret(secret: &str) -> Result<(), TokenParseError> {
    // The strict engine also rejects non-canonical trailing bits, so exactly
    // one string encodes each secret and the stored hash is unambiguous.
    match URL_SAFE_NO_PAD.decode(secret) {
        Ok(bytes) if secret.len() == SECRET_LEN && bytes.len() == SECRET_BYTES => Ok(()),
        _ => Err(TokenParseError::BadSecret),
    }
}

fn validate_addrs(addrs: &[String]) -> Result<(), TokenParseError> {
    if addrs.is_empty() {
        return Err(TokenParseError::NoAddresses);
    }
    if addrs.len() > MAX_ADDRS {
        return Err(TokenParseError::TooManyAddresses {
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
            return Err(TokenParseError::BadAddress {
                addr: sanitize(addr, 64),
                reason,
            });
        }
    }
    Ok(())
}

fn parse_pin(p: &str) -> Result<[u8; 32], TokenParseError> {
    if p.len() != 64 {
        return Err(TokenParseError::BadPin {
            reason: format!("it has {} characters", p.len()),
        });
    }
    let mut pin = [0u8; 32];
    hex::decode_to_slice(p, &mut pin).map_err(|_| TokenParseError::BadPin {
        reason: "it contains a character that is not hexadecimal".to_owned(),
    })?;
    Ok(pin)
}

/// Checks the optional trust domain and workload, each when present.
fn validate_workload(
    trust_domain: Option<&str>,
    workload: Option<&str>,
) -> Result<(), TokenParseError> {
    if let Some(td) = trust_domain {
        // The reason quotes the trust domain, which is untrusted here.
        validate_trust_domain(td).map_err(|reason| TokenParseError::BadTrustDomain {
            detail: sanitize(&reason, 120),
        })?;
    }
    if let Some(w) = workload {
        split_vm_identity(w).map_err(|reason| TokenParseError::BadWorkload {
            workload: sanitize(w, 64),
            reason,
        })?;
    }
    Ok(())
}

/// A group is a WorkloadGroup name (a DNS-1123 subdomain) and only comes
/// with a workload identity.
fn validate_group(workload: Option<&str>, group: Option<&str>) -> Result<(), TokenParseError> {
    let Some(g) = group else {
        return Ok(());
    };
    let bad = |reason| TokenParseError::BadGroup {
        group: sanitize(g, 64),
        reason,
    };
    if workload.is_none() {
        return Err(bad("only a token with a workload identity names a group"));
    }
    if g.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    for label in g.split('.') {
        check_label(label).map_err(|_| {
            bad("expected lowercase letters, digits, `-` and `.` (a DNS-1123 subdomain)")
        })?;
    }
    Ok(())
}

/// A cluster token names a valid cluster, and no workload.
fn validate_cluster(workload: Option<&str>, cluster: Option<&str>) -> Result<(), TokenParseError> {
    let Some(c) = cluster else {
        return Ok(());
    };
    if workload.is_some() {
        return Err(TokenParseError::BadCluster {
            reason: "a token names a cluster or a workload, not both".into(),
        });
    }
    trellis_api::topology::validate_name("cluster", c).map_err(|e| TokenParseError::BadCluster {
        reason: sanitize(&e.to_string(), 200),
    })
}

/// [`parse_vm_identity`] without the error wrapping: the two parts, or why
/// the identity is invalid.
fn split_vm_identity(identity: &str) -> Result<(&str, &str), &'static str> {
    let (ns, sa) = identity.split_once('/').ok_or("expected exactly one `/`")?;
    if sa.contains('/') {
        return Err("expected exactly one `/`");
    }
    check_label(ns).map_err(ns_reason)?;
    if sa.is_empty() {
        return Err("the service account is empty");
    }
    if sa.len() > 253 {
        return Err("the service account is longer than 253 characters");
    }
    for label in sa.split('.') {
        check_label(label).map_err(sa_reason)?;
    }
    Ok((ns, sa))
}

#[derive(Debug, Clone, Copy)]
enum LabelProblem {
    Empty,
    TooLong,
    BadChar,
    BadEdge,
}

fn check_label(label: &str) -> Result<(), LabelProblem> {
    let bytes = label.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return Err(LabelProblem::Empty);
    };
    if bytes.len() > 63 {
        return Err(LabelProblem::TooLong);
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
    {
        return Err(LabelProblem::BadChar);
    }
    if *first == b'-' || *last == b'-' {
        return Err(LabelProblem::BadEdge);
    }
    Ok(())
}

fn ns_reason(p: LabelProblem) -> &'static str {
    match p {
        LabelProblem::Empty => "the namespace is empty",
        LabelProblem::TooLong => "the namespace is longer than 63 characters",
        LabelProblem::BadChar => "the namespace has a character other than a-z, 0-9 or `-`",
        LabelProblem::BadEdge => "the namespace starts or ends with `-`",
    }
}

fn sa_reason(p: LabelProblem) -> &'static str {
    match p {
        LabelProblem::Empty => "the service account has an empty part between dots",
        LabelProblem::TooLong => {
            "a dot-separated part of the service account exceeds 63 characters"
        }
        LabelProblem::BadChar => {
            "the service account has a character other than a-z, 0-9, `-` or `.`"
        }
        LabelProblem::BadEdge => "a part of the service account starts or ends with `-`",
    }
}

/// Makes untrusted text safe to embed in an error message: keeps printable
/// ASCII, escapes everything else (control characters, terminal escapes,
/// bidi overrides), and keeps at most `max_chars` of the original.
fn sanitize(s: &str, max_chars: usize) -> String {
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

#[cfg(test)]
#[path = "join_token_tests.rs"]
mod tests;
