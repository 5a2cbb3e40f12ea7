//! `AuthorizationPolicy`: Istio's documentation examples, and one failing
//! case per validation rule.

use super::*;

/// The examples of Istio's AuthorizationPolicy reference.
const ISTIO_EXAMPLES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-dev-post
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["POST"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-post-8080
  namespace: foo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["POST"]
        ports: ["8080"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  namespace: ns1
  name: anyname
spec:
  selector:
    matchLabels:
      app: myapi
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["GET"]
        paths: ["/user/profile/*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-nothing
 namespace: foo
spec:
  {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-all
 namespace: foo
spec:
 rules:
 - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  annotations:
    "istio.io/dry-run": "true"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: target-ref-example
  namespace: default
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/headers"]
  targetRef:
    kind: Gateway
    name: waypoint
    group: gateway.networking.k8s.io
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: CUSTOM
  provider:
    name: "my-custom-authz"
  rules:
  - to:
    - operation:
        paths: ["/admin/*"]
"#;

/// Every Source, Operation and condition field.
const EVERY_FIELD: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: everything
  namespace: prod
spec:
  targetRefs:
  - kind: Service
    name: reviews
  - group: networking.istio.io
    kind: ServiceEntry
    name: external-api
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/prod/sa/*"]
        notPrincipals: ["cluster.local/ns/prod/sa/legacy"]
        requestPrincipals: ["issuer.example.com/*"]
        notRequestPrincipals: ["issuer.example.com/bot"]
        namespaces: ["prod"]
        notNamespaces: ["dev"]
        ipBlocks: ["10.0.0.0/8", "192.168.1.7"]
        notIpBlocks: ["10.1.0.0/16"]
        remoteIpBlocks: ["203.0.113.0/24"]
        notRemoteIpBlocks: ["2001:db8::/32"]
    - source:
        serviceAccounts: ["prod/reviews"]
        notServiceAccounts: ["prod/ratings"]
    to:
    - operation:
        hosts: ["*.example.com"]
        notHosts: ["admin.example.com"]
        ports: ["443"]
        notPorts: ["8443"]
        methods: ["GET", "HEAD"]
        notMethods: ["DELETE"]
        paths: ["/api/*"]
        notPaths: ["/api/admin*"]
    when:
    - key: request.headers[x-tenant]
      values: ["a", "b"]
    - key: source.ip
      notValues: ["10.2.0.0/16"]
    - key: remote.ip
      values: ["203.0.113.4"]
    - key: source.namespace
      values: ["prod"]
    - key: source.principal
      values: ["cluster.local/ns/prod/sa/reviews"]
    - key: request.auth.principal
      values: ["issuer.example.com/alice"]
    - key: request.auth.audiences
      values: ["reviews.example.com"]
    - key: request.auth.presenter
      values: ["app.example.com"]
    - key: request.auth.claims[groups][admins]
      values: ["true"]
    - key: destination.ip
      values: ["10.0.0.1"]
    - key: destination.port
      notValues: ["15000"]
    - key: connection.sni
      values: ["reviews.prod.svc.cluster.local"]
    - key: experimental.envoy.filters.network.mysql_proxy[db.table]
      values: ["[update]"]
"#;

fn policy(spec: &str) -> String {
    document("security.istio.io/v1", "AuthorizationPolicy", spec)
}

#[test]
fn istio_examples_parse_and_round_trip() {
    let resources = parse_documents(ISTIO_EXAMPLES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources.len(), 9);
    for resource in &resources {
        assert_round_trips(resource);
    }
    let policies: Vec<&AuthorizationPolicy> = resources
        .iter()
        .map(|r| match &r.spec {
            Spec::AuthorizationPolicy(p) => p.as_ref(),
            other => panic!("{other:?}"),
        })
        .collect();
    let httpbin = policies[0];
    assert_eq!(httpbin.action(), AuthorizationAction::Allow);
    let rule = &httpbin.rules[0];
    assert_eq!(
        rule.from[0].source.as_ref().unwrap().principals,
        ["cluster.local/ns/default/sa/sleep"]
    );
    assert_eq!(rule.to[1].operation.as_ref().unwrap().paths, ["/data"]);
    assert_eq!(rule.when[0].key, "request.auth.claims[iss]");
    assert_eq!(
        policies[2].rules[0].to[0].operation.as_ref().unwrap().ports,
        ["8080"]
    );
    assert_eq!(policies[3].action(), AuthorizationAction::Audit);
    assert_eq!(*policies[4], AuthorizationPolicy::default());
    assert_eq!(policies[5].rules, [AuthorizationRule::default()]);
    assert_eq!(
        resources[6].metadata.annotations["istio.io/dry-run"],
        "true"
    );
    let target = policies[7].target_ref.as_ref().unwrap();
    assert_eq!(
        (target.group.as_str(), target.kind.as_str()),
        ("gateway.networking.k8s.io", "Gateway")
    );
    assert_eq!(policies[8].action(), AuthorizationAction::Custom);
    assert_eq!(
        policies[8].provider.as_ref().unwrap().name,
        "my-custom-authz"
    );

    let resource = one(EVERY_FIELD);
    let Spec::AuthorizationPolicy(p) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    assert_eq!(p.target_refs.len(), 2);
    let source = p.rules[0].from[0].source.as_ref().unwrap();
    assert_eq!(source.not_remote_ip_blocks, ["2001:db8::/32"]);
    assert_eq!(p.rules[0].when.len(), 13);
    assert_round_trips(&resource);
}

#[test]
fn each_rule_names_its_field() {
    let deny = "action: DENY\nrules:";
    for (spec, path, reason) in [
        ("selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: w}".to_string(), "spec", "only one of `selector`, `targetRef`, `targetRefs` may be set, found `selector` and `targetRef`"),
        ("targetRef: {kind: Service, name: a}\ntargetRefs: [{kind: Service, name: b}]".to_string(), "spec", "only one of `selector`, `targetRef`, `targetRefs` may be set, found `targetRef` and `targetRefs`"),
        ("selector: {matchLabels: {app: '*'}}".to_string(), "spec.selector.matchLabels.app", "wildcards are not supported"),
        ("targetRef: {kind: Gateway, group: gateway.networking.k8s.io}".to_string(), "spec.targetRef.name", "name is required"),
        ("targetRef: {name: a}".to_string(), "spec.targetRef.kind", "kind is required"),
        ("targetRefs: [{kind: Service, name: a}, {kind: Deployment, group: apps, name: a}]".to_string(), "spec.targetRefs[1].kind", "cannot target `Deployment` in group `apps`"),
        ("targetRef: {kind: Service, name: a, namespace: other}".to_string(), "spec.targetRef.namespace", "cross-namespace targets are not supported"),
        ("action: CUSTOM\nrules: [{}]".to_string(), "spec.provider", "required with action CUSTOM"),
        ("action: CUSTOM\nprovider: {}\nrules: [{}]".to_string(), "spec.provider.name", "the provider's name is required"),
        ("action: CUSTOM\nprovider: {name: ext}".to_string(), "spec.rules", "a DENY or CUSTOM policy without rules never applies"),
        ("action: DENY".to_string(), "spec.rules", "a DENY or CUSTOM policy without rules never applies"),
        ("action: ALLOW\nprovider: {name: ext}\nrules: [{}]".to_string(), "spec.provider", "`provider` is only used with action CUSTOM"),
        ("action: CUSTOM\nprovider: {name: ext}\nrules:\n- from: [{source: {principals: [a]}}]".to_string(), "spec.rules[0].from[0].source.principals", "is not supported with action CUSTOM"),
        ("action: CUSTOM\nprovider: {name: ext}\nrules:\n- when: [{key: 'request.auth.claims[iss]', values: [a]}]".to_string(), "spec.rules[0].when[0].key", "`request.auth.claims[iss]` is not supported with action CUSTOM"),
        (format!("{deny}\n- from: [{{}}]"), "spec.rules[0].from[0].source", "source is required"),
        (format!("{deny}\n- from: [{{source: {{}}}}]"), "spec.rules[0].from[0].source", "an empty source matches nothing"),
        (format!("{deny}\n- from: [{{source: {{principals: [a]}}}}, {{source: {{serviceAccounts: [ns/sa], namespaces: [ns]}}}}]"), "spec.rules[0].from[1].source", "`serviceAccounts` cannot be combined with `principals` or `namespaces`"),
        (format!("{deny}\n- from:\n  - source: {{principals: [a]}}\n  - source: {{ipBlocks: [10.0.0.0/8, 1.2.3.4, 10.0.0.0/33]}}"), "spec.rules[0].from[1].source.ipBlocks[2]", "`10.0.0.0/33` is not an IP address or CIDR block"),
        (format!("{deny}\n- from: [{{source: {{notIpBlocks: [example.com]}}}}]"), "spec.rules[0].from[0].source.notIpBlocks[0]", "`example.com` is not an IP address"),
        (format!("{deny}\n- from: [{{source: {{remoteIpBlocks: ['']}}}}]"), "spec.rules[0].from[0].source.remoteIpBlocks[0]", "is not an IP address"),
        (format!("{deny}\n- from: [{{source: {{notRemoteIpBlocks: [1.2.3.4/8/1]}}}}]"), "spec.rules[0].from[0].source.notRemoteIpBlocks[0]", "is not an IP address"),
        (format!("{deny}\n- from: [{{source: {{principals: [a, '']}}}}]"), "spec.rules[0].from[0].source.principals[1]", "must not be empty"),
        (format!("{deny}\n- to: [{{}}]"), "spec.rules[0].to[0].operation", "operation is required"),
        (format!("{deny}\n- to: [{{operation: {{}}}}]"), "spec.rules[0].to[0].operation", "an empty operation matches nothing"),
        (format!("{deny}\n- to: [{{operation: {{ports: ['8080', http]}}}}]"), "spec.rules[0].to[0].operation.ports[1]", "`http` is not a port number"),
        (format!("{deny}\n- to: [{{operation: {{notPorts: ['0']}}}}]"), "spec.rules[0].to[0].operation.notPorts[0]", "port 0 is out of range"),
        (format!("{deny}\n- to: [{{operation: {{methods: ['']}}}}]"), "spec.rules[0].to[0].operation.methods[0]", "must not be empty"),
        (format!("{deny}\n- when: [{{values: [a]}}]"), "spec.rules[0].when[0].key", "key is required"),
        (format!("{deny}\n- when: [{{key: source.ip}}]"), "spec.rules[0].when[0]", "at least one of `values` and `notValues` is required"),
        (format!("{deny}\n- when: [{{key: source.user, values: [a]}}]"), "spec.rules[0].when[0].key", "unknown key `source.user`; supported: `request.headers[NAME]`, `source.ip`"),
        (format!("{deny}\n- when: [{{key: 'request.headers[]', values: [a]}}]"), "spec.rules[0].when[0].key", "unknown key `request.headers[]`"),
        (format!("{deny}\n- when: [{{key: request.headers, values: [a]}}]"), "spec.rules[0].when[0].key", "unknown key `request.headers`"),
        (format!("{deny}\n- when: [{{key: request.auth.claims.iss, values: [a]}}]"), "spec.rules[0].when[0].key", "unknown key"),
        (format!("{deny}\n- when: [{{key: source.ip, values: [10.0.0.0/8, bad]}}]"), "spec.rules[0].when[0].values[1]", "`bad` is not an IP address or CIDR block"),
        (format!("{deny}\n- when: [{{key: destination.ip, notValues: [1.1.1.1/99]}}]"), "spec.rules[0].when[0].notValues[0]", "is not an IP address or CIDR block"),
        (format!("{deny}\n- when: [{{key: destination.port, values: ['80', '70000']}}]"), "spec.rules[0].when[0].values[1]", "port 70000 is out of range"),
        (format!("{deny}\n- when: [{{key: destination.port, notValues: [x]}}]"), "spec.rules[0].when[0].notValues[0]", "`x` is not a port number"),
        (format!("{deny}\n- when: [{{key: connection.sni, values: ['']}}]"), "spec.rules[0].when[0].values[0]", "must not be empty"),
    ] {
        assert_refused(&policy(&spec), path, reason);
    }
}

#[test]
fn unknown_fields_and_values_are_refused() {
    for (spec, path, reason) in [
        ("action: REJECT", "spec.action", "unknown value `REJECT`"),
        (
            "rules:\n- from: [{source: {principal: [a]}}]",
            "spec.rules[0].from[0].source.principal",
            "unknown field `principal`",
        ),
        (
            "rules:\n- to: [{operation: {method: [GET]}}]",
            "spec.rules[0].to[0].operation.method",
            "unknown field `method`",
        ),
        (
            "rules:\n- when: [{key: source.ip, value: [a]}]",
            "spec.rules[0].when[0].value",
            "unknown field `value`",
        ),
        (
            "rules:\n- to: [{operation: {ports: [8080]}}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "expected string, found integer; quote it",
        ),
        (
            "targetRef: [{kind: Gateway, name: w}]",
            "spec.targetRef",
            "expected object, found list",
        ),
        (
            "provider: {name: a, url: b}",
            "spec.provider.url",
            "unknown field `url`",
        ),
    ] {
        assert_refused(&policy(spec), path, reason);
    }
}
