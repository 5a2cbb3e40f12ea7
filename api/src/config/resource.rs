//! [`Resource`]: one Kubernetes-style config document, `{apiVersion, kind,
//! metadata, spec}`, with its spec typed by kind.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use super::schema;
use super::validate::{is_dns1123_label, is_dns1123_subdomain, push, Validate};
use super::{
    AuthorizationPolicy, DestinationRule, FieldError, Gateway, PeerAuthentication,
    RequestAuthentication, ServiceEntry, Sidecar, VirtualService, WorkloadEntry, WorkloadGroup,
};

/// The Istio API groups Trellis serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `networking.istio.io`: routing and service registry.
    Networking,
    /// `security.istio.io`: authentication and authorization.
    Security,
}

impl Group {
    /// The group name, e.g. `networking.istio.io`.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Networking => "networking.istio.io",
            Group::Security => "security.istio.io",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accepted `apiVersion`s. All versions of a group share one schema,
/// as in Istio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// `networking.istio.io/v1`.
    NetworkingV1,
    /// `networking.istio.io/v1beta1`.
    NetworkingV1Beta1,
    /// `networking.istio.io/v1alpha3`.
    NetworkingV1Alpha3,
    /// `security.istio.io/v1`.
    SecurityV1,
    /// `security.istio.io/v1beta1`.
    SecurityV1Beta1,
}

impl ApiVersion {
    /// Every accepted version, newest first within a group.
    pub const ALL: [ApiVersion; 5] = [
        ApiVersion::NetworkingV1,
        ApiVersion::NetworkingV1Beta1,
        ApiVersion::NetworkingV1Alpha3,
        ApiVersion::SecurityV1,
        ApiVersion::SecurityV1Beta1,
    ];

    /// `group/version`, as written in `apiVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::NetworkingV1 => "networking.istio.io/v1",
            ApiVersion::NetworkingV1Beta1 => "networking.istio.io/v1beta1",
            ApiVersion::NetworkingV1Alpha3 => "networking.istio.io/v1alpha3",
            ApiVersion::SecurityV1 => "security.istio.io/v1",
            ApiVersion::SecurityV1Beta1 => "security.istio.io/v1beta1",
        }
    }

    /// The group of this version.
    pub fn group(self) -> Group {
        match self {
            ApiVersion::NetworkingV1
            | ApiVersion::NetworkingV1Beta1
            | ApiVersion::NetworkingV1Alpha3 => Group::Networking,
            ApiVersion::SecurityV1 | ApiVersion::SecurityV1Beta1 => Group::Security,
        }
    }

    /// An `apiVersion` string, exactly as written; `None` if not accepted.
    pub fn parse(s: &str) -> Option<ApiVersion> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The accepted versions of `group`, comma-separated, for messages.
    fn list(group: Option<Group>) -> String {
        Self::ALL
            .into_iter()
            .filter(|v| group.is_none_or(|g| v.group() == g))
            .map(ApiVersion::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by the spec type of each kind. To add a kind: a file with
/// its spec type implementing this trait and [`Validate`], its name in the
/// `kinds!` list in `resource.rs`, and its table tests in `config/tests/`.
pub trait KindSpec: DeserializeOwned + Serialize + Validate + Into<Spec> {
    /// The `kind` string, e.g. `VirtualService`.
    const KIND: &'static str;
    /// The API group serving the kind.
    const GROUP: Group;
}

/// Parses a spec from its YAML value, with the path of any error.
fn parse_spec<T: KindSpec>(value: serde_json::Value) -> Result<Spec, FieldError> {
    // A missing or empty `spec:` is an empty spec, as in Kubernetes.
    let value = match value {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        value => value,
    };
    serde_path_to_error::deserialize::<_, T>(value)
        .map(Into::into)
        .map_err(|e| path_error(&e, "spec"))
}

/// A serde error as a [`FieldError`], its path under `prefix`.
fn path_error(error: &serde_path_to_error::Error<serde_json::Error>, prefix: &str) -> FieldError {
    let inner = error.path().to_string();
    let path = match (prefix, inner.as_str()) {
        (prefix, ".") => prefix.to_string(),
        ("", inner) => inner.to_string(),
        (prefix, inner) => format!("{prefix}.{inner}"),
    };
    FieldError::new(path, error.inner().to_string())
}

macro_rules! kinds {
    ($($kind:ident),+ $(,)?) => {
        /// The `spec` of a resource, one arm per supported kind. Boxed: the
        /// kinds differ a lot in size.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Spec {
            $(
                #[doc = concat!("A `", stringify!($kind), "`.")]
                $kind(Box<$kind>),
            )+
        }

        impl Spec {
            /// Every supported kind.
            pub const KINDS: &'static [&'static str] = &[$($kind::KIND),+];

            /// The `kind` string.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Spec::$kind(_) => $kind::KIND,)+
                }
            }

            /// The API group serving `kind`; `None` for unsupported kinds.
            pub fn group_of(kind: &str) -> Option<Group> {
                $(if kind == $kind::KIND {
                    return Some($kind::GROUP);
                })+
                None
            }

            /// Parses the spec of a supported `kind`.
            fn parse(kind: &str, value: serde_json::Value) -> Option<Result<Spec, FieldError>> {
                $(if kind == $kind::KIND {
                    return Some(parse_spec::<$kind>(value));
                })+
                None
            }
        }

        impl Validate for Spec {
            fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
                match self {
                    $(Spec::$kind(spec) => spec.validate_at(path, errors),)+
                }
            }

            fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
                match self {
                    $(Spec::$kind(spec) => spec.warn_at(path, warnings),)+
                }
            }
        }

        $(
            impl From<$kind> for Spec {
                fn from(spec: $kind) -> Spec {
                    Spec::$kind(Box::new(spec))
                }
            }
        )+
    };
}

