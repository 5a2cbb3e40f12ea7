//! Parsing and validation of whole documents, from Istio-documentation YAML.

use std::time::Duration as StdDuration;

use super::*;

mod authorization_policy;
mod gateway;
mod istio_compat;
mod metadata;
mod request_authentication;
mod sidecar;
mod workload_group;

const REVIEWS_CANARY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
      uri:
        prefix: /api
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
        port:
          number: 9080
      weight: 80
    - destination:
        host: reviews
        subset: v2
      weight: 20
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,refused-stream,503
"#;

const REVIEWS_RULE: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: reviews
  namespace: bookinfo
  labels:
    app: reviews
spec:
  host: reviews.bookinfo.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
        tcpKeepalive:
          time: 7200s
          interval: 75s
      http:
        http2MaxRequests: 1000
        maxRequestsPerConnection: 10
        h2UpgradePolicy: UPGRADE
    outlierDetection:
      consecutive5xxErrors: 7
      interval: 5m
      baseEjectionTime: 15m
      maxEjectionPercent: 50
    portLevelSettings:
    - port:
        number: 80
      loadBalancer:
        simple: LEAST_CONN
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpCookie:
            name: user
            ttl: 0s
      tls:
        mode: ISTIO_MUTUAL
"#;

const MONGO_ENTRY: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: external-svc-mongocluster
spec:
  hosts:
  - mymongodb.somedomain
  addresses:
  - 192.192.192.192/24
  ports:
  - number: 27018
    name: mongodb
    protocol: MONGO
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
    ports:
      mongodb: 27019
    labels:
      version: v2
"#;

fn one(yaml: &str) -> Resource {
    let mut resources = parse_documents(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources.len(), 1);
    resources.remove(0)
}

/// A document of `kind` with `spec` (YAML at column 0).
fn document(api_version: &str, kind: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|line| format!("  {line}\n")).collect();
    format!("apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: test\nspec:\n{spec}")
}

/// The field errors of a one-document input that must be refused.
fn field_errors(yaml: &str) -> Vec<FieldError> {
    match parse_documents(yaml) {
        Ok(resources) => panic!("accepted: {resources:?}"),
        Err(mut e) => {
            assert_eq!(e.documents.len(), 1, "{e}");
            e.documents.remove(0).errors
        }
    }
}

