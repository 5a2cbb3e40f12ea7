//! Istio's `StringMatch`: how a URI, header or query parameter is matched.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::regex::invalid_regex;
use super::validate::one_of;
use super::Regex;

/// Exactly one of `exact`, `prefix` or `regex`, written `{prefix: /api}`.
/// A `regex` must match the whole value (Envoy's semantics).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawStringMatch")]
pub enum StringMatch {
    /// The value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The whole value matches this regular expression.
    Regex(Regex),
}

impl StringMatch {
    /// Whether `value` satisfies the match.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Regex(regex) => regex.is_match(value),
        }
    }
}

/// A match on a header or query parameter by name: either presence alone,
/// written `{}`, or a [`StringMatch`] on its value.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "RawStringMatch")]
pub enum HeaderMatch {
    /// The header is present, with any value.
    Present,
    /// The header is present and its value matches.
    Value(StringMatch),
}

impl HeaderMatch {
    /// Whether a header with `value` (`None` when absent) satisfies the match.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (HeaderMatch::Present, Some(_)) => true,
            (HeaderMatch::Value(m), Some(value)) => m.matches(value),
        }
    }

    /// The value match, if any.
    pub fn string_match(&self) -> Option<&StringMatch> {
        match self {
            HeaderMatch::Present => None,
            HeaderMatch::Value(m) => Some(m),
        }
    }
}

impl Serialize for StringMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StringMatch::Exact(exact) => serialize_oneof(serializer, "exact", exact),
            StringMatch::Prefix(prefix) => serialize_oneof(serializer, "prefix", prefix),
            StringMatch::Regex(regex) => serialize_oneof(serializer, "regex", regex),
        }
    }
}

/// Writes a set protobuf `oneof` field as a one-entry map, `{prefix: /api}`.
/// (Serde's own enum form becomes a YAML tag, `!prefix /api`.)
pub(crate) fn serialize_oneof<S: Serializer, T: Serialize + ?Sized>(
    serializer: S,
    field: &str,
    value: &T,
) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(1))?;
    map.serialize_entry(field, value)?;
    map.end()
}

impl Serialize for HeaderMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HeaderMatch::Present => serializer.serialize_map(Some(0))?.end(),
            HeaderMatch::Value(m) => m.serialize(serializer),
        }
    }
}

/// The wire form: the protobuf `oneof` as three optional fields, so that a
/// bad combination gets a message naming the fields.
#[derive(Deserialize)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

impl RawStringMatch {
    /// `None` for `{}`.
    fn into_match(self) -> Result<Option<StringMatch>, String> {
        let fields = [
            ("exact", self.exact.is_some()),
            ("prefix", self.prefix.is_some()),
            ("regex", self.regex.is_some()),
        ];
        if let Some(reason) = one_of(&fields, false) {
            return Err(reason);
        }
        Ok(match (self.exact, self.prefix, self.regex) {
            (Some(exact), _, _) => Some(StringMatch::Exact(exact)),
            (_, Some(prefix), _) => Some(StringMatch::Prefix(prefix)),
            (_, _, Some(regex)) => Some(StringMatch::Regex(
                Regex::full_match(&regex).map_err(|e| invalid_regex(&regex, &e))?,
            )),
            (None, None, None) => None,
        })
    }
}

impl TryFrom<RawStringMatch> for StringMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        raw.into_match()?
            .ok_or_else(|| "exactly one of `exact`, `prefix`, `regex` must be set".to_string())
    }
}

impl TryFrom<RawStringMatch> for HeaderMatch {
    type Error = String;

    fn try_from(raw: RawStringMatch) -> Result<Self, String> {
        Ok(raw
            .into_match()?
            .map_or(HeaderMatch::Present, HeaderMatch::Value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<StringMatch, String> {
        crate::yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn semantics() {
        for (yaml, value, expected) in [
            ("{exact: /api}", "/api", true),
            ("{exact: /api}", "/api/v1", false),
            ("{prefix: /api}", "/api/v1", true),
            ("{prefix: /api}", "/ap", false),
            ("{regex: '/api/v[0-9]+'}", "/api/v12", true),
            ("{regex: '/api/v[0-9]+'}", "/api/v12/x", false),
            ("{regex: '/api/v[0-9]+'}", "x/api/v1", false),
            ("{regex: 'a|ab'}", "ab", true),
            ("{regex: '.*'}", "", true),
        ] {
            let m = parse(yaml).unwrap();
            assert_eq!(m.matches(value), expected, "{yaml} vs {value:?}");
        }
    }

    #[test]
    fn exactly_one_field() {
        for (yaml, reason) in [
            (
                "{}",
                "exactly one of `exact`, `prefix`, `regex` must be set",
            ),
            ("{exact: a, prefix: b}", "found `exact` and `prefix`"),
            // Unknown fields are the schema check's (`config::schema`).
            ("{suffix: a}", "exactly one of"),
            ("{regex: 'a('}", "invalid regex \"a(\""),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(reason), "{yaml}: {err}");
        }
    }

    #[test]
    fn serializes_as_written() {
        for yaml in ["prefix: /api\n", "regex: a.*\n", "exact: \"\"\n"] {
            let m = parse(yaml).unwrap();
            assert_eq!(crate::yaml::to_string(&m).unwrap(), yaml);
        }
    }

    #[test]
    fn header_presence() {
        let present: HeaderMatch = crate::yaml::from_str("{}").unwrap();
        assert_eq!(present, HeaderMatch::Present);
        assert!(present.matches(Some("")));
        assert!(!present.matches(None));
        assert_eq!(crate::yaml::to_string(&present).unwrap(), "{}\n");
        let value: HeaderMatch = crate::yaml::from_str("{exact: jason}").unwrap();
        assert!(value.matches(Some("jason")));
        assert!(!value.matches(Some("json")));
        assert!(!value.matches(None));
    }
}
