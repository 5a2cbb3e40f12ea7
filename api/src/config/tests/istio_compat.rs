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
        (
            "ServiceEntry",
            "hosts: [a.example.com]\nresolution: STATIC\nworkloadSelector: {}",
            "spec.workloadSelector: a selector without labels selects every workload",
        ),
        (
            "ServiceEntry",
            "hosts: [a.example.com, b.example.com]\naddresses: [10.0.0.1]\nresolution: DNS\nports: [{number: 443, name: https, protocol: TLS}]",
            "spec.hosts: several hosts with addresses and a TCP port",
        ),
        (
            "Sidecar",
            "egress: [{hosts: ['*/*', './a.example.com']}]",
            "spec.egress[0].hosts: `*/*` selects every host",
        ),
        (
            "Sidecar",
            "egress: [{hosts: ['./a.example.com', './a.example.com']}]",
            "spec.egress[0].hosts[1]: host `./a.example.com` is given more than once",
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
fn a_deny_rule_with_only_http_attributes_is_a_warning() {
    let found = warnings(&document(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]",
    ));
    assert!(
        found
            .iter()
            .any(|w| w.contains("spec.rules[0]: this DENY rule uses only HTTP attributes")),
        "{found:#?}"
    );
    let found = warnings(&document(
        "security.istio.io/v1",
        "AuthorizationPolicy",
        "action: DENY\nrules: [{to: [{operation: {paths: [/admin], ports: ['8080']}}]}]",
    ));
    assert!(!found.iter().any(|w| w.contains("DENY rule")), "{found:#?}");
}

#[test]
fn gateway_tls_warnings() {
    let found = warnings(&document(
        "networking.istio.io/v1",
        "Gateway",
        "servers:\n- port: {number: 443, name: tls, protocol: TLS}\n  hosts: [a.example.com]\n  tls: {mode: PASSTHROUGH, credentialName: c, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256]}",
    ));
    for expected in [
        "spec.servers[0].tls: PASSTHROUGH does not terminate TLS: the certificates are ignored",
        "spec.servers[0].tls.cipherSuites[1]: cipher suite `ECDHE-RSA-AES128-GCM-SHA256` is given more than once",
    ] {
        assert!(found.iter().any(|w| w.contains(expected)), "{expected}\n{found:#?}");
    }
}

#[test]
fn an_empty_selector_is_a_warning() {
    let found = warnings(&document(
        "security.istio.io/v1",
        "PeerAuthentication",
        "selector: {matchLabels: {}}\nmtls: {mode: STRICT}",
    ));
    assert!(
        found
            .iter()
            .any(|w| w.contains("spec.selector: a selector without labels")),
        "{found:#?}"
    );
}

