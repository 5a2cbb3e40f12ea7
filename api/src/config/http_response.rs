//! HTTP rules that answer without a destination: redirects and direct
//! responses.

use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};

use super::string_match::serialize_oneof;
use super::validate::{check_one_of, check_port, one_of, push, Validate};
use super::FieldError;

/// Answer with a 3xx redirect built from the request and these fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRedirect {
    /// Replaces the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the authority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replaces the port; not with `derivePort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Takes the port from the scheme's default or the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub derive_port: Option<RedirectPortSelection>,
    /// Replaces the scheme.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Status code: 301 (default), 302, 303, 307 or 308.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u32>,
}

/// Where a redirect's port comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPortSelection {
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    /// The port of the request.
    FromRequestPort,
}

impl Validate for HttpRedirect {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if self.uri.is_none()
            && self.authority.is_none()
            && self.port.is_none()
            && self.derive_port.is_none()
            && self.scheme.is_none()
        {
            push(
                errors,
                path,
                "a redirect needs `uri`, `authority`, `port`, `derivePort` or `scheme`",
            );
        }
        check_one_of(
            errors,
            path,
            &[
                ("port", self.port.is_some()),
                ("derivePort", self.derive_port.is_some()),
            ],
            false,
        );
        if let Some(port) = self.port {
            check_port(errors, &format!("{path}.port"), port);
        }
        if let Some(code) = self.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&code) {
                push(
                    errors,
                    &format!("{path}.redirectCode"),
                    format!("{code} is not a redirect status (301, 302, 303, 307 or 308)"),
                );
            }
        }
    }
}

/// Answer with this status and body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpDirectResponse {
    /// Status code, 200..=599.
    pub status: u32,
    /// Response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

impl Validate for HttpDirectResponse {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if !(200..=599).contains(&self.status) {
            push(
                errors,
                &format!("{path}.status"),
                format!("status {} is out of range 200..=599", self.status),
            );
        }
    }
}

/// A response body: `{string: ...}` or `{bytes: <base64>}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawHttpBody")]
pub enum HttpBody {
    /// Text.
    String(String),
    /// Binary, written base64 in config; holds the decoded bytes.
    Bytes(Vec<u8>),
}

impl HttpBody {
    /// The body's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HttpBody::String(s) => s.as_bytes(),
            HttpBody::Bytes(b) => b,
        }
    }
}

impl Serialize for HttpBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HttpBody::String(s) => serialize_oneof(serializer, "string", s),
            HttpBody::Bytes(b) => serialize_oneof(
                serializer,
                "bytes",
                &base64::engine::general_purpose::STANDARD.encode(b),
            ),
        }
    }
}

#[derive(Deserialize)]
struct RawHttpBody {
    string: Option<String>,
    bytes: Option<String>,
}

impl TryFrom<RawHttpBody> for HttpBody {
    type Error = String;

    fn try_from(raw: RawHttpBody) -> Result<Self, String> {
        let fields = [
            ("string", raw.string.is_some()),
            ("bytes", raw.bytes.is_some()),
        ];
        if let Some(reason) = one_of(&fields, true) {
            return Err(reason);
        }
        match (raw.string, raw.bytes) {
            (Some(string), _) => Ok(HttpBody::String(string)),
            (_, Some(bytes)) => base64::engine::general_purpose::STANDARD
                .decode(bytes.trim())
                .map(HttpBody::Bytes)
                .map_err(|e| format!("`bytes` is not valid base64: {e}")),
            (None, None) => unreachable!("one_of requires a field"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_forms() {
        let text: HttpBody = crate::yaml::from_str("{string: hello}").unwrap();
        assert_eq!(text.as_bytes(), b"hello");
        let bytes: HttpBody = crate::yaml::from_str("{bytes: aGVsbG8=}").unwrap();
        assert_eq!(bytes, HttpBody::Bytes(b"hello".to_vec()));
        assert_eq!(crate::yaml::to_string(&bytes).unwrap(), "bytes: aGVsbG8=\n");
        for (yaml, reason) in [
            ("{}", "exactly one of `string`, `bytes`"),
            ("{string: a, bytes: YQ==}", "only one of"),
            ("{bytes: '%%%'}", "not valid base64"),
        ] {
            let err = crate::yaml::from_str::<HttpBody>(yaml)
                .unwrap_err()
                .to_string();
            assert!(err.contains(reason), "{yaml}: {err}");
        }
    }
}
