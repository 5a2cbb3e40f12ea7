//! [`Resource`]: one Kubernetes-style config document, `{apiVersion, kind,
//! metadata, spec}`, with its spec typed by kind.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

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
fn parse_spec<T: KindSpec>(value: serde_yaml::Value) -> Result<Spec, FieldError> {
    // A missing or empty `spec:` is an empty spec, as in Kubernetes.
    let value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        value => value,
    };
    serde_path_to_error::deserialize::<_, T>(value)
        .map(Into::into)
        .map_err(|e| path_error(&e, "spec"))
}

/// A serde error as a [`FieldError`], its path under `prefix`.
fn path_error(error: &serde_path_to_error::Error<serde_yaml::Error>, prefix: &str) -> FieldError {
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
            fn parse(kind: &str, value: serde_yaml::Value) -> Option<Result<Spec, FieldError>> {
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

/// The document as written, before the spec is typed.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawResource {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_yaml::Value,
    /// Written by controllers (`kubectl get -o yaml` shows it); accepted in
    /// any shape and dropped, since it is not configuration.
    #[serde(default)]
    #[allow(dead_code)] // only read to be dropped
    status: IgnoredAny,
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

impl Resource {
    /// The `kind` string.
    pub fn kind(&self) -> &'static str {
        self.spec.kind()
    }

    /// Types one YAML document. Strict: unknown fields, kinds and
    /// apiVersions, and a kind under another group's apiVersion, are
    /// errors naming the field. Does not [`validate`](Resource::validate).
    pub fn from_value(value: serde_yaml::Value) -> Result<Resource, FieldError> {
        let raw: RawResource =
            serde_path_to_error::deserialize(value).map_err(|e| path_error(&e, ""))?;
        let api_version = ApiVersion::parse(&raw.api_version).ok_or_else(|| {
            FieldError::new(
                "apiVersion",
                format!(
                    "unknown apiVersion `{}`; supported: {}",
                    raw.api_version,
                    ApiVersion::list(None)
                ),
            )
        })?;
        let unknown_kind = || {
            FieldError::new(
                "kind",
                format!(
                    "unknown kind `{}`; supported: {}",
                    raw.kind,
                    Spec::KINDS.join(", ")
                ),
            )
        };
        let group = Spec::group_of(&raw.kind).ok_or_else(unknown_kind)?;
        if group != api_version.group() {
            return Err(FieldError::new(
                "apiVersion",
                format!(
                    "kind `{}` is served by {group} ({}), not by {api_version}",
                    raw.kind,
                    ApiVersion::list(Some(group))
                ),
            ));
        }
        let spec = Spec::parse(&raw.kind, raw.spec).ok_or_else(unknown_kind)??;
        Ok(Resource {
            api_version,
            metadata: raw.metadata,
            spec,
        })
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
