//! [`parse_documents`] and [`check_documents`]: multi-document YAML to
//! validated [`Resource`]s, with every problem of every document.

use serde_json::Value;

use super::{ConfigError, DocumentErrors, DocumentWarnings, FieldError, Resource};
use crate::yaml;

/// What [`check_documents`] found in a stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checks {
    /// The documents that passed, in input order.
    pub resources: Vec<Resource>,
    /// Every refused document, with all of its errors.
    pub errors: Vec<DocumentErrors>,
    /// Every document with warnings (refused or not).
    pub warnings: Vec<DocumentWarnings>,
}

impl Checks {
    /// The resources if no document was refused, else every error.
    pub fn into_result(self) -> Result<Vec<Resource>, ConfigError> {
        if self.errors.is_empty() {
            Ok(self.resources)
        } else {
            Err(ConfigError {
                documents: self.errors,
            })
        }
    }
}

/// Parses and validates a multi-document YAML stream (documents separated
/// by `---` lines; empty ones skipped). All or nothing: if any document
/// fails to parse or validate, returns every bad document's errors and no
/// resources. [`check_documents`] gives the warnings too.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ConfigError> {
    check_documents(text).into_result()
}

/// Checks every document of a YAML stream, as Istio would read it, and
/// reports every problem of each: a document that is not YAML reports its
/// syntax error with line and column (the others are still checked); one
/// that is reports its unknown fields, wrongly typed values and semantic
/// errors together, and its warnings.
pub fn check_documents(text: &str) -> Checks {
    let mut checks = Checks::default();
    for document in yaml::documents(text) {
        let index = document.index;
        let value = match document.value {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                checks.errors.push(DocumentErrors {
                    index,
                    kind: None,
                    name: None,
                    errors: vec![FieldError::new("", format!("invalid YAML: {e}"))],
                });
                continue;
            }
        };
        let (kind, name) = label(&value);
        let checked = Resource::check(value);
        if !checked.warnings.is_empty() {
            checks.warnings.push(DocumentWarnings {
                index,
                kind: kind.clone(),
                name: name.clone(),
                warnings: checked.warnings,
            });
        }
        match checked.resource {
            Some(resource) if checked.errors.is_empty() => checks.resources.push(resource),
            _ => checks.errors.push(DocumentErrors {
                index,
                kind,
                name,
                errors: checked.errors,
            }),
        }
    }
    checks
}

/// The kind and `namespace/name` of a document, as far as it has them, to
/// say which document an error is in.
fn label(value: &Value) -> (Option<String>, Option<String>) {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    let metadata = value.get("metadata");
    let field = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    let name =
        field("name").map(|name| format!("{}/{name}", field("namespace").unwrap_or("default")));
    (kind, name)
}
