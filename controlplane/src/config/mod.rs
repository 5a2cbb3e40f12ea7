//! The mesh's configuration as the control plane stores it: Istio resources
//! parsed and validated from the sources an operator applies
//! ([`parse_sources`]), each kept under its store key as JSON
//! ([`stored`], [`from_json`]), and the cross-resource checks of
//! `trellis analyze` ([`analyze`]).
pub mod analyze;
pub mod owner;

use std::collections::BTreeSet;

use trellis_api::config::{
    parse_documents, ConfigError, FieldError, Resource, Spec, WorkloadGroup,
};
use trellis_api::v1::{ConfigSource, ResourceRef};

use crate::raft::state::registry::{config_key, StoredConfig};
use crate::raft::Store;

/// Most bytes of YAML one apply may carry (all sources together).
pub const MAX_APPLY_BYTES: usize = 64 << 20;

/// The store key of a resource, `config/KIND/NS/NAME`.
pub fn key_of(r: &Resource) -> String {
    config_key(r.kind(), &r.metadata.namespace, &r.metadata.name)
}

/// The reference to a resource, for API answers.
pub fn reference(r: &Resource) -> ResourceRef {
    ResourceRef {
        kind: r.kind().to_string(),
        namespace: r.metadata.namespace.clone(),
        name: r.metadata.name.clone(),
    }
}

/// Why the sources of an apply were refused; nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error(
        "{total} bytes of config in one apply, more than the {MAX_APPLY_BYTES} allowed; \
         apply it in parts"
    )]
    TooLarge { total: usize },
    /// Every problem, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<SourceProblem>),
}

/// A problem of one source of an apply; each line of its message starts
/// with the source's name.
#[derive(Debug, thiserror::Error)]
pub enum SourceProblem {
    /// Documents that do not parse or validate, by field.
    #[error(
        "{}",
        .errors.to_string().lines().map(|l| format!("{source_name}: {l}")).collect::<Vec<_>>().join("\n")
    )]
    Documents {
        source_name: String,
        errors: ConfigError,
    },
    #[error("{source_name}: {kind} {namespace}/{name} is given more than once in this apply")]
    Duplicate {
        source_name: String,
        kind: String,
        namespace: String,
        name: String,
    },
}

/// Parses and validates every document of every source. All or nothing:
/// the error lists every problem, each line starting with the source's
/// name, then the document, the field path and the reason. A resource
/// given twice is an error too.
pub fn parse_sources(sources: &[ConfigSource]) -> Result<Vec<Resource>, SourcesError> {
    let total: usize = sources.iter().map(|s| s.yaml.len()).sum();
    if total > MAX_APPLY_BYTES {
        return Err(SourcesError::TooLarge { total });
    }
    let mut problems = Vec::new();
    let mut all = Vec::new();
    for s in sources {
        match parse_documents(&s.yaml) {
            Ok(rs) => all.extend(rs.into_iter().map(|r| (s.name.as_str(), r))),
            Err(errors) => problems.push(SourceProblem::Documents {
                source_name: s.name.clone(),
                errors,
            }),
        }
    }
    let mut seen = BTreeSet::new();
    for (source, r) in &all {
        if !seen.insert(key_of(r)) {
            problems.push(SourceProblem::Duplicate {
                source_name: source.to_string(),
                kind: r.kind().to_string(),
                namespace: r.metadata.namespace.clone(),
                name: r.metadata.name.clone(),
            });
        }
    }
    if problems.is_empty() {
        Ok(all.into_iter().map(|(_, r)| r).collect())
    } else {
        Err(SourcesError::Invalid(problems))
    }
}

/// The stored form: JSON, and the hosts that get a virtual IP (those of a
/// ServiceEntry without addresses, wildcards excepted, as in Istio).
pub fn stored(r: &Resource) -> StoredConfig {
    let vip_hosts = match &r.spec {
        Spec::ServiceEntry(se) if se.addresses.is_empty() => se
            .hosts
            .iter()
            .filter(|h| !h.starts_with('*'))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    StoredConfig {
        json: serde_json::to_vec(r).expect("a resource always serializes to JSON"),
        vip_hosts,
    }
}

/// A stored resource read back. Stored resources were validated when
/// applied, so a failure here means the store holds something this build
/// cannot read (a newer version wrote it).
pub fn from_json(json: &[u8]) -> Result<Resource, StoredConfigError> {
    let value: serde_json::Value = serde_json::from_slice(json)?;
    Ok(Resource::from_value(value)?)
}

/// The WorkloadGroup `namespace/name` in `store`, if there is one: the
/// copy in force ([`owner`]), applied with `trellis apply` or to a
/// Kubernetes cluster.
pub fn workload_group(store: &Store, namespace: &str, name: &str) -> Option<WorkloadGroup> {
    let rel = format!("WorkloadGroup/{namespace}/{name}");
    let stored = store.config(&owner::copies(store, &rel).first()?.key)?;
    match from_json(&stored.json).ok()?.spec {
        Spec::WorkloadGroup(g) => Some(*g),
        _ => None,
    }
}

/// The service account a WorkloadGroup's workloads run as (`default`
/// unless its template names one, as in Istio).
pub fn service_account(group: &WorkloadGroup) -> &str {
    group
        .template
        .as_ref()
        .and_then(|t| t.service_account.as_deref())
        .unwrap_or("default")
}

/// A stored resource this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoredConfigError {
    #[error("a stored resource is not JSON (is the store damaged?)")]
    Json(#[from] serde_json::Error),
    #[error("a stored resource is not one this build reads (did a newer Trellis write it?)")]
    Resource(#[from] FieldError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, yaml: &str) -> ConfigSource {
        ConfigSource {
            name: name.into(),
            yaml: yaml.into(),
        }
    }

    const SE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local, '*.wild.example']
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
";

    #[test]
    fn errors_name_the_source_document_and_field() {
        let bad = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: a}
      weight: 50
    - destination: {host: reviews, subset: b}
      weight: 40
";
        let err = parse_sources(&[source("good.yaml", SE), source("bad.yaml", bad)])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.yaml: document 1 (VirtualService default/r): spec.http[0]"),
            "{err}"
        );
    }

    #[test]
    fn a_resource_given_twice_is_refused() {
        let err = parse_sources(&[source("a.yaml", SE), source("b.yaml", SE)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.yaml: ServiceEntry default/reviews is given more than once"),
            "{err}"
        );
    }

    #[test]
    fn stored_round_trips_and_names_vip_hosts() {
        let r = parse_sources(&[source("a.yaml", SE)]).unwrap().remove(0);
        let s = stored(&r);
        assert_eq!(s.vip_hosts, vec!["reviews.default.svc.cluster.local"]);
        assert_eq!(from_json(&s.json).unwrap(), r);
        assert_eq!(key_of(&r), "config/ServiceEntry/default/reviews");
    }
}