kinds!(
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    PeerAuthentication,
    Gateway,
    Sidecar,
    WorkloadGroup,
    AuthorizationPolicy,
    RequestAuthentication,
);

/// Short names of Istio's CRDs, as kubectl knows them.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("VirtualService", "vs"),
    ("DestinationRule", "dr"),
    ("ServiceEntry", "se"),
    ("WorkloadEntry", "we"),
    ("WorkloadGroup", "wg"),
    ("Gateway", "gw"),
    ("PeerAuthentication", "pa"),
    ("AuthorizationPolicy", "ap"),
    ("RequestAuthentication", "ra"),
];

/// The names kubectl knows a kind by, as Istio's CRDs name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindNames {
    /// Lowercase kind: `virtualservice`.
    pub singular: String,
    /// `virtualservices`, `serviceentries`.
    pub plural: String,
    /// `vs`; none for `Sidecar`.
    pub short_names: Vec<&'static str>,
}

impl Spec {
    /// The names of `kind` (a supported kind or not).
    pub fn names(kind: &str) -> KindNames {
        let singular = kind.to_ascii_lowercase();
        // `policy` → `policies`, but `gateway` → `gateways`.
        let plural = match singular.strip_suffix('y') {
            Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
            _ => format!("{singular}s"),
        };
        let short_names = SHORT_NAMES
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .collect();
        KindNames {
            singular,
            plural,
            short_names,
        }
    }
}

/// The Kubernetes `metadata` Trellis uses. Parsing also accepts, and
/// drops, the fields the API server fills in (`uid`, `resourceVersion`,
/// `managedFields`, ...), so that `kubectl get -o yaml` output can be fed
/// back; they are not serialized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "RawMetadata")]
pub struct Metadata {
    /// Object name, a DNS-1123 subdomain.
    pub name: String,
    /// Namespace; `default` when omitted.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

/// [`Metadata`] as written: the fields Trellis uses, strictly, plus the
/// server-populated `ObjectMeta` fields, read whatever their shape and
/// thrown away. Any other field is still an error.
#[derive(Deserialize)]
// The server-populated fields are only read to be dropped.
#[allow(dead_code)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMetadata {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    uid: IgnoredAny,
    #[serde(default)]
    resource_version: IgnoredAny,
    #[serde(default)]
    generation: IgnoredAny,
    #[serde(default)]
    creation_timestamp: IgnoredAny,
    #[serde(default)]
    managed_fields: IgnoredAny,
    #[serde(default)]
    self_link: IgnoredAny,
    #[serde(default)]
    finalizers: IgnoredAny,
    #[serde(default)]
    owner_references: IgnoredAny,
    #[serde(default)]
    deletion_timestamp: IgnoredAny,
    #[serde(default)]
    deletion_grace_period_seconds: IgnoredAny,
    #[serde(default)]
    generate_name: IgnoredAny,
}