#[test]
fn istio_refusals_are_refusals() {
    let se = |spec: &str| document("networking.istio.io/v1", "ServiceEntry", spec);
    let we = |spec: &str| document("networking.istio.io/v1", "WorkloadEntry", spec);
    let pa = |spec: &str| document("security.istio.io/v1", "PeerAuthentication", spec);
    let vs = |spec: &str| document("networking.istio.io/v1", "VirtualService", spec);
    let dr = |spec: &str| document("networking.istio.io/v1", "DestinationRule", spec);
    let gw = |spec: &str| document("networking.istio.io/v1", "Gateway", spec);
    let sc = |spec: &str| document("networking.istio.io/v1", "Sidecar", spec);
    let route = "route: [{destination: {host: a}}]";
    for (yaml, path, reason) in [
        // VirtualService (Istio's validateVirtualService, validateHTTPRoute).
        (vs(&format!("hosts: ['*']\nhttp: [{{{route}}}]")), "spec.hosts[0]", "`*` is not allowed for a VirtualService bound to the mesh"),
        (vs(&format!("hosts: [a, a]\nhttp: [{{{route}}}]")), "spec.hosts[1]", "host `a` is given more than once"),
        (vs("hosts: [a]\nhttp: [{redirect: {uri: /x}, fault: {abort: {httpStatus: 500}}}]"), "spec.http[0].fault", "`fault` needs `route`"),
        (vs("hosts: [a]\nhttp: [{directResponse: {status: 200}, fault: {abort: {httpStatus: 500}}}]"), "spec.http[0].fault", "`fault` needs `route`"),
        (vs(&format!("hosts: [a]\ngateways: ['Bad Gateway']\nhttp: [{{{route}}}]")), "spec.gateways[0]", "is not `mesh` or a gateway name"),
        (vs(&format!("hosts: [a]\nhttp: [{{match: [{{sourceNamespace: Bad_NS}}], {route}}}]")), "spec.http[0].match[0].sourceNamespace", "is not a namespace name"),
        (vs("hosts: [a]\nhttp: [{route: [{destination: {host: '*'}}]}]"), "spec.http[0].route[0].destination.host", "`*` is not a destination"),
        (vs("hosts: [a]\nhttp: [{route: [{destination: {host: a, subset: Bad_Subset}}]}]"), "spec.http[0].route[0].destination.subset", "must be a DNS-1123 label"),
        (vs(&format!("hosts: [a]\nhttp: [{{{route}, timeout: 0.1ms}}]")), "spec.http[0].timeout", "shorter than 1ms"),
        (vs(&format!("hosts: [a]\nhttp: [{{{route}, timeout: 1500us}}]")), "spec.http[0].timeout", "only whole milliseconds"),
        (vs("hosts: [a.com]\ntls: [{match: [{sniHosts: [b.com]}], route: [{destination: {host: a.com}}]}]"), "spec.tls[0].match[0].sniHosts[0]", "not covered by any of the VirtualService's hosts"),
        (vs(&format!("hosts: [a]\nhttp: [{{{route}, fault: {{delay: {{exponentialDelay: 1s}}}}}}]")), "spec.http[0].fault.delay.exponentialDelay", "not supported"),
        // DestinationRule.
        (dr("host: a\ntrafficPolicy: {connectionPool: {http: {idleTimeout: 0.1ms}}}"), "spec.trafficPolicy.connectionPool.http.idleTimeout", "shorter than 1ms"),
        (dr("host: a\ntrafficPolicy: {connectionPool: {tcp: {idleTimeout: 0.1ms}}}"), "spec.trafficPolicy.connectionPool.tcp.idleTimeout", "shorter than 1ms"),
        (dr("host: a\ntrafficPolicy: {tunnel: {protocol: GET, targetHost: h, targetPort: 80}}"), "spec.trafficPolicy.tunnel.protocol", "is not CONNECT or POST"),
        // Gateway and Sidecar hosts: no short names.
        (gw("servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [shorthost]}]"), "spec.servers[0].hosts[0]", "short name `shorthost` is not allowed"),
        (sc("egress: [{hosts: [prod/mysql]}]"), "spec.egress[0].hosts[0]", "short name `mysql` is not allowed"),
        // ServiceEntry resolutions.
        (se("hosts: [a.com]\nresolution: DNS\nendpoints: [{address: 'bad host!'}]"), "spec.endpoints[0].address", "is not an IP address or a DNS name"),
        (se("hosts: [a.com, b.com]\nresolution: DNS\nports: [{number: 3306, name: tcp, protocol: TCP}]"), "spec.ports[0].protocol", "several hosts with a port that is not HTTP or TLS"),
        (se("hosts: [a.com]\nresolution: DYNAMIC_DNS\nports: [{number: 80, name: http, protocol: HTTP}]"), "spec.hosts[0]", "resolution DYNAMIC_DNS needs wildcard hosts"),
        (se("hosts: ['*.a.com']\nresolution: DYNAMIC_DNS\naddresses: [1.1.1.1]\nports: [{number: 80, name: http, protocol: HTTP}]"), "spec.addresses", "addresses cannot be set with resolution DYNAMIC_DNS"),
        (se("hosts: ['*.a.com']\nresolution: DYNAMIC_DNS\nports: [{number: 3306, name: tcp, protocol: TCP}]"), "spec.ports[0].protocol", "DYNAMIC_DNS supports only the protocols"),
        // AuthorizationPolicy sources.
        (
            document("security.istio.io/v1", "AuthorizationPolicy", "rules: [{from: [{source: {serviceAccounts: ['a/b/c']}}]}]"),
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "is not `serviceAccount` or `namespace/serviceAccount`",
        ),
        (
            document("security.istio.io/v1", "AuthorizationPolicy", "rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]"),
            "spec.rules[0].from[0].source.serviceAccounts[0]",
            "wildcards are not allowed",
        ),
        (
            document("security.istio.io/v1", "AuthorizationPolicy", "rules: [{from: [{source: {trustDomains: ['a*b.org']}}]}]"),
            "spec.rules[0].from[0].source.trustDomains[0]",
            "a wildcard is allowed once, at the start or the end",
        ),
        (
            document("security.istio.io/v1", "AuthorizationPolicy", "rules: [{from: [{source: {notTrustDomains: ['td/x']}}]}]"),
            "spec.rules[0].from[0].source.notTrustDomains[0]",
            "must not contain `/`",
        ),
        // WorkloadEntry addresses.
        (we("address: 'bad_host!'"), "spec.address", "is not an address"),
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
    let r = one(&se(
        "hosts: [a.example.com]\nresolution: DNS\nports: [{number: 0777, name: tcp}]",
    ));
    let Spec::ServiceEntry(entry) = &r.spec else {
        panic!("{r:?}")
    };
    assert_eq!(entry.ports[0].number, 511);
    // Duplicate keys are refused, with the line.
    let lines = errors(&se(
        "hosts: [a.example.com]\nresolution: DNS\nresolution: STATIC",
    ));
    assert!(
        lines[0].contains("mapping key `resolution` already defined at line 8"),
        "{lines:?}"
    );
}

#[test]
fn unsupported_kinds_say_what_to_use_instead() {
    for (api_version, kind, instead) in [
        ("networking.istio.io/v1alpha3", "EnvoyFilter", "not Envoy"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin", "no Wasm"),
        ("telemetry.istio.io/v1", "Telemetry", "set per agent"),
        (
            "networking.istio.io/v1beta1",
            "ProxyConfig",
            "`trellis-agent` flags",
        ),
    ] {
        let lines = errors(&document(api_version, kind, "{}"));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(&format!(
                "kind: kind `{kind}` is not supported by Trellis: "
            )) && lines[0].contains(instead),
            "{lines:?}"
        );
    }
}
