//! What Trellis acts on: the one list of the fields the control plane and
//! the agent use, by kind. Every other field of Istio's schema is accepted
//! (so Istio YAML applies) and reported as a warning by
//! [`not_acted_on`], which `trellis validate`, `trellis apply` and
//! `trellis analyze` print.
//!
//! The list was read from the code that consumes the config: the agent's
//! mesh model (`dataplane/src/mesh/build.rs`: clusters, subsets, load
//! balancing, locality, connection pools, outlier detection, workload
//! selectors),
//! its routing (`agent/src/route/`, `agent/src/proxy/outbound/http/`:
//! matches, routes, rewrites, redirects, retries, faults, mirrors, header
//! operations, direct responses, timeouts), the registry and discovery
//! (`controlplane/src/discovery/`, `dataplane/src/discovery/`: service
//! entries, workload entries and groups, probes), the push scope
//! (`controlplane/src/push/`: `exportTo`, Sidecar egress hosts) and mTLS
//! (PeerAuthentication). Update it with the code: a field added here must
//! be one that changes what traffic does.

use serde_json::Value;

use super::FieldError;

/// Schema paths acted on, by kind; an entry covers the fields under it.
/// A kind with no entry is accepted and not acted on at all.
const ACTED_ON: &[(&str, &[&str])] = &[
    (
        "VirtualService",
        &[
            // `gateways`: a VirtualService or match block bound to other
            // gateways than `mesh` is left out of the agents' routes.
            "spec.gateways",
            "spec.hosts",
            "spec.exportTo",
            "spec.http[].name",
            "spec.http[].match[].uri",
            "spec.http[].match[].scheme",
            "spec.http[].match[].method",
            "spec.http[].match[].authority",
            "spec.http[].match[].headers",
            "spec.http[].match[].port",
            "spec.http[].match[].sourceLabels",
            "spec.http[].match[].gateways",
            "spec.http[].match[].queryParams",
            "spec.http[].match[].ignoreUriCase",
            "spec.http[].match[].withoutHeaders",
            "spec.http[].match[].sourceNamespace",
            "spec.http[].match[].name",
            "spec.http[].route[].destination",
            "spec.http[].route[].weight",
            "spec.http[].route[].headers",
            "spec.http[].redirect",
            "spec.http[].directResponse",
            "spec.http[].rewrite",
            "spec.http[].timeout",
            "spec.http[].retries.attempts",
            "spec.http[].retries.perTryTimeout",
            "spec.http[].retries.retryOn",
            "spec.http[].retries.backoff",
            "spec.http[].fault",
            "spec.http[].mirror",
            "spec.http[].mirrorPercentage",
            "spec.http[].mirrors",
            "spec.http[].headers",
            "spec.tcp[].match[].port",
            "spec.tcp[].match[].sourceLabels",
            "spec.tcp[].match[].gateways",
            "spec.tcp[].route[].destination",
            "spec.tcp[].route[].weight",
        ],
    ),
    (
        "DestinationRule",
        &[
            "spec.host",
            "spec.exportTo",
            "spec.workloadSelector",
            "spec.subsets[].name",
            "spec.subsets[].labels",
            // A port's policy: which port.
            "spec.trafficPolicy.portLevelSettings[].port",
            "spec.trafficPolicy.loadBalancer.simple",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpHeaderName",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie",
            "spec.trafficPolicy.loadBalancer.consistentHash.httpQueryParameterName",
            "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp",
            // Locality-aware balancing (`dataplane/src/mesh/locality.rs`).
            "spec.trafficPolicy.loadBalancer.localityLbSetting",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
            "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration",
            "spec.trafficPolicy.connectionPool.tcp.idleTimeout",
            "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            "spec.trafficPolicy.connectionPool.http.maxRetries",
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
            "spec.trafficPolicy.connectionPool.http.useClientProtocol",
            "spec.trafficPolicy.connectionPool.http.maxConcurrentStreams",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            "spec.trafficPolicy.outlierDetection.interval",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
        ],
    ),
    (
        "ServiceEntry",
        &[
            "spec.hosts",
            "spec.addresses",
            "spec.ports[].number",
            "spec.ports[].name",
            "spec.ports[].protocol",
            "spec.ports[].targetPort",
            "spec.location",
            "spec.resolution",
            "spec.endpoints[].address",
            "spec.endpoints[].ports",
            "spec.endpoints[].labels",
            "spec.endpoints[].network",
            "spec.endpoints[].locality",
            "spec.endpoints[].weight",
            "spec.endpoints[].serviceAccount",
            "spec.workloadSelector",
            "spec.exportTo",
        ],
    ),
    (
        "WorkloadEntry",
        &[
            "spec.address",
            "spec.ports",
            "spec.labels",
            "spec.network",
            "spec.locality",
            "spec.weight",
            "spec.serviceAccount",
        ],
    ),
    (
        "WorkloadGroup",
        &[
            "spec.metadata",
            "spec.template.ports",
            "spec.template.labels",
            "spec.template.network",
            "spec.template.locality",
            "spec.template.weight",
            "spec.template.serviceAccount",
            "spec.probe",
        ],
    ),
    (
        "PeerAuthentication",
        &["spec.selector", "spec.mtls.mode", "spec.portLevelMtls"],
    ),
    // The control plane scopes what it pushes to an agent by the egress
    // hosts of the Sidecar that applies to it; listeners come from the
    // agent's flags.
    ("Sidecar", &["spec.workloadSelector", "spec.egress[].hosts"]),
];