/// Asserts that `yaml` is refused with an error at exactly `path` whose
/// reason contains `reason`.
#[track_caller]
fn assert_refused(yaml: &str, path: &str, reason: &str) {
    let errors = field_errors(yaml);
    assert!(
        errors
            .iter()
            .any(|e| e.path == path && e.reason.contains(reason)),
        "expected `{path}: ...{reason}...` in\n{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Serializes `resource` and parses it again, expecting the same value.
#[track_caller]
fn assert_round_trips(resource: &Resource) -> String {
    let dumped = crate::yaml::to_string(resource).unwrap();
    assert_eq!(one(&dumped), *resource, "{dumped}");
    // An empty spec (`spec: {}`) or rule (`- {}`) is a value, not a field
    // left empty.
    let empty_field = dumped
        .lines()
        .any(|line| line != "spec: {}" && (line.ends_with(": {}") || line.ends_with(": []")));
    assert!(
        !dumped.contains("null") && !empty_field,
        "empty fields are left out: {dumped}"
    );
    dumped
}

/// The error lines of an input that must be refused.
fn errors(yaml: &str) -> Vec<String> {
    match parse_documents(yaml) {
        Ok(resources) => panic!("accepted: {resources:?}"),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

#[test]
fn reviews_canary_virtual_service() {
    let resource = one(REVIEWS_CANARY);
    assert_eq!(resource.api_version, ApiVersion::NetworkingV1);
    assert_eq!(resource.kind(), "VirtualService");
    assert_eq!(resource.metadata.name, "reviews");
    assert_eq!(resource.metadata.namespace, "default");
    let Spec::VirtualService(vs) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    assert_eq!(vs.hosts, ["reviews"]);
    let jason = &vs.http[0];
    assert_eq!(jason.name.as_deref(), Some("jason"));
    let header = &jason.matches[0].headers["end-user"];
    assert!(header.matches(Some("jason")));
    assert!(!header.matches(Some("mary")));
    assert!(jason.matches[0]
        .uri
        .as_ref()
        .unwrap()
        .matches("/api/reviews"));
    let canary = &vs.http[1];
    let weights: Vec<_> = canary
        .route
        .iter()
        .map(|r| (r.destination.subset.as_deref().unwrap(), r.weight.unwrap()))
        .collect();
    assert_eq!(weights, [("v1", 80), ("v2", 20)]);
    assert_eq!(
        canary.route[0].destination.port,
        Some(PortSelector { number: 9080 })
    );
    assert_eq!(canary.timeout.unwrap().as_std(), StdDuration::from_secs(10));
    let retries = canary.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, Some(3));
    assert_eq!(
        retries.per_try_timeout.unwrap().as_std(),
        StdDuration::from_secs(2)
    );
}

#[test]
fn destination_rule_with_subsets_and_outlier_detection() {
    let resource = one(REVIEWS_RULE);
    assert_eq!(resource.api_version, ApiVersion::NetworkingV1Beta1);
    assert_eq!(resource.metadata.namespace, "bookinfo");
    assert_eq!(resource.metadata.labels["app"], "reviews");
    let Spec::DestinationRule(dr) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    let policy = dr.traffic_policy.as_ref().unwrap();
    assert_eq!(
        policy.load_balancer.as_ref().unwrap().simple,
        Some(SimpleLb::LeastRequest)
    );
    let tcp = policy
        .connection_pool
        .as_ref()
        .unwrap()
        .tcp
        .as_ref()
        .unwrap();
    assert_eq!(tcp.max_connections, Some(100));
    assert_eq!(
        tcp.connect_timeout.unwrap().as_std(),
        StdDuration::from_millis(30)
    );
    let od = policy.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx_errors, Some(7));
    assert_eq!(od.interval.unwrap().as_std(), StdDuration::from_secs(300));
    assert_eq!(od.max_ejection_percent, Some(50));
    assert_eq!(
        policy.port_level_settings[0].port,
        Some(PortSelector { number: 80 })
    );
    let names: Vec<_> = dr.subsets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2"]);
    let v2 = dr.subsets[1].traffic_policy.as_ref().unwrap();
    assert_eq!(v2.tls.as_ref().unwrap().mode, TlsMode::IstioMutual);
    let hash = v2
        .load_balancer
        .as_ref()
        .unwrap()
        .consistent_hash
        .as_ref()
        .unwrap();
    assert_eq!(hash.http_cookie.as_ref().unwrap().name, "user");
}

#[test]
fn service_entry_with_endpoints() {
    let resource = one(MONGO_ENTRY);
    let Spec::ServiceEntry(se) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    assert_eq!(se.resolution, Resolution::Static);
    assert_eq!(se.location, Some(Location::MeshInternal));
    assert_eq!(se.ports[0].protocol(), Protocol::Mongo);
    assert_eq!(se.endpoints.len(), 2);
    assert_eq!(se.endpoints[1].ports["mongodb"], 27019);
    assert_eq!(se.endpoints[1].labels["version"], "v2");
}

#[test]
fn workload_entry_and_peer_authentication() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-svc
  namespace: bookinfo
spec:
  serviceAccount: details-legacy
  address: 2.2.2.2
  labels:
    app: details-legacy
    instance-id: vm1
  ports:
    http: 9080
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
    "9090":
      mode: PERMISSIVE
"#;
    let resources = parse_documents(yaml).unwrap();
    let Spec::WorkloadEntry(we) = &resources[0].spec else {
        panic!("{:?}", resources[0].spec)
    };
    assert_eq!(we.service_account.as_deref(), Some("details-legacy"));
    assert_eq!(we.ports["http"], 9080);
    let Spec::PeerAuthentication(pa) = &resources[1].spec else {
        panic!("{:?}", resources[1].spec)
    };
    assert_eq!(
        pa.mtls,
        Some(MutualTls {
            mode: MtlsMode::Strict
        })
    );
    assert_eq!(pa.port_level_mtls[&8080].mode, MtlsMode::Disable);
    assert_eq!(pa.port_level_mtls[&9090].mode, MtlsMode::Permissive);
    assert_eq!(resources[1].api_version.group(), Group::Security);
}

#[test]
fn multi_document_skips_empty_documents() {
    let yaml = format!("---\n# only a comment\n---\n{REVIEWS_CANARY}---\n---\n{REVIEWS_RULE}---\n");
    let resources = parse_documents(&yaml).unwrap();
    let kinds: Vec<_> = resources.iter().map(Resource::kind).collect();
    assert_eq!(kinds, ["VirtualService", "DestinationRule"]);
    assert!(parse_documents("").unwrap().is_empty());
}

#[test]
fn serializes_back_to_the_same_resources() {
    let yaml = [REVIEWS_CANARY, REVIEWS_RULE, MONGO_ENTRY].join("---\n");
    let resources = parse_documents(&yaml).unwrap();
    for resource in &resources {
        let dumped = crate::yaml::to_string(resource).unwrap();
        assert_eq!(one(&dumped), *resource, "{dumped}");
    }
    let dumped = crate::yaml::to_string(&resources[0]).unwrap();
    assert!(
        dumped.starts_with("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"),
        "{dumped}"
    );
    assert!(dumped.contains("timeout: 10s"), "{dumped}");
    assert!(
        !dumped.contains("null"),
        "empty fields are left out: {dumped}"
    );
}

#[test]
fn unknown_field_names_document_and_path() {
    let typo = REVIEWS_CANARY.replace(
        "        host: reviews\n        subset: v2",
        "        hots: reviews\n        subset: v2",
    );
    let yaml = format!("{REVIEWS_RULE}---\n{typo}");
    let lines = errors(&yaml);
    assert_eq!(
        lines[0],
        "document 2 (VirtualService default/reviews): spec.http[0].route[0].destination.hots: unknown field `hots`, expected one of `host`, `port`, `subset`"
    );
    assert!(
        lines.iter().all(|l| l.starts_with("document 2 ")),
        "{lines:?}"
    );
}

/// The issue's case: an unknown field used to hide the weights error.
#[test]
fn an_unknown_field_does_not_hide_other_errors() {
    let spec = "hosts: [a]\nhttp:\n- timout: 5s\n  route:\n  - {destination: {host: a}, weight: 50}\n  - {destination: {host: b}, weight: 10}\n  retries: {attempts: 3, perTryTimeout: 2x}";
    let lines = errors(&document("networking.istio.io/v1", "VirtualService", spec));
    for expected in [
        "spec.http[0].timout: unknown field `timout`",
        "spec.http[0].retries.perTryTimeout: invalid duration \"2x\"",
        "spec.http[0].route: destination weights sum to 60, they must sum to 100",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "{expected}\n{lines:#?}"
        );
    }
}

