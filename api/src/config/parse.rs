//! [`parse_documents`]: multi-document YAML to validated [`Resource`]s.

use serde::Deserialize;
use serde_yaml::Value;

use super::{ConfigError, DocumentErrors, FieldError, Resource};

/// Parses and validates a multi-document YAML stream (documents separated
/// by `---`; empty ones skipped). Reading stops at the first YAML syntax
/// error. All or nothing: if any document fails to
/// parse or validate, returns every bad document's errors and no resources.
pub fn parse_documents(yaml: &str) -> Result<Vec<Resource>, ConfigError> {
    let mut resources = Vec::new();
    let mut bad = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                bad.push(DocumentErrors {
                    index,
                    kind: None,
                    name: None,
                    errors: vec![FieldError::new("", format!("invalid YAML: {e}"))],
                });
                // The YAML reader cannot find the next document after a
                // syntax error; it would report this one forever.
                break;
            }
        };
        let (kind, name) = label(&value);
        let errors = match Resource::from_value(value) {
            Ok(resource) => match resource.validate() {
                Ok(()) => {
                    resources.push(resource);
                    continue;
                }
                Err(errors) => errors,
            },
            Err(error) => vec![error],
        };
        bad.push(DocumentErrors {
            index,
            kind,
            name,
            errors,
        });
    }
    if bad.is_empty() {
        Ok(resources)
    } else {
        Err(ConfigError { documents: bad })
    }
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
