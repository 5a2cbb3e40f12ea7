//! Istio compatibility (issue 22): every field of Istio's schema is
//! accepted, Istio's warnings are warnings, Istio's refusals are refusals,
//! and YAML reads as Istio reads it. One row per rule.

use super::*;

/// The warnings of a one-document input that must be accepted.
#[track_caller]
fn warnings(yaml: &str) -> Vec<String> {
    let checks = check_documents(yaml);
    assert!(checks.errors.is_empty(), "refused: {:#?}", checks.errors);
    assert_eq!(checks.resources.len(), 1);
    checks
        .warnings
        .iter()
        .flat_map(|d| d.warnings.iter().map(ToString::to_string))
        .collect()
}

#[test]
fn fields_trellis_does_not_act_on_are_accepted_with_a_warning() {
    for (api_version, kind, spec, warning) in [
        (
            "security.istio.io/v1",
            "AuthorizationPolicy",
            "rules:\n- from:\n  - source: {trustDomains: [td1]}",
            "spec: accepted, not acted on: the agent does not enforce AuthorizationPolicy",
        ),
        (
            "networking.istio.io/v1",
            "DestinationRule",
            "host: a\ntrafficPolicy:\n  connectionPool:\n    http: {http2KeepAlive: {interval: 10s, timeout: 2s}}",
            "spec.trafficPolicy.connectionPool.http.http2KeepAlive: accepted, not acted on",
        ),
        (
            "networking.istio.io/v1",
            "DestinationRule",
            "host: a\nsubsets:\n- name: v1\n  labels: {v: '1'}\n  trafficPolicy: {tunnel: {protocol: CONNECT, targetHost: h, targetPort: 80}}",
            "spec.subsets[0].trafficPolicy.tunnel: accepted, not acted on",
        ),
        (
            "security.istio.io/v1",
            "RequestAuthentication",
            "jwtRules:\n- issuer: a\n  spaceDelimitedClaims: [scope]",
            "spec: accepted, not acted on: the agent does not check JWTs",
        ),
        (
            "networking.istio.io/v1",
            "VirtualService",
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  corsPolicy: {allowOrigins: [{exact: x}]}",
            "spec.http[0].corsPolicy: accepted, not acted on",
        ),
    ] {
        let found = warnings(&document(api_version, kind, spec));
        assert!(
            found.iter().any(|w| w.contains(warning)),
            "{kind}: expected `{warning}` in {found:#?}"
        );
    }
}

#[test]
fn acted_on_fields_give_no_warning() {
    assert_eq!(warnings(REVIEWS_CANARY), Vec::<String>::new());
    assert_eq!(warnings(MONGO_ENTRY), Vec::<String>::new());
}

#[test]
fn istio_warnings_are_warnings() {
    for (kind, spec, warning) in [
        (
            "ServiceEntry",
            "hosts: ['*x.example.com']\nresolution: NONE",
            "spec.hosts[0]: partial wildcard `*x.example.com`",
        ),
        (
            "WorkloadEntry",
            "network: net2",
            "spec.address: address is unset with network `net2`",
        ),
        (
            "ServiceEntry",
            "hosts: [a.example.com]\nresolution: NONE\nworkloadSelector: {labels: {app: a}}",
            "spec.workloadSelector: workloadSelector should not be set when resolution is NONE",
        ),
    ] {
        let found = warnings(&document("networking.istio.io/v1", kind, spec));
        assert!(
            found.iter().any(|w| w.contains(warning)),
            "{kind}: expected `{warning}` in {found:#?}"
        );
    }
}

#[test]
fn istio_refusals_are_refusals() {
    let se = |spec: &str| document("networking.istio.io/v1", "ServiceEntry", spec);
    let we = |spec: &str| document("networking.istio.io/v1", "WorkloadEntry", spec);
    let pa = |spec: &str| document("security.istio.io/v1", "PeerAuthentication", spec);
    for (yaml, path, reason) in [
        (
            pa("selector: {matchLabels: {app: a}}\nportLevelMtls: {}"),
            "spec.portLevelMtls",
            "at least 1 entries are required",
        ),
        (
            se("hosts: [a.example.com]\naddresses: [10.0.0.0/24]\nresolution: DNS"),
            "spec.addresses[0]",
            "CIDR addresses are allowed only with resolution NONE or STATIC",
        ),
        (
            we("address: unix://relative.sock"),
            "spec.address",
            "is not a unix socket address",
        ),
        (
            we("address: unix:///var/run/"),
            "spec.address",
            "is not a unix socket address",
        ),
        (
            we("address: unix:///var/run/app.sock\nports: {http: 8080}"),
            "spec.ports",
            "must not have ports",
        ),
        (
            se("hosts: [a.example.com]\nresolution: STATIC\nendpoints: [{address: 'unix://rel.sock'}]"),
            "spec.endpoints[0].address",
            "is not a unix socket address",
        ),
    ] {
        assert_refused(&yaml, path, reason);
    }
    // What stays accepted.
    one(&we("address: unix:///var/run/app.sock"));
    one(&we("address: unix://@abstract"));
    one(&se("hosts: [a.example.com]\naddresses: [10.0.0.0/24]\nresolution: STATIC\nendpoints: [{address: 10.0.0.1}]"));
}

#[test]
fn yaml_reads_as_istio_reads_it() {
    let se = |spec: &str| document("networking.istio.io/v1", "ServiceEntry", spec);
    // An unquoted IPv6 literal in a flow sequence.
    let r = one(&se("hosts: [db.example.com]\naddresses: [1.2.3.4, 001:db8::]\nresolution: STATIC\nendpoints: [{address: 1.2.3.4}]"));
    let Spec::ServiceEntry(entry) = &r.spec else {
        panic!("{r:?}")
    };
    assert_eq!(entry.addresses, ["1.2.3.4", "001:db8::"]);
    // `yes` is a boolean: fine where Istio wants one, refused for a string.
    one(&document(
        "networking.istio.io/v1",
        "DestinationRule",
        "host: a\ntrafficPolicy: {connectionPool: {http: {useClientProtocol: yes}}}",
    ));
    assert_refused(
        &se("hosts: [a.example.com]\nresolution: DNS\nsubjectAltNames: [on]"),
        "spec.subjectAltNames[0]",
        "expected string, found boolean; YAML reads an unquoted yes/no/on/off",
    );
    // `0777` is octal, as in Go: port 511.
    let r = one(&se("hosts: [a.example.com]\nresolution: DNS\nports: [{number: 0777, name: tcp}]"));
    let Spec::ServiceEntry(entry) = &r.spec else {
        panic!("{r:?}")
    };
    assert_eq!(entry.ports[0].number, 511);
    // Duplicate keys are refused, with the line.
    let lines = errors(&se("hosts: [a.example.com]\nresolution: DNS\nresolution: STATIC"));
    assert!(lines[0].contains("mapping key `resolution` already defined at line 8"), "{lines:?}");
}

#[test]
fn unsupported_kinds_say_what_to_use_instead() {
    for (api_version, kind, instead) in [
        ("networking.istio.io/v1alpha3", "EnvoyFilter", "not Envoy"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin", "no Wasm"),
        ("telemetry.istio.io/v1", "Telemetry", "set per agent"),
        ("networking.istio.io/v1beta1", "ProxyConfig", "`trellis-agent` flags"),
    ] {
        let lines = errors(&document(api_version, kind, "{}"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(&format!("kind: kind `{kind}` is not supported by Trellis: "))
                && lines[0].contains(instead),
            "{lines:?}"
        );
    }
}