impl From<RawMetadata> for Metadata {
    fn from(raw: RawMetadata) -> Metadata {
        Metadata {
            name: raw.name,
            namespace: raw.namespace,
            labels: raw.labels,
            annotations: raw.annotations,
        }
    }
}

impl Validate for Metadata {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if !is_dns1123_subdomain(&self.name) {
            push(
                errors,
                &format!("{path}.name"),
                format!(
                    "name `{}` must be lowercase letters, digits, `-` and `.` (a DNS-1123 subdomain)",
                    self.name
                ),
            );
        }
        if !is_dns1123_label(&self.namespace) {
            push(
                errors,
                &format!("{path}.namespace"),
                format!(
                    "namespace `{}` must be lowercase letters, digits and `-` (a DNS-1123 label)",
                    self.namespace
                ),
            );
        }
    }
}

/// One parsed config document.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The `apiVersion` it was written with.
    pub api_version: ApiVersion,
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// The spec, typed by kind.
    pub spec: Spec,
}

/// Top-level fields of a document besides `apiVersion` and `kind`.
const DOCUMENT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// `metadata` fields: those Trellis reads, then those the API server
/// fills in, which are accepted and dropped.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
];

/// Istio kinds Trellis does not serve, and what to use instead.
const UNSUPPORTED_KINDS: &[(&str, &str)] = &[
    (
        "EnvoyFilter",
        "Trellis's proxy is not Envoy, so Envoy patches have nothing to apply to; express the intent with VirtualService, DestinationRule or AuthorizationPolicy fields",
    ),
    (
        "WasmPlugin",
        "Trellis's proxy runs no Wasm extensions; use VirtualService header operations, or AuthorizationPolicy `action: CUSTOM` for external authorization",
    ),
    (
        "TrafficExtension",
        "Trellis's proxy runs no Wasm or Lua extensions; use VirtualService header operations",
    ),
    (
        "Telemetry",
        "metrics, access logs and tracing are set per agent (`trellis-agent --access-log`, the metrics on :15020, OTLP export); see docs/agent.md",
    ),
    (
        "ProxyConfig",
        "proxy settings are `trellis-agent` flags and TRELLIS_ environment variables; see docs/agent.md",
    ),
];

/// A document checked: the resource when it could be typed, and every
/// problem found. Refused when `errors` is not empty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Checked {
    /// The typed resource; `None` when the document could not be typed.
    pub resource: Option<Resource>,
    /// Every error, each naming the field.
    pub errors: Vec<FieldError>,
    /// What is accepted but worth saying: fields Trellis does not act on,
    /// and what Istio warns about.
    pub warnings: Vec<FieldError>,
}

/// What the typing phase of [`Resource::check`] found.
#[derive(Default)]
struct Reading {
    resource: Option<Resource>,
    /// Errors of the top level, the metadata, the schema and the types.
    errors: Vec<FieldError>,
    schema_check: schema::SchemaCheck,
    /// The spec as written, after the schema check took the bad values out.
    written: serde_json::Value,
    kind: String,
}

