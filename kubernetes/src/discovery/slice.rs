//! EndpointSlice as discovery reads it, from either version the API
//! server serves: `discovery.k8s.io/v1` (1.21 and later) or `v1beta1`
//! (1.20, where v1 does not exist yet). k8s-openapi has only v1, so this
//! is a serde type of the fields both share: the endpoints (addresses,
//! readiness, the pod they are) and the ports (by service port name).
use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// The label that names a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSlice {
    pub metadata: SliceMetadata,
    /// `IPv4`, `IPv6` or `FQDN`: only IP slices are endpoints here.
    pub address_type: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(deserialize_with = "null_as_empty")]
    pub ports: Vec<SlicePort>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct SliceMetadata {
    pub name: String,
    pub namespace: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SliceEndpoint {
    #[serde(deserialize_with = "null_as_empty")]
    pub addresses: Vec<String>,
    pub conditions: Conditions,
    pub target_ref: Option<TargetRef>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Conditions {
    /// Unset means ready, in both versions ("an unknown state, which
    /// consumers should interpret as ready").
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TargetRef {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// A port of a slice: the Service port's name and the number it resolved
/// to on the endpoints (a named `targetPort` resolved per pod).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<u32>,
    pub protocol: Option<String>,
}

/// `null` read as empty: the API server writes `"endpoints": null` for a
/// slice whose Service has no endpoint (scaled to zero, no pod selected),
/// which is a slice with none, not one to leave out.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl EndpointSlice {
    /// The Service the slice belongs to.
    pub fn service(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(SERVICE_NAME_LABEL)
            .map(String::as_str)
    }

    /// Whether its endpoints are IP addresses.
    pub fn is_ip(&self) -> bool {
        matches!(self.address_type.as_str(), "IPv4" | "IPv6")
    }
}

impl SliceEndpoint {
    pub fn is_ready(&self) -> bool {
        self.conditions.ready != Some(false)
    }

    /// The pod this endpoint is, if it is one.
    pub fn pod(&self) -> Option<&str> {
        self.target_ref
            .as_ref()
            .filter(|t| t.kind == "Pod")
            .map(|t| t.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_with_null_endpoints_and_ports_is_an_empty_slice() {
        let slice: EndpointSlice = serde_json::from_str(
            r#"{"metadata": {"name": "reviews-x", "namespace": "default",
                 "labels": {"kubernetes.io/service-name": "reviews"}},
                "addressType": "IPv4", "endpoints": null, "ports": null}"#,
        )
        .unwrap();
        assert_eq!(slice.service(), Some("reviews"));
        assert!(slice.endpoints.is_empty() && slice.ports.is_empty());
    }
}
