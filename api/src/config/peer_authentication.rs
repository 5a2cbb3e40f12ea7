//! `PeerAuthentication`: whether workloads accept plain text or require
//! mutual TLS.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{check_port, push, Validate};
use super::{FieldError, WorkloadSelector};

/// `security.istio.io` `PeerAuthentication`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerAuthentication {
    /// Workloads it applies to; the whole namespace (or mesh, in the root
    /// namespace) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for all ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Modes for single ports (the workload's port numbers); needs a
    /// `selector`.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "deserialize_port_map"
    )]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// `{mode: STRICT}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MutualTls {
    /// The mode.
    pub mode: MtlsMode,
}

/// Peer authentication modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (namespace, then mesh).
    #[default]
    Unset,
    /// Plain text only.
    Disable,
    /// Both mutual TLS and plain text.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl KindSpec for PeerAuthentication {
    const KIND: &'static str = "PeerAuthentication";
    const GROUP: Group = Group::Security;
}

impl Validate for PeerAuthentication {
    fn warn_at(&self, path: &str, warnings: &mut Vec<FieldError>) {
        self.selector.warn_at(&format!("{path}.selector"), warnings);
    }

    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        self.selector
            .validate_at(&format!("{path}.selector"), errors);
        let ports_path = format!("{path}.portLevelMtls");
        let selects = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !self.port_level_mtls.is_empty() && !selects {
            push(
                errors,
                &ports_path,
                "`portLevelMtls` needs a `selector` with `matchLabels`",
            );
        }
        for port in self.port_level_mtls.keys() {
            check_port(errors, &format!("{ports_path}.{port}"), *port);
        }
    }
}

/// A map key that is a port number, written `8080` or `"8080"` (the JSON
/// form of a protobuf `map<uint32, _>`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PortKey(u32);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number")
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                u32::try_from(v)
                    .map(PortKey)
                    .map_err(|_| E::custom(format_args!("port {v} is out of range 1..=65535")))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format_args!("port {v} is out of range 1..=65535")))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.parse()
                    .map(PortKey)
                    .map_err(|_| E::custom(format_args!("`{v}` is not a port number")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn deserialize_port_map<'de, D, V>(deserializer: D) -> Result<BTreeMap<u32, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    let raw = BTreeMap::<PortKey, V>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(PortKey(port), v)| (port, v))
        .collect())
}