impl Resource {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    /// Checks one document and reports every problem: unknown fields and
    /// values of the wrong type anywhere (against Istio's schema of the
    /// kind), kinds and apiVersions Trellis does not serve, and the
    /// semantic checks of [`validate`](Resource::validate), together.
    /// Warnings name the fields Trellis accepts but does not act on, and
    /// what Istio's validation warns about.
    pub fn check(value: serde_json::Value) -> Checked {
        let Reading {
            resource,
            mut errors,
            schema_check,
            written,
            kind,
        } = Resource::read(value);
        let mut checked = Checked::default();
        let Some(resource) = resource else {
            errors.extend(schema_check.soft_errors);
            checked.errors = errors;
            return checked;
        };
        let mut found = Vec::new();
        resource.metadata.validate_at("metadata", &mut found);
        resource.spec.validate_at("spec", &mut found);
        // What the schema already reported, or took out, is not reported
        // again in other words; where the semantic checks say what a
        // missing or out-of-bounds field should be, their words are kept.
        let reported: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
        let found: Vec<FieldError> = found
            .into_iter()
            .filter(|e| !reported.contains(&e.path) && !schema_check.covers(&e.path))
            .collect();
        errors.extend(
            schema_check
                .soft_errors
                .iter()
                .filter(|s| !found.iter().any(|e| e.path == s.path))
                .cloned(),
        );
        errors.extend(found);
        resource.spec.warn_at("spec", &mut checked.warnings);
        checked
            .warnings
            .extend(super::support::not_acted_on(&kind, &written));
        checked.errors = errors;
        checked.resource = Some(resource);
        checked
    }