/// A document that is not YAML still names its line and column, and the
/// documents after it are still checked.
#[test]
fn a_syntax_error_names_line_and_column_and_the_rest_is_checked() {
    let bad = document("networking.istio.io/v1", "VirtualService", "hosts: [a\n");
    let weights = document(
        "networking.istio.io/v1",
        "VirtualService",
        "hosts: [a]\nhttp:\n- route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: 10}]",
    );
    let lines = errors(&format!("{bad}---\n{weights}"));
    assert!(
        lines[0].starts_with("document 1: invalid YAML: "),
        "{lines:?}"
    );
    assert!(lines[0].contains(" at line 7 column "), "{lines:?}");
    assert!(lines[1].contains("document 2 (VirtualService default/test): spec.http[0].route: destination weights sum to 60"), "{lines:?}");
}

#[test]
fn unknown_fields_are_refused_everywhere() {
    for (yaml, expected) in [
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, uuid: x}\nspec: {hosts: [a]}",
            "metadata.uuid: unknown field `uuid`",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nstate: {}\nspec: {hosts: [a]}",
            ": state: unknown field `state`",
        ),
        (
            &document("networking.istio.io/v1", "DestinationRule", "host: a\ntrafficPolicy:\n  loadBalancer: {simple: FASTEST}"),
            "spec.trafficPolicy.loadBalancer.simple: unknown value `FASTEST`",
        ),
        (
            &document("security.istio.io/v1", "PeerAuthentication", "mtls: {mode: STRICT, strict: true}"),
            "spec.mtls.strict: unknown field `strict`",
        ),
        (
            &document("networking.istio.io/v1", "VirtualService", "hosts: [a]\nhttp:\n- match:\n  - uri: {suffix: /x}\n  route: [{destination: {host: a}}]"),
            "spec.http[0].match[0].uri.suffix: unknown field `suffix`, expected one of `exact`, `prefix`, `regex`",
        ),
    ] {
        let lines = errors(yaml);
        assert!(lines[0].contains(expected), "{expected}: {lines:?}");
    }
}

