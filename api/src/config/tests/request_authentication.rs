//! `RequestAuthentication`: Istio's documentation examples, and one
//! failing case per validation rule.

use super::*;

/// The examples of Istio's RequestAuthentication reference.
const ISTIO_EXAMPLES: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: req-authn-for-all
  namespace: istio-system
spec:
  jwtRules:
  - issuer: "issuer-foo"
    jwksUri: https://example.com/.well-known/jwks.json
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: httpbin-two-issuers
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: "issuer-foo"
  - issuer: "issuer-bar"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-on-ingress
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  jwtRules:
  - issuer: "example.com"
    jwksUri: https://example.com/.well-known/jwks.json
"#;

/// The JWTRule reference's examples, with every other field.
const EVERY_FIELD: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: everything
  namespace: prod
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  jwtRules:
  - issuer: https://example.com
    audiences:
    - bookstore_android.apps.example.com
    - bookstore_web.apps.example.com
    jwksUri: https://example.com/.secret/jwks.json
    fromHeaders:
    - name: x-goog-iap-jwt-assertion
    - name: x-jwt-assertion
      prefix: "Bearer "
    fromParams:
    - my_token
    fromCookies:
    - auth-token
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders:
    - header: x-my-company-jwt-group
      claim: my-group
    - header: x-jwt-claim-group
      claim: nested.key.group
    timeout: 1.5s
  - issuer: 1234567-compute@developer.gserviceaccount.com
    jwks: '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "xyz", "kid": "k1"}]}'
"#;

fn authn(spec: &str) -> String {
    document("security.istio.io/v1", "RequestAuthentication", spec)
}

#[test]
fn istio_examples_parse_and_round_trip() {
    let resources = parse_documents(ISTIO_EXAMPLES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources.len(), 4);
    for resource in &resources {
        assert_round_trips(resource);
    }
    let Spec::RequestAuthentication(httpbin) = &resources[0].spec else {
        panic!("{:?}", resources[0].spec)
    };
    assert_eq!(
        httpbin.selector.as_ref().unwrap().match_labels["app"],
        "httpbin"
    );
    assert_eq!(
        httpbin.jwt_rules[0].jwks_uri.as_deref(),
        Some("https://example.com/.well-known/jwks.json")
    );
    let Spec::RequestAuthentication(two) = &resources[2].spec else {
        panic!("{:?}", resources[2].spec)
    };
    let issuers: Vec<_> = two.jwt_rules.iter().map(|r| r.issuer.as_str()).collect();
    assert_eq!(issuers, ["issuer-foo", "issuer-bar"]);

    let resource = one(EVERY_FIELD);
    let Spec::RequestAuthentication(ra) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    assert_eq!(ra.target_ref.as_ref().unwrap().name, "waypoint");
    let rule = &ra.jwt_rules[0];
    assert_eq!(rule.from_headers[1].prefix.as_deref(), Some("Bearer "));
    assert_eq!(rule.from_cookies, ["auth-token"]);
    assert!(rule.forward_original_token);
    assert_eq!(rule.output_claim_to_headers[1].claim, "nested.key.group");
    assert_eq!(
        rule.timeout.unwrap().as_std(),
        std::time::Duration::from_millis(1500)
    );
    assert!(ra.jwt_rules[1].jwks.as_deref().unwrap().contains("\"kid\""));
    let dumped = assert_round_trips(&resource);
    assert!(dumped.contains("timeout: 1.5s"), "{dumped}");

    // `jwks_uri` is the CRD's alternative spelling; it is written back as
    // `jwksUri`.
    let resource = one(&authn(
        "jwtRules:\n- issuer: a\n  jwks_uri: https://a.example.com/jwks.json",
    ));
    assert!(crate::yaml::to_string(&resource)
        .unwrap()
        .contains("jwksUri: https://a.example.com/jwks.json"));
}