    /// The typing phase of [`check`](Resource::check): the top level, the
    /// metadata, the spec against Istio's schema, then the types.
    fn read(value: serde_json::Value) -> Reading {
        let mut reading = Reading::default();
        let errors = &mut reading.errors;
        let serde_json::Value::Object(mut document) = value else {
            errors.push(FieldError::new(
                "",
                "a document must be a mapping with apiVersion, kind, metadata and spec",
            ));
            return reading;
        };
        let unknown: Vec<String> = document
            .keys()
            .filter(|k| !DOCUMENT_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect();
        for key in unknown {
            errors.push(FieldError::new(
                &key,
                format!("unknown field `{key}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`"),
            ));
            document.remove(&key);
        }
        let kind = match document.get("kind") {
            Some(serde_json::Value::String(kind)) => kind.clone(),
            Some(_) => {
                errors.push(FieldError::new("kind", "must be a string"));
                return reading;
            }
            None => {
                errors.push(FieldError::new("kind", "`kind` is required"));
                return reading;
            }
        };
        let api_version = match document.get("apiVersion") {
            Some(serde_json::Value::String(v)) => v.clone(),
            _ => {
                errors.push(FieldError::new(
                    "apiVersion",
                    "`apiVersion` is required, e.g. networking.istio.io/v1",
                ));
                String::new()
            }
        };
        if let Some((_, instead)) = UNSUPPORTED_KINDS.iter().find(|(k, _)| *k == kind) {
            errors.push(FieldError::new(
                "kind",
                format!("kind `{kind}` is not supported by Trellis: {instead}"),
            ));
            return reading;
        }
        let group = Spec::group_of(&kind);
        let version = ApiVersion::parse(&api_version);
        match (group, version) {
            (None, _) => {
                errors.push(FieldError::new(
                    "kind",
                    format!(
                        "unknown kind `{kind}`; supported: {}",
                        Spec::KINDS.join(", ")
                    ),
                ));
                return reading;
            }
            (Some(_), None) if !api_version.is_empty() => errors.push(FieldError::new(
                "apiVersion",
                format!(
                    "unknown apiVersion `{api_version}`; supported: {}",
                    ApiVersion::list(None)
                ),
            )),
            (Some(group), Some(version)) if group != version.group() => {
                errors.push(FieldError::new(
                    "apiVersion",
                    format!(
                        "kind `{kind}` is served by {group} ({}), not by {version}",
                        ApiVersion::list(Some(group))
                    ),
                ))
            }
            _ => {}
        }
        let metadata = check_metadata(document.remove("metadata"), errors);
        let mut spec = document.remove("spec").unwrap_or(serde_json::Value::Null);
        let fields = schema::fields(&kind).expect("every served kind has a schema");
        let schema_check = schema::check_spec(fields, &mut spec);
        errors.extend(schema_check.errors.iter().cloned());
        reading.written = spec.clone();
        let spec = parse_spec_reporting(&kind, spec, errors, &schema_check);
        reading.schema_check = schema_check;
        reading.kind = kind;
        if let (Some(api_version), Some(metadata), Some(spec)) = (version, metadata, spec) {
            reading.resource = Some(Resource {
                api_version,
                metadata,
                spec,
            });
        }
        reading
    }

    /// Types one document (a stored or pushed resource, or input to be
    /// [`validate`](Resource::validate)d next). Unknown fields, kinds and
    /// apiVersions, and a kind under another group's apiVersion, are
    /// errors naming the field; the first one is returned.
    pub fn from_value(value: serde_json::Value) -> Result<Resource, FieldError> {
        let reading = Resource::read(value);
        match reading.resource {
            Some(resource) if reading.errors.is_empty() => Ok(resource),
            _ => Err(reading
                .errors
                .into_iter()
                .chain(reading.schema_check.soft_errors)
                .next()
                .unwrap_or_else(|| FieldError::new("", "the document could not be read"))),
        }
    }

    /// Semantic checks of the metadata and spec; every problem found, each
    /// with its field path (e.g. `spec.http[0].route[1].weight`).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        self.metadata.validate_at("metadata", &mut errors);
        self.spec.validate_at("spec", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The document as written back, for config dumps.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceOut<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a Metadata,
    spec: &'a Spec,
}

/// Checks and types `metadata`, reporting every unknown field.
fn check_metadata(
    value: Option<serde_json::Value>,
    errors: &mut Vec<FieldError>,
) -> Option<Metadata> {
    let Some(serde_json::Value::Object(mut metadata)) = value else {
        errors.push(FieldError::new(
            "metadata",
            "`metadata` with a `name` is required",
        ));
        return None;
    };
    let unknown: Vec<String> = metadata
        .keys()
        .filter(|k| !METADATA_FIELDS.contains(&k.as_str()))
        .cloned()
        .collect();
    for key in unknown {
        errors.push(FieldError::new(
            format!("metadata.{key}"),
            format!("unknown field `{key}`"),
        ));
        metadata.remove(&key);
    }
    match serde_path_to_error::deserialize::<_, Metadata>(serde_json::Value::Object(metadata)) {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(path_error(&e, "metadata"));
            None
        }
    }
}

/// Types a spec the schema check has cleaned. A value the types still
/// refuse (a malformed duration, a bad regex) is reported and taken out,
/// and the rest typed again, so that every such value is reported.
fn parse_spec_reporting(
    kind: &str,
    mut spec: serde_json::Value,
    errors: &mut Vec<FieldError>,
    schema_check: &schema::SchemaCheck,
) -> Option<Spec> {
    for _ in 0..64 {
        match Spec::parse(kind, spec.clone())? {
            Ok(spec) => return Some(spec),
            Err(error) => {
                let removed = remove_path(&mut spec, &error.path);
                // A missing required field was reported by the schema.
                if !schema_check.reported(&error.path) {
                    errors.push(error);
                }
                if !removed {
                    return None;
                }
            }
        }
    }
    None
}

/// Removes the field at a document path such as `spec.http[0].timeout`
/// from `spec`; only a field of a mapping can go (a list item would shift
/// the positions of the others). Returns whether it was removed.
fn remove_path(spec: &mut serde_json::Value, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("spec.") else {
        return false;
    };
    let mut segments = Vec::new();
    for part in rest.split('.') {
        let mut part = part;
        let name_end = part.find('[').unwrap_or(part.len());
        segments.push((part[..name_end].to_string(), None));
        part = &part[name_end..];
        while let Some(close) = part.find(']') {
            let index = part[1..close].parse::<usize>().ok();
            segments.push((String::new(), index));
            part = &part[close + 1..];
        }
    }
    let Some((last, None)) = segments.pop() else {
        return false;
    };
    let mut node = spec;
    for (name, index) in segments {
        node = match index {
            Some(i) => match node.get_mut(i) {
                Some(n) => n,
                None => return false,
            },
            None => match node.get_mut(&name) {
                Some(n) => n,
                None => return false,
            },
        };
    }
    node.as_object_mut()
        .is_some_and(|m| m.remove(&last).is_some())
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ResourceOut {
            api_version: self.api_version.as_str(),
            kind: self.kind(),
            metadata: &self.metadata,
            spec: &self.spec,
        }
        .serialize(serializer)
    }
}
