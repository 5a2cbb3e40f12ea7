//! Errors of config parsing and validation. Every error names the field it
//! is about, and [`ConfigError`] also names the document, so an operator can
//! find the line to fix.

use std::fmt;

/// One problem with one field: `path` is where it is in the document, e.g.
/// `spec.http[0].route[1].weight` (empty when the document as a whole is
/// unreadable YAML).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the document root, with `[i]` for list items.
    pub path: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

impl FieldError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for FieldError {}

/// The errors of one document of a multi-document YAML input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentErrors {
    /// Position of the document in the input, counting from 1 and counting
    /// empty documents, so that it matches what an editor shows.
    pub index: usize,
    /// The document's `kind`, when it has one.
    pub kind: Option<String>,
    /// `namespace/name` from the document's metadata, when it has a name.
    pub name: Option<String>,
    /// At least one error.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for DocumentErrors {
    /// One line per error, each starting with the document, e.g.
    /// `document 2 (VirtualService default/reviews): spec.hosts: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => format!(" ({kind} {name})"),
            (Some(only), None) | (None, Some(only)) => format!(" ({only})"),
            (None, None) => String::new(),
        };
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "document {}{label}: {error}", self.index)?;
        }
        Ok(())
    }
}

/// Config input that was rejected as a whole because at least one document
/// in it failed to parse or validate. Lists every bad document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.documents.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The bad documents, in input order.
    pub documents: Vec<DocumentErrors>,
}

/// The warnings of one document: accepted, but worth saying (fields
/// Trellis does not act on, what Istio warns about).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentWarnings {
    /// Position of the document in the input, as in [`DocumentErrors`].
    pub index: usize,
    /// The document's `kind`, when it has one.
    pub kind: Option<String>,
    /// `namespace/name` from the document's metadata, when it has a name.
    pub name: Option<String>,
    /// At least one warning.
    pub warnings: Vec<FieldError>,
}

impl fmt::Display for DocumentWarnings {
    /// One line per warning, e.g. `document 1 (DestinationRule
    /// default/reviews): warning: spec.trafficPolicy.tunnel: accepted, ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = DocumentErrors {
            index: self.index,
            kind: self.kind.clone(),
            name: self.name.clone(),
            errors: self
                .warnings
                .iter()
                .map(|w| FieldError::new("warning", w.to_string()))
                .collect(),
        };
        errors.fmt(f)
    }
}
