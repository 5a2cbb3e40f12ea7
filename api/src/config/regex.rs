//! Regular expressions from config, compiled once at parse time.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A regular expression (RE2 syntax, as Istio documents; the `regex` crate
/// accepts the same language) kept with its source text. Compiled when the
/// config is parsed so a bad pattern is refused up front and matching does
/// not compile. Equality, `Debug` and serialization use the source text.
#[derive(Clone)]
pub struct Regex {
    source: String,
    compiled: regex::Regex,
}

impl Regex {
    /// A pattern that matches anywhere in the input, for rewrites
    /// (`uriRegexRewrite.match`).
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Regex {
            source: source.to_string(),
            compiled: regex::Regex::new(source)?,
        })
    }

    /// A pattern that must match the whole input, as Envoy's `safe_regex`
    /// matcher does for `StringMatch.regex`.
    pub fn full_match(source: &str) -> Result<Self, regex::Error> {
        // Checked alone first: wrapped, `a)|(b` would compile, as something else.
        regex::Regex::new(source)?;
        Ok(Regex {
            source: source.to_string(),
            compiled: regex::Regex::new(&format!("^(?:{source})$"))?,
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches `value` (the whole of it when built with
    /// [`Regex::full_match`]).
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }

    /// The compiled pattern, for substitutions.
    pub fn compiled(&self) -> &regex::Regex {
        &self.compiled
    }
}

/// The message for a pattern that does not compile.
pub(crate) fn invalid_regex(source: &str, error: &regex::Error) -> String {
    format!("invalid regex {source:?}: {error}")
}

impl<'de> Deserialize<'de> for Regex {
    /// Deserializes with [`Regex::new`] (matches anywhere).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Regex::new(&source).map_err(|e| serde::de::Error::custom(invalid_regex(&source, &e)))
    }
}

impl Serialize for Regex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Regex").field(&self.source).finish()
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_match_anchors_alternations() {
        let re = Regex::full_match("a|ab").unwrap();
        assert!(re.is_match("ab"), "leftmost-first must not stop at `a`");
        assert!(re.is_match("a"));
        assert!(!re.is_match("abc"));
        assert!(!re.is_match("xab"));
        assert!(Regex::full_match("a)|(b").is_err());
        let search = Regex::new("a|ab").unwrap();
        assert!(search.is_match("xxab"));
    }

    #[test]
    fn bad_pattern_is_a_deserialize_error() {
        let err = crate::yaml::from_str::<Regex>("'a('")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid regex \"a(\""), "{err}");
    }
}