#[test]
fn api_versions_and_kinds() {
    for api_version in [
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
    ] {
        let resource = one(&document(
            api_version,
            "ServiceEntry",
            "hosts: [api.example.com]\nresolution: DNS",
        ));
        assert_eq!(resource.api_version.as_str(), api_version);
    }
    for api_version in ["security.istio.io/v1", "security.istio.io/v1beta1"] {
        one(&document(
            api_version,
            "PeerAuthentication",
            "mtls: {mode: PERMISSIVE}",
        ));
    }
    for (api_version, kind, expected) in [
        (
            "security.istio.io/v1",
            "VirtualService",
            "apiVersion: kind `VirtualService` is served by networking.istio.io (networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3), not by security.istio.io/v1",
        ),
        (
            "networking.istio.io/v1beta1",
            "PeerAuthentication",
            "apiVersion: kind `PeerAuthentication` is served by security.istio.io",
        ),
        ("networking.istio.io/v2", "VirtualService", "apiVersion: unknown apiVersion `networking.istio.io/v2`; supported: networking.istio.io/v1,"),
        ("networking.istio.io/v1", "EnvoyFilter", "kind: kind `EnvoyFilter` is not supported by Trellis: "),
        ("networking.istio.io/v1", "Mystery", "kind: unknown kind `Mystery`; supported: VirtualService, DestinationRule, ServiceEntry, WorkloadEntry, PeerAuthentication, Gateway, Sidecar, WorkloadGroup, AuthorizationPolicy, RequestAuthentication"),
    ] {
        // The spec's own problems (`{}` has no hosts) come after.
        let lines = errors(&document(api_version, kind, "{}"));
        let prefix = format!("document 1 ({kind} default/test): {expected}");
        assert!(lines[0].starts_with(&prefix), "{prefix}\n{lines:?}");
    }
}

#[test]
fn every_kind_is_served_by_its_group_only() {
    for (kind, group) in [
        ("VirtualService", Group::Networking),
        ("DestinationRule", Group::Networking),
        ("ServiceEntry", Group::Networking),
        ("WorkloadEntry", Group::Networking),
        ("Gateway", Group::Networking),
        ("Sidecar", Group::Networking),
        ("WorkloadGroup", Group::Networking),
        ("PeerAuthentication", Group::Security),
        ("AuthorizationPolicy", Group::Security),
        ("RequestAuthentication", Group::Security),
    ] {
        assert_eq!(Spec::group_of(kind), Some(group), "{kind}");
        for version in ApiVersion::ALL {
            let Err(e) = Resource::from_value(
                crate::yaml::from_str(&document(version.as_str(), kind, "{}")).unwrap(),
            ) else {
                assert_eq!(version.group(), group, "{kind} under {version}");
                continue;
            };
            assert_ne!(version.group(), group, "{kind} under {version}: {e}");
            assert_eq!(e.path, "apiVersion", "{e}");
        }
    }
    assert_eq!(Spec::KINDS.len(), 10);
}

#[test]
fn bad_values_caught_while_parsing() {
    for (spec, expected) in [
        (
            "hosts: [a]\nhttp:\n- match:\n  - uri: {regex: '/api/(v1'}\n  route: [{destination: {host: a}}]",
            "spec.http[0].match[0].uri: invalid regex \"/api/(v1\"",
        ),
        (
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  timeout: 10",
            "spec.http[0].timeout: expected string, found integer",
        ),
        (
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]\n  retries: {perTryTimeout: -2s}",
            "spec.http[0].retries.perTryTimeout: invalid duration \"-2s\": negative durations are not allowed",
        ),
        (
            "hosts: [a]\nhttp:\n- match:\n  - headers: {x-user: {exact: a, prefix: b}}\n  route: [{destination: {host: a}}]",
            "spec.http[0].match[0].headers.x-user: only one of `exact`, `prefix`, `regex` may be set",
        ),
        (
            "hosts: [a]\nhttp:\n- route: [{destination: {host: a}, weight: 80.5}]",
            "spec.http[0].route[0].weight: 80.5 is not a whole number",
        ),
    ] {
        let lines = errors(&document("networking.istio.io/v1", "VirtualService", spec));
        assert!(lines[0].contains(expected), "{expected}\n{lines:?}");
    }
}