#[test]
fn each_rule_names_its_field() {
    for (spec, path, reason) in [
        ("selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Service, name: a}]", "spec", "only one of `selector`, `targetRef`, `targetRefs` may be set, found `selector` and `targetRefs`"),
        ("targetRef: {kind: Pod, name: a}", "spec.targetRef.kind", "cannot target `Pod` in group ``"),
        ("jwtRules:\n- jwksUri: https://example.com/jwks.json", "spec.jwtRules[0].issuer", "issuer is required"),
        ("jwtRules:\n- issuer: a\n  audiences: [b, '']", "spec.jwtRules[0].audiences[1]", "must not be empty"),
        ("jwtRules:\n- issuer: a\n  jwksUri: https://a.example.com/jwks.json\n  jwks: '{\"keys\": []}'", "spec.jwtRules[0]", "only one of `jwksUri`, `jwks` may be set, found `jwksUri` and `jwks`"),
        ("jwtRules:\n- issuer: a\n  jwksUri: ftp://example.com/jwks.json", "spec.jwtRules[0].jwksUri", "`ftp://example.com/jwks.json` is not an http(s) URL"),
        ("jwtRules:\n- issuer: a\n  jwksUri: example.com/jwks.json", "spec.jwtRules[0].jwksUri", "is not an http(s) URL"),
        ("jwtRules:\n- issuer: a\n  jwksUri: 'https:///jwks.json'", "spec.jwtRules[0].jwksUri", "is not an http(s) URL"),
        ("jwtRules:\n- issuer: a\n  jwksUri: 'https://example.com:http/jwks.json'", "spec.jwtRules[0].jwksUri", "is not an http(s) URL"),
        ("jwtRules:\n- issuer: a\n  jwksUri: 'https://exa mple.com/jwks.json'", "spec.jwtRules[0].jwksUri", "is not an http(s) URL"),
        ("jwtRules:\n- issuer: a\n  jwks: 'keys'", "spec.jwtRules[0].jwks", "is not JSON"),
        ("jwtRules:\n- issuer: a\n  jwks: '{\"kty\": \"RSA\"}'", "spec.jwtRules[0].jwks", "is not a JSON Web Key Set: it needs a `keys` list"),
        ("jwtRules:\n- issuer: a\n  fromHeaders: [{prefix: 'Bearer '}]", "spec.jwtRules[0].fromHeaders[0].name", "header name is required"),
        ("jwtRules:\n- issuer: a\n  fromHeaders: [{name: 'x jwt'}]", "spec.jwtRules[0].fromHeaders[0].name", "`x jwt` is not a valid header name"),
        ("jwtRules:\n- issuer: a\n  fromParams: ['']", "spec.jwtRules[0].fromParams[0]", "must not be empty"),
        ("jwtRules:\n- issuer: a\n  fromCookies: [a, '']", "spec.jwtRules[0].fromCookies[1]", "must not be empty"),
        ("jwtRules:\n- issuer: a\n  outputPayloadToHeader: 'x payload'", "spec.jwtRules[0].outputPayloadToHeader", "is not a valid header name"),
        ("jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{header: x-group}]", "spec.jwtRules[0].outputClaimToHeaders[0].claim", "claim is required"),
        ("jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{claim: group}]", "spec.jwtRules[0].outputClaimToHeaders[0].header", "header is required"),
        ("jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{header: ':authority', claim: host}]", "spec.jwtRules[0].outputClaimToHeaders[0].header", "header `:authority` must be letters, digits, `-` and `_`"),
        ("jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{header: x-group, claim: a}, {header: X-Group, claim: b}]", "spec.jwtRules[0].outputClaimToHeaders[1].header", "header `X-Group` is set by another claim"),
        ("jwtRules:\n- issuer: a\n  timeout: 0s", "spec.jwtRules[0].timeout", "0s is shorter than 1ms"),
    ] {
        assert_refused(&authn(spec), path, reason);
    }
}

#[test]
fn unknown_fields_and_values_are_refused() {
    for (spec, path, reason) in [
        (
            "jwtRules:\n- issuer: a\n  jwtHeaders: [x-jwt]",
            "spec.jwtRules[0].jwtHeaders",
            "unknown field `jwtHeaders`",
        ),
        (
            "jwtRules:\n- issuer: a\n  fromHeaders: [x-jwt]",
            "spec.jwtRules[0].fromHeaders[0]",
            "expected object, found string",
        ),
        (
            "jwtRules:\n- issuer: a\n  timeout: 5",
            "spec.jwtRules[0].timeout",
            "expected string, found integer",
        ),
        (
            "jwtRules:\n- issuer: a\n  outputClaimToHeaders: [{header: a, claim: b, value: c}]",
            "spec.jwtRules[0].outputClaimToHeaders[0].value",
            "unknown field `value`",
        ),
        (
            "jwtRule:\n- issuer: a",
            "spec.jwtRule",
            "unknown field `jwtRule`",
        ),
    ] {
        assert_refused(&authn(spec), path, reason);
    }
}
