//! Istio's published schema of each kind's `spec`, and the check of a
//! document against it.
//!
//! `schema/istio-fields.txt` is generated from Istio's CRD schemas (see
//! `api/examples/istio-schema.rs` and docs/configuration.md): one line per
//! field, `PATH TYPE [ATTR=VALUE]...`, where `PATH[]` is a list item and
//! `PATH{}` a map value. TYPE is `object`, `map`, `array`, `string`,
//! `integer`, `number`, `boolean`, `int-or-string` or `any`; the
//! attributes are the schema's bounds (`min`, `max`, `minLen`, `maxLen`,
//! `minItems`, `maxItems`, `minProps`, `maxProps`), `enum=A|B`,
//! `required=a,b`, `format=int32` and a `pattern=` regex.
//!
//! [`check_spec`] finds every problem the schema can tell (unknown fields,
//! values of the wrong type, values outside the enum or the bounds,
//! missing required fields) in one pass, and takes the bad values out of
//! the document so that the typed parse and the semantic checks can still
//! look at the rest.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::FieldError;

const TABLE: &str = include_str!("schema/istio-fields.txt");

/// The schema of one field.
#[derive(Debug, Default)]
pub(crate) struct Field {
    pub ty: String,
    min: Option<f64>,
    max: Option<f64>,
    min_len: Option<usize>,
    max_len: Option<usize>,
    min_items: Option<usize>,
    max_items: Option<usize>,
    min_props: Option<usize>,
    max_props: Option<usize>,
    enum_values: Vec<String>,
    required: Vec<String>,
    int32: bool,
    pattern: Option<regex::Regex>,
    /// Names of the fields of an object, in order.
    children: Vec<String>,
}

/// Every kind's fields, by schema path (`spec.http[].route[].weight`).
pub(crate) type Fields = BTreeMap<String, Field>;

static KINDS: LazyLock<BTreeMap<String, Fields>> = LazyLock::new(|| parse_table(TABLE));

/// The schema of `kind`, if Istio publishes one for it.
pub(crate) fn fields(kind: &str) -> Option<&'static Fields> {
    KINDS.get(kind)
}

fn parse_table(text: &str) -> BTreeMap<String, Fields> {
    let mut kinds: BTreeMap<String, Fields> = BTreeMap::new();
    let mut current: Option<&mut Fields> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(kind) = line.strip_prefix("kind ") {
            current = Some(kinds.entry(kind.to_string()).or_default());
            continue;
        }
        let fields = current.as_mut().expect("a `kind` line comes first");
        let (path, rest) = line.split_once(' ').expect("PATH TYPE");
        let (ty, mut attrs) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut field = Field {
            ty: ty.to_string(),
            ..Field::default()
        };
        while !attrs.is_empty() {
            let (attr, tail) = if attrs.starts_with("pattern=") {
                (attrs, "")
            } else {
                attrs.split_once(' ').unwrap_or((attrs, ""))
            };
            attrs = tail;
            let (name, value) = attr.split_once('=').expect("ATTR=VALUE");
            let n = || value.parse::<f64>().expect("a number");
            match name {
                "min" => field.min = Some(n()),
                "max" => field.max = Some(n()),
                "minLen" => field.min_len = Some(n() as usize),
                "maxLen" => field.max_len = Some(n() as usize),
                "minItems" => field.min_items = Some(n() as usize),
                "maxItems" => field.max_items = Some(n() as usize),
                "minProps" => field.min_props = Some(n() as usize),
                "maxProps" => field.max_props = Some(n() as usize),
                "enum" => field.enum_values = value.split('|').map(str::to_string).collect(),
                "required" => field.required = value.split(',').map(str::to_string).collect(),
                "format" => field.int32 = value == "int32",
                "pattern" => {
                    field.pattern = Some(regex::Regex::new(value).expect("a schema pattern"))
                }
                other => panic!("unknown schema attribute `{other}`"),
            }
        }
        if let Some((parent, name)) = path
            .rsplit_once('.')
            .filter(|(_, n)| !n.ends_with(['}', ']']))
        {
            if let Some(p) = fields.get_mut(parent) {
                p.children.push(name.to_string());
            }
        }
        fields.insert(path.to_string(), field);
    }
    kinds
}