#[test]
fn weights_must_sum_to_100() {
    let spec = "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 70\n  - destination: {host: reviews, subset: v2}\n    weight: 20\n";
    let lines = errors(&document("networking.istio.io/v1", "VirtualService", spec));
    assert_eq!(
        lines,
        ["document 1 (VirtualService default/test): spec.http[0].route: destination weights sum to 90, they must sum to 100"]
    );
    let spec = "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 100\n  - destination: {host: reviews, subset: v2}\n";
    let lines = errors(&document("networking.istio.io/v1", "VirtualService", spec));
    assert_eq!(
        lines,
        ["document 1 (VirtualService default/test): spec.http[0].route[1].weight: weight is required when a route has more than one destination"]
    );
    // One destination takes all traffic without a weight.
    one(&document(
        "networking.istio.io/v1",
        "VirtualService",
        "hosts: [a]\nhttp:\n- route: [{destination: {host: a}}]",
    ));
}

#[test]
fn validation_errors_name_the_field() {
    let vs = |spec: &str| document("networking.istio.io/v1", "VirtualService", spec);
    let dr = |spec: &str| document("networking.istio.io/v1", "DestinationRule", spec);
    let se = |spec: &str| document("networking.istio.io/v1", "ServiceEntry", spec);
    let pa = |spec: &str| document("security.istio.io/v1", "PeerAuthentication", spec);
    let route = "route: [{destination: {host: a}}]";
    for (yaml, expected) in [
        (vs("hosts: []\nhttp: [{route: [{destination: {host: a}}]}]"), "spec.hosts: at least one host is required"),
        (vs("hosts: [a]"), "spec: at least one of `http`, `tls`, `tcp` routes is required"),
        (vs("hosts: ['a*']\nhttp: [{route: [{destination: {host: a}}]}]"), "spec.hosts[0]: host `a*`: a wildcard"),
        (vs("hosts: [a]\nhttp:\n- redirect: {uri: /b}\n  route: [{destination: {host: a}}]"), "spec.http[0]: only one of `route`, `redirect`, `directResponse` may be set, found `route` and `redirect`"),
        (vs("hosts: [a]\nhttp:\n- name: empty"), "spec.http[0]: exactly one of `route`, `redirect`, `directResponse` must be set"),
        (vs("hosts: [a]\nhttp:\n- redirect: {uri: /b, redirectCode: 305}"), "spec.http[0].redirect.redirectCode: 305 is not a redirect status"),
        (vs("hosts: [a]\nhttp:\n- directResponse: {status: 700}"), "spec.http[0].directResponse.status: status 700 is out of range 200..=599"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  fault: {{abort: {{httpStatus: 600, percentage: {{value: 150}}}}}}")), "spec.http[0].fault.abort.httpStatus: status 600 is out of range 200..=599"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  fault: {{abort: {{httpStatus: 503, percentage: {{value: 150}}}}}}")), "spec.http[0].fault.abort.percentage.value: 150 is out of range 0..=100"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  fault: {{abort: {{percentage: {{value: 1}}}}}}")), "spec.http[0].fault.abort: exactly one of `httpStatus`, `grpcStatus` must be set"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  fault: {{delay: {{fixedDelay: 5s, percentage: {{value: -1}}}}}}")), "spec.http[0].fault.delay.percentage.value: -1 is out of range 0..=100"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  retries: {{attempts: -1}}")), "spec.http[0].retries.attempts: -1 must not be negative"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  retries: {{attempts: 2, retryOn: '5xx,bogus'}}")), "spec.http[0].retries.retryOn: `bogus` is not a retry condition"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  mirrorPercentage: {{value: 5}}")), "spec.http[0].mirrorPercentage: `mirrorPercentage` needs `mirror`"),
        (vs("hosts: [a]\nhttp:\n- route: [{destination: {host: a, port: {number: 70000}}}]"), "spec.http[0].route[0].destination.port.number: port 70000 is out of range 1..=65535"),
        (vs("hosts: [a]\nhttp:\n- route: [{destination: {host: a}, weight: 101}]"), "spec.http[0].route[0].weight: weight 101 is out of range 0..=100"),
        (vs(&format!("hosts: [a]\nhttp:\n- match: [{{queryParams: {{q: {{prefix: x}}}}}}]\n  {route}")), "spec.http[0].match[0].queryParams.q: `prefix` is not supported for query parameters"),
        (vs(&format!("hosts: [a]\nhttp:\n- {route}\n  headers: {{request: {{set: {{'bad header': x}}}}}}")), "spec.http[0].headers.request.set.bad header: `bad header` is not a valid header name"),
        (vs("hosts: [a]\ntcp:\n- match: [{destinationSubnets: [10.0.0.0/40]}]\n  route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: 40}]"), "spec.tcp[0].match[0].destinationSubnets[0]: `10.0.0.0/40` is not an IP address or CIDR block"),
        (vs("hosts: [a]\ntcp:\n- route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: 40}]"), "spec.tcp[0].route: destination weights sum to 90"),
        (vs("hosts: [a]\ntls:\n- route: [{destination: {host: a}}]"), "spec.tls[0].match: a TLS route needs at least one match"),
        (vs("hosts: [a]\ntls:\n- match: [{sniHosts: []}]\n  route: [{destination: {host: a}}]"), "spec.tls[0].match[0].sniHosts: at least one host is required"),
        (dr("host: ''"), "spec.host: host must not be empty"),
        (dr("host: a\nsubsets: [{name: v1}, {name: v1}]"), "spec.subsets[1].name: subset `v1` is defined more than once"),
        (dr("host: a\nsubsets: [{name: V_1}]"), "spec.subsets[0].name: subset name `V_1` must be a DNS-1123 label"),
        (dr("host: a\nsubsets: [{name: ''}]"), "spec.subsets[0].name: subset name `` must be a DNS-1123 label"),
        (dr("host: a\ntrafficPolicy:\n  loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}"), "spec.trafficPolicy.loadBalancer: only one of `simple`, `consistentHash` may be set"),
        (dr("host: a\ntrafficPolicy:\n  loadBalancer: {consistentHash: {minimumRingSize: 1024}}"), "spec.trafficPolicy.loadBalancer.consistentHash: exactly one of `httpHeaderName`, `httpCookie`, `useSourceIp`, `httpQueryParameterName` must be set"),
        (dr("host: a\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 120}"), "spec.trafficPolicy.outlierDetection.maxEjectionPercent: 120 is out of range 0..=100"),
        (dr("host: a\ntrafficPolicy:\n  connectionPool: {tcp: {connectTimeout: 0s}}"), "spec.trafficPolicy.connectionPool.tcp.connectTimeout: 0s is shorter than 1ms"),
        (dr("host: a\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnectionDuration: 500us}}"), "spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration: 500us is shorter than 1ms"),
        (dr("host: a\ntrafficPolicy:\n  connectionPool: {tcp: {tcpKeepalive: {time: 500ms}}}"), "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time: 500ms is shorter than 1s (keepalive is counted in whole seconds)"),
        (dr("host: a\ntrafficPolicy:\n  connectionPool: {tcp: {tcpKeepalive: {interval: 0s}}}"), "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.interval: 0s is shorter than 1s (keepalive is counted in whole seconds)"),
        (dr("host: a\ntrafficPolicy:\n  connectionPool: {http: {maxRetries: -3}}"), "spec.trafficPolicy.connectionPool.http.maxRetries: -3 must not be negative"),
        (dr("host: a\ntrafficPolicy:\n  tls: {mode: MUTUAL, clientCertificate: /c.pem}"), "spec.trafficPolicy.tls.privateKey: required for MUTUAL mode"),
        (dr("host: a\ntrafficPolicy:\n  portLevelSettings: [{loadBalancer: {simple: RANDOM}}]"), "spec.trafficPolicy.portLevelSettings[0].port: port is required"),
        (dr("host: a\ntrafficPolicy:\n  portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]"), "spec.trafficPolicy.portLevelSettings[1].port.number: port 80 already has settings"),
        (dr("host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      distribute: [{from: us-west/*, to: {us-west/*: 60, us-east/*: 30}}]"), "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights sum to 90"),
        (dr("host: a\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      failoverPriority: [version, '=v1']"), "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[1]: `=v1` names no label; write a label name, or NAME=VALUE"),
        (se("hosts: [a.com]\nports: [{number: 80, name: http}, {number: 80, name: http}]"), "spec.ports[1].number: port 80 is declared more than once"),
        (se("hosts: [a.com]\nports: [{number: 80, name: http}, {number: 81, name: http}]"), "spec.ports[1].name: port name `http` is declared more than once"),
        (se("hosts: [a.com]\nports: [{number: 80, name: http, protocol: SPDY}]"), "spec.ports[0].protocol: unknown protocol `SPDY`"),
        (se("hosts: [a.com]\nports: [{number: 80}]"), "spec.ports[0].name: port name `` must be a DNS-1123 label"),
        (se("hosts: [a.com]\nresolution: STATIC\nports: [{number: 80, name: http}]\nendpoints: [{address: db.example.com}]"), "spec.endpoints[0].address: `db.example.com` is not an IP address or unix:// path"),
        (se("hosts: [a.com]\nresolution: DNS\nports: [{number: 80, name: http}]\nendpoints: [{address: a.com, ports: {https: 8443}}]"), "spec.endpoints[0].ports.https: port `https` is not declared in `ports`"),
        (se("hosts: ['*.a.com']\nresolution: DNS"), "spec.hosts[0]: a wildcard host cannot be resolved in DNS"),
        (se("hosts: [a.com]\nendpoints: [{address: 1.1.1.1}]"), "spec.endpoints: resolution NONE forwards to the original destination"),
        (pa("selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: STRICT}}"), "spec.portLevelMtls.0: port 0 is out of range 1..=65535"),
        (pa("portLevelMtls: {8080: {mode: STRICT}}"), "spec.portLevelMtls: `portLevelMtls` needs a `selector` with `matchLabels`"),
        (pa("selector: {matchLabels: {app: a}}\nportLevelMtls: {http: {mode: STRICT}}"), "spec.portLevelMtls.http: `http` is not a port number"),
        (pa("selector: {matchLabels: {app: '*'}}"), "spec.selector.matchLabels.app: wildcards are not supported in labels"),
        (
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: Bad_Name, namespace: x}\nspec: {address: 1.1.1.1}".to_string(),
            "metadata.name: name `Bad_Name` must be lowercase",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: we}\nspec: {ports: {http: 0}}".to_string(),
            "spec.address: address is required unless `network` is set",
        ),
    ] {
        let lines = errors(&yaml);
        assert!(
            lines.iter().any(|line| line.contains(expected)),
            "expected `{expected}` in\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn every_bad_document_is_reported_and_nothing_accepted() {
    let bad_weights = document(
        "networking.istio.io/v1",
        "VirtualService",
        "hosts: []\nhttp:\n- route: [{destination: {host: a}, weight: 50}, {destination: {host: b}, weight: 10}]",
    );
    let bad_kind = "apiVersion: networking.istio.io/v1\nkind: EnvoyFilter\nmetadata: {name: s, namespace: ns}\nspec: {}\n";
    let yaml = format!("{REVIEWS_CANARY}---\n{bad_weights}---\n{bad_kind}---\nkind: [\n");
    let err = parse_documents(&yaml).unwrap_err();
    let indexes: Vec<_> = err.documents.iter().map(|d| d.index).collect();
    assert_eq!(indexes, [2, 3, 4]);
    assert_eq!(err.documents[0].errors.len(), 2);
    let text = err.to_string();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(
        lines[0],
        "document 2 (VirtualService default/test): spec.hosts: at least one host is required"
    );
    assert_eq!(lines[1], "document 2 (VirtualService default/test): spec.http[0].route: destination weights sum to 60, they must sum to 100");
    assert!(
        lines[2].starts_with(
            "document 3 (EnvoyFilter ns/s): kind: kind `EnvoyFilter` is not supported by Trellis"
        ),
        "{text}"
    );
    assert!(lines[3].starts_with("document 4: invalid YAML: "), "{text}");
}