/// Where a whole kind is not acted on: why, for the warning.
const KIND_NOT_ACTED_ON: &[(&str, &str)] = &[
    (
        "AuthorizationPolicy",
        "the agent does not enforce AuthorizationPolicy yet; an agent a policy applies to refuses its config rather than let the traffic through",
    ),
    (
        "RequestAuthentication",
        "the agent does not check JWTs yet; an agent a policy applies to refuses its config rather than let the traffic through",
    ),
    (
        "Gateway",
        "Trellis has no ingress or egress gateway yet; the resource is stored and routes may name it, nothing listens for it",
    ),
];

/// The fields set in `spec` (as written, after the schema check) that
/// Trellis does not act on, one warning each, at the highest such field
/// (its subfields are not listed again).
pub(crate) fn not_acted_on(kind: &str, spec: &Value) -> Vec<FieldError> {
    if let Some((_, why)) = KIND_NOT_ACTED_ON.iter().find(|(k, _)| *k == kind) {
        return vec![FieldError::new(
            "spec",
            format!("accepted, not acted on: {why}"),
        )];
    }
    let acted: &[&str] = ACTED_ON
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(&[], |(_, paths)| paths);
    let mut warnings = Vec::new();
    walk(acted, "spec", "spec", spec, &mut warnings);
    warnings
}

/// A DestinationRule's traffic policy means the same wherever it sits
/// (the rule's, a subset's, a port's): its fields are listed once, under
/// `spec.trafficPolicy`.
fn canonical(schema: &str) -> String {
    let schema = schema.replace("spec.subsets[].trafficPolicy", "spec.trafficPolicy");
    schema.replace(
        "spec.trafficPolicy.portLevelSettings[]",
        "spec.trafficPolicy",
    )
}

fn covered(acted: &[&str], schema: &str) -> bool {
    let schema = canonical(schema);
    let schema = schema.as_str();
    acted.iter().map(|a| canonical(a)).any(|a| {
        a == schema
            || schema
                .strip_prefix(a.as_str())
                .is_some_and(|rest| rest.starts_with(['.', '[', '{']))
    })
}

/// Whether some acted-on field lies under `schema`.
fn has_acted_below(acted: &[&str], schema: &str) -> bool {
    let schema = canonical(schema);
    let schema = schema.as_str();
    acted.iter().map(|a| canonical(a)).any(|a| {
        a.strip_prefix(schema)
            .is_some_and(|rest| rest.starts_with(['.', '[', '{']))
    })
}

fn walk(acted: &[&str], schema: &str, path: &str, value: &Value, out: &mut Vec<FieldError>) {
    if covered(acted, schema) {
        return;
    }
    if !has_acted_below(acted, schema) {
        out.push(FieldError::new(
            path,
            "accepted, not acted on: Trellis does not use this field yet",
        ));
        return;
    }
    match value {
        Value::Object(members) => {
            for (name, member) in members {
                walk(
                    acted,
                    &format!("{schema}.{name}"),
                    &format!("{path}.{name}"),
                    member,
                    out,
                );
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(
                    acted,
                    &format!("{schema}[]"),
                    &format!("{path}[{i}]"),
                    item,
                    out,
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::schema;
    use super::*;

    #[test]
    fn every_acted_on_path_is_in_istios_schema() {
        for (kind, paths) in ACTED_ON {
            let fields = schema::fields(kind).unwrap();
            for path in *paths {
                assert!(fields.contains_key(*path), "{kind} {path}");
            }
        }
    }
}