/// What [`check_spec`] found.
#[derive(Debug, Default)]
pub(crate) struct SchemaCheck {
    /// Problems, each naming the field: unknown fields, wrong types and
    /// values outside an enum, whose values were taken out.
    pub errors: Vec<FieldError>,
    /// Missing required fields and values outside the bounds: the
    /// semantic checks may say the same in their own words, and then
    /// theirs is kept.
    pub soft_errors: Vec<FieldError>,
    /// Paths of values taken out of the document (and their subtrees):
    /// later checks must not report on them again.
    pub removed: Vec<String>,
}

impl SchemaCheck {
    /// Whether a problem at `path` is already reported: at that field, or
    /// below or above it.
    pub fn reported(&self, path: &str) -> bool {
        let related = |p: &str| {
            let below = |a: &str, b: &str| {
                a.strip_prefix(b)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
            };
            p == path || below(p, path) || below(path, p)
        };
        self.errors
            .iter()
            .chain(&self.soft_errors)
            .any(|e| related(&e.path))
    }

    /// Whether `path` is a removed value or inside one.
    pub fn covers(&self, path: &str) -> bool {
        self.removed.iter().any(|r| {
            path == r
                || path
                    .strip_prefix(r.as_str())
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }
}

/// Checks `spec` against `fields`, taking out the values that do not fit
/// (unknown fields, wrong types, values outside an enum) and `null`s,
/// which Kubernetes treats as unset.
pub(crate) fn check_spec(fields: &Fields, spec: &mut Value) -> SchemaCheck {
    let mut check = SchemaCheck::default();
    if spec.is_null() {
        *spec = Value::Object(Default::default());
    }
    let remove = walk(fields, "spec", "spec", spec, &mut check);
    if remove {
        *spec = Value::Object(Default::default());
    }
    check
}

/// Checks `value` at schema path `schema` (document path `path`). Returns
/// whether the value must be taken out of its parent.
fn walk(
    fields: &Fields,
    schema: &str,
    path: &str,
    value: &mut Value,
    check: &mut SchemaCheck,
) -> bool {
    let Some(field) = fields.get(schema) else {
        // Only reached for the root; members are looked up by the parent.
        return false;
    };
    let mut error = |reason: String| check.errors.push(FieldError::new(path, reason));
    let found = type_name(value);
    let hint_bool = value.as_bool();
    let is_number = value.is_number();
    match (field.ty.as_str(), &mut *value) {
        ("any", _) => false,
        ("object", Value::Object(members)) => {
            let mut bad = Vec::new();
            for (name, member) in members.iter_mut() {
                let member_path = format!("{path}.{name}");
                let member_schema = format!("{schema}.{name}");
                if member.is_null() {
                    bad.push(name.clone());
                } else if !fields.contains_key(&member_schema) {
                    check.errors.push(FieldError::new(
                        &member_path,
                        format!(
                            "unknown field `{name}`, expected {}",
                            expected(&field.children)
                        ),
                    ));
                    check.removed.push(member_path);
                    bad.push(name.clone());
                } else if walk(fields, &member_schema, &member_path, member, check) {
                    check.removed.push(member_path);
                    bad.push(name.clone());
                }
            }
            for name in bad {
                members.remove(&name);
            }
            for name in &field.required {
                if !members.contains_key(name) {
                    check.soft_errors.push(FieldError::new(
                        format!("{path}.{name}"),
                        format!("{name} is required"),
                    ));
                }
            }
            false
        }
        ("map", Value::Object(members)) => {
            let count = members.len();
            let child = format!("{schema}{{}}");
            let mut bad = Vec::new();
            for (key, member) in members.iter_mut() {
                let member_path = format!("{path}.{key}");
                if member.is_null() || walk(fields, &child, &member_path, member, check) {
                    bad.push(key.clone());
                }
            }
            for key in bad {
                members.remove(&key);
            }
            let mut error = |reason: String| check.soft_errors.push(FieldError::new(path, reason));
            if let Some(min) = field.min_props.filter(|m| count < *m) {
                error(format!(
                    "at least {min} entries are required, found {count}"
                ));
            }
            if let Some(max) = field.max_props.filter(|m| count > *m) {
                error(format!("at most {max} entries are allowed, found {count}"));
            }
            false
        }
        ("array", Value::Array(items)) => {
            let child = format!("{schema}[]");
            let mut remove = false;
            for (i, item) in items.iter_mut().enumerate() {
                // A bad item takes its whole list out: removing the item
                // alone would shift the positions later checks report.
                remove |= walk(fields, &child, &format!("{path}[{i}]"), item, check);
            }
            let count = items.len();
            let mut error = |reason: String| check.soft_errors.push(FieldError::new(path, reason));
            if let Some(min) = field.min_items.filter(|m| count < *m) {
                error(format!("at least {min} items are required, found {count}"));
            }
            if let Some(max) = field.max_items.filter(|m| count > *m) {
                error(format!("at most {max} items are allowed, found {count}"));
            }
            remove
        }
        ("string", Value::String(s)) => {
            if !field.enum_values.is_empty() && !field.enum_values.contains(s) {
                error(format!(
                    "unknown value `{s}`, expected {}",
                    expected(&field.enum_values)
                ));
                return true;
            }
            let chars = s.chars().count();
            let mut soft = |reason: String| check.soft_errors.push(FieldError::new(path, reason));
            if let Some(min) = field.min_len.filter(|m| chars < *m) {
                soft(if min == 1 {
                    "must not be empty".to_string()
                } else {
                    format!("must be at least {min} characters long")
                });
            }
            if let Some(max) = field.max_len.filter(|m| chars > *m) {
                soft(format!(
                    "must be at most {max} characters long, found {chars}"
                ));
            }
            if let Some(pattern) = field.pattern.as_ref().filter(|p| !p.is_match(s)) {
                soft(format!("`{s}` does not match `{}`", pattern.as_str()));
            }
            false
        }
        ("integer" | "number", Value::Number(n)) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if field.ty == "integer" && !(n.is_i64() || n.is_u64() || f.fract() == 0.0) {
                error(format!("{n} is not a whole number"));
                return true;
            }
            if field.int32 && !(f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&f) {
                error(format!("{n} does not fit a 32-bit integer"));
                return true;
            }
            let mut soft = |reason: String| check.soft_errors.push(FieldError::new(path, reason));
            if let Some(min) = field.min.filter(|m| f < *m) {
                soft(format!("{n} is less than the minimum {min}"));
            }
            if let Some(max) = field.max.filter(|m| f > *m) {
                soft(format!("{n} is more than the maximum {max}"));
            }
            false
        }
        ("boolean", Value::Bool(_)) => false,
        ("int-or-string", Value::Number(_) | Value::String(_)) => false,
        (expected_type, _) => {
            let hint = match (expected_type, hint_bool) {
                ("string", Some(_)) => {
                    "; YAML reads an unquoted yes/no/on/off/y/n/true/false as a boolean: quote it if a string is meant".to_string()
                }
                ("string", None) if is_number => "; quote it if a string is meant".to_string(),
                _ => String::new(),
            };
            let wanted = match expected_type {
                "map" => "object",
                "int-or-string" => "integer or string",
                t => t,
            };
            error(format!("expected {wanted}, found {found}{hint}"));
            true
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// "one of `a`, `b`" for messages.
fn expected(names: &[String]) -> String {
    match names {
        [] => "no fields here".to_string(),
        [one] => format!("`{one}`"),
        many => format!(
            "one of {}",
            many.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The OpenAPI v3 schema of `kind`'s `spec` as Istio publishes it, in
/// the structural form a Kubernetes CustomResourceDefinition takes: types,
/// enums, bounds, patterns and required fields, as in the table. Istio's
/// `oneOf`s and CEL rules are not in the table; the validating webhook
/// runs the same checks as `trellis apply`, which include them. `None` for
/// a kind the table does not have.
pub fn openapi_schema(kind: &str) -> Option<Value> {
    fields(kind).map(|fields| openapi(fields, "spec"))
}

fn openapi(fields: &Fields, schema: &str) -> Value {
    let Some(field) = fields.get(schema) else {
        return serde_json::json!({"x-kubernetes-preserve-unknown-fields": true});
    };
    let mut out = serde_json::Map::new();
    let mut put = |key: &str, value: Value| {
        out.insert(key.to_string(), value);
    };
    match field.ty.as_str() {
        "object" => {
            put("type", "object".into());
            let properties = field
                .children
                .iter()
                .map(|name| (name.clone(), openapi(fields, &format!("{schema}.{name}"))))
                .collect();
            put("properties", Value::Object(properties));
        }
        "map" => {
            put("type", "object".into());
            put(
                "additionalProperties",
                openapi(fields, &format!("{schema}{{}}")),
            );
        }
        "array" => {
            put("type", "array".into());
            put("items", openapi(fields, &format!("{schema}[]")));
        }
        "int-or-string" => put("x-kubernetes-int-or-string", true.into()),
        "any" => put("x-kubernetes-preserve-unknown-fields", true.into()),
        ty => put("type", ty.into()),
    }
    if field.int32 {
        put("format", "int32".into());
    }
    let number = |n: f64| {
        if n.fract() == 0.0 && n.abs() < 9.0e15 {
            Value::from(n as i64)
        } else {
            Value::from(n)
        }
    };
    let bounds = [
        ("minimum", field.min.map(number)),
        ("maximum", field.max.map(number)),
        ("minLength", field.min_len.map(Value::from)),
        ("maxLength", field.max_len.map(Value::from)),
        ("minItems", field.min_items.map(Value::from)),
        ("maxItems", field.max_items.map(Value::from)),
        ("minProperties", field.min_props.map(Value::from)),
        ("maxProperties", field.max_props.map(Value::from)),
    ];
    for (key, value) in bounds {
        if let Some(value) = value {
            put(key, value);
        }
    }
    if !field.enum_values.is_empty() {
        put("enum", field.enum_values.clone().into());
    }
    if let Some(pattern) = &field.pattern {
        put("pattern", pattern.as_str().into());
    }
    if !field.required.is_empty() {
        put("required", field.required.clone().into());
    }
    Value::Object(out)
}

/// An example value of each field, for the completeness test: a document
/// setting every field the schema has.
#[cfg(test)]
pub(crate) fn example(fields: &Fields, schema: &str) -> Value {
    let Some(field) = fields.get(schema) else {
        return Value::Null;
    };
    match field.ty.as_str() {
        "object" => Value::Object(
            field
                .children
                .iter()
                .map(|name| (name.clone(), example(fields, &format!("{schema}.{name}"))))
                .collect(),
        ),
        "map" => {
            let mut map = serde_json::Map::new();
            map.insert("key".to_string(), example(fields, &format!("{schema}{{}}")));
            Value::Object(map)
        }
        "array" => Value::Array(vec![example(fields, &format!("{schema}[]"))]),
        "string" => Value::String(
            field
                .enum_values
                .last()
                .cloned()
                .unwrap_or_else(|| "x".to_string()),
        ),
        "integer" | "int-or-string" => Value::from(field.min.unwrap_or(1.0).max(1.0) as i64),
        "number" => Value::from(1.0),
        "boolean" => Value::Bool(true),
        _ => Value::Object(Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_supported_kind() {
        for kind in super::super::Spec::KINDS {
            let fields = fields(kind).unwrap_or_else(|| panic!("{kind}"));
            assert_eq!(fields["spec"].ty, "object", "{kind}");
        }
    }

    /// Every field of the table is one node of the OpenAPI schema, with
    /// its type, bounds and required fields.
    #[test]
    fn the_openapi_schema_has_every_field_of_the_table() {
        fn count(schema: &Value) -> usize {
            let children = |key: &str| schema.get(key).map_or(0, count);
            let properties = schema
                .get("properties")
                .and_then(Value::as_object)
                .map_or(0, |p| p.values().map(count).sum());
            1 + properties + children("items") + children("additionalProperties")
        }
        for kind in super::super::Spec::KINDS {
            let schema = openapi_schema(kind).unwrap();
            assert_eq!(count(&schema), fields(kind).unwrap().len(), "{kind}");
        }
        let dr = openapi_schema("DestinationRule").unwrap();
        assert_eq!(dr["required"], serde_json::json!(["host"]));
        let labels = &dr["properties"]["subsets"]["items"]["properties"]["labels"];
        assert_eq!(labels["additionalProperties"]["type"], "string");
        let vs = openapi_schema("VirtualService").unwrap();
        let weight = &vs["properties"]["http"]["items"]["properties"]["route"]["items"]
            ["properties"]["weight"];
        assert_eq!(weight["type"], "integer");
        assert_eq!(weight["format"], "int32");
        assert!(openapi_schema("EnvoyFilter").is_none());
    }

    /// The completeness test: a document that sets every field of Istio's
    /// schema of the kind is read without an unknown field or a type error
    /// and typed, so no field of the schema copy is refused. When the copy
    /// is refreshed, this fails for each field the types cannot take.
    #[test]
    fn every_field_of_istios_schema_is_accepted() {
        use super::super::Resource;
        let mut failures = Vec::new();
        for kind in super::super::Spec::KINDS {
            let fields = fields(kind).unwrap();
            let group = super::super::Spec::group_of(kind).unwrap();
            for path in fields.keys() {
                let document = serde_json::json!({
                    "apiVersion": format!("{}/v1", group.as_str()),
                    "kind": kind,
                    "metadata": {"name": "one", "namespace": "ns"},
                    "spec": setting(fields, path),
                });
                failures.extend(accepted(kind, path, fields, Resource::check(document)));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    /// A spec that sets only the field at schema path `path`.
    fn setting(fields: &Fields, path: &str) -> Value {
        let leaf = match fields[path].ty.as_str() {
            "object" | "map" => Value::Object(Default::default()),
            "array" => Value::Array(Vec::new()),
            _ => example(fields, path),
        };
        let mut value = leaf;
        let mut rest = path;
        while rest != "spec" {
            if let Some(parent) = rest.strip_suffix("[]") {
                value = Value::Array(vec![value]);
                rest = parent;
            } else if let Some(parent) = rest.strip_suffix("{}") {
                let mut map = serde_json::Map::new();
                map.insert("key".to_string(), value);
                value = Value::Object(map);
                rest = parent;
            } else {
                let (parent, name) = rest.rsplit_once('.').unwrap();
                let mut map = serde_json::Map::new();
                map.insert(name.to_string(), value);
                value = Value::Object(map);
                rest = parent;
            }
        }
        value
    }

    fn accepted(
        kind: &str,
        path: &str,
        fields: &Fields,
        checked: super::super::Checked,
    ) -> Vec<String> {
        {
            let refused: Vec<String> = checked
                .errors
                .iter()
                .filter(|e| {
                    ["unknown field", "expected ", "invalid type", "unknown variant", "unknown value", "missing field"]
                        .iter()
                        .any(|r| e.reason.starts_with(r))
                        // Where Istio refuses a message without these
                        // fields too: a warmup needs its duration, a regex
                        // rewrite both parts.
                        && !(e.reason.starts_with("missing field")
                            && (e.path.ends_with(".warmup") || e.path.ends_with(".uriRegexRewrite")))
                })
                .map(ToString::to_string)
                .collect();
            if !refused.is_empty() {
                return vec![format!("{kind} {path}: {refused:?}")];
            }
            // A value that breaks a rule checked while typing (an empty
            // string match) leaves the document untyped; that is no refusal
            // of the field.
            let Some(resource) = checked.resource else {
                return Vec::new();
            };
            // Every field the types write back is one of Istio's.
            let written = serde_json::to_value(&resource.spec).unwrap();
            let mut unknown = Vec::new();
            paths_not_in(fields, "spec", &written, &mut unknown);
            unknown
                .into_iter()
                .map(|u| format!("{kind} {path}: the types write `{u}`, not in the schema"))
                .collect()
        }
    }

    fn paths_not_in(fields: &Fields, schema: &str, value: &Value, out: &mut Vec<String>) {
        let Some(field) = fields.get(schema) else {
            out.push(schema.to_string());
            return;
        };
        match (field.ty.as_str(), value) {
            ("object", Value::Object(m)) => {
                for (k, v) in m {
                    paths_not_in(fields, &format!("{schema}.{k}"), v, out);
                }
            }
            ("map", Value::Object(m)) => {
                for v in m.values() {
                    paths_not_in(fields, &format!("{schema}{{}}"), v, out);
                }
            }
            ("array", Value::Array(items)) => {
                for v in items {
                    paths_not_in(fields, &format!("{schema}[]"), v, out);
                }
            }
            _ => {}
        }
    }
}
