//! `Sidecar`: Istio's documentation examples, and one failing case per
//! validation rule.

use super::*;

/// The examples of Istio's Sidecar reference, one document each.
const ISTIO_EXAMPLES: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: istio-config
spec:
  egress:
  - hosts:
    - "./*"
    - "istio-system/*"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: ratings
  namespace: prod-us1
spec:
  workloadSelector:
    labels:
      app: ratings
  ingress:
  - port:
      number: 9080
      protocol: HTTP
      name: somename
    defaultEndpoint: unix:///var/run/someuds.sock
  egress:
  - port:
      number: 9080
      protocol: HTTP
      name: egresshttp
    hosts:
    - "prod-us1/*"
  - hosts:
    - "istio-system/*"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: no-ip-tables
  namespace: prod-us1
spec:
  workloadSelector:
    labels:
      app: productpage
  ingress:
  - port:
      number: 9080 # binds to proxy_instance_ip:9080 (0.0.0.0:9080, if no unicast IP is available for the instance)
      protocol: HTTP
      name: somename
    defaultEndpoint: 127.0.0.1:8080
    captureMode: NONE # not needed if metadata is set for entire proxy
  egress:
  - port:
      number: 3306
      protocol: MYSQL
      name: egressmysql
    captureMode: NONE # not needed if metadata is set for entire proxy
    bind: 127.0.0.1
    hosts:
    - "*/mysql.foo.com"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: partial-ip-tables
  namespace: prod-us1
spec:
  workloadSelector:
    labels:
      app: productpage
  ingress:
  - bind: 172.16.1.32
    port:
      number: 80 # binds to 172.16.1.32:80
      protocol: HTTP
      name: somename
    defaultEndpoint: 127.0.0.1:8080
    captureMode: NONE
  egress:
    # use the system detected defaults
    # sets up configuration to handle outbound traffic to services
    # in 192.168.0.0/16 subnet, based on information provided by the
    # service registry
  - captureMode: IPTABLES
    hosts:
    - "*/*"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: connection-pool-settings
  namespace: prod-us1
spec:
  workloadSelector:
    labels:
      app: productpage
  inboundConnectionPool:
      http:
        http1MaxPendingRequests: 1024
        http2MaxRequests: 1024
        maxRequestsPerConnection: 1024
        maxRetries: 100
  ingress:
  - port:
      number: 80
      protocol: HTTP
      name: somename
    connectionPool:
      http:
        http1MaxPendingRequests: 1024
        http2MaxRequests: 1024
        maxRequestsPerConnection: 1024
        maxRetries: 100
      tcp:
        maxConnections: 100
"#;

/// The fields the examples leave out: ingress TLS, a unix-socket egress
/// listener, the outbound traffic policy with an egress proxy.
const EVERYTHING_ELSE: &str = r#"
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata:
  name: edge
  namespace: prod-us1
spec:
  ingress:
  - port:
      number: 8443
      protocol: HTTPS
      name: https-api
    defaultEndpoint: "[::1]:8080"
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/server.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
  egress:
  - port:
      number: 0
      protocol: HTTP
      name: uds
    bind: unix:///var/run/egress.sock
    captureMode: NONE
    hosts: ["~/*"]
  - hosts: ["*/*"]
  outboundTrafficPolicy:
    mode: ALLOW_ANY
    egressProxy:
      host: egress.istio-system.svc.cluster.local
      subset: v1
      port:
        number: 3128
"#;

fn sidecar(spec: &str) -> String {
    document("networking.istio.io/v1", "Sidecar", spec)
}

#[test]
fn istio_examples_parse_and_round_trip() {
    let resources = parse_documents(ISTIO_EXAMPLES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resources.len(), 5);
    for resource in &resources {
        assert_round_trips(resource);
    }
    let sidecars: Vec<&Sidecar> = resources
        .iter()
        .map(|r| match &r.spec {
            Spec::Sidecar(s) => s.as_ref(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sidecars[0].egress[0].hosts, ["./*", "istio-system/*"]);
    let ratings = sidecars[1];
    assert_eq!(
        ratings.workload_selector.as_ref().unwrap().labels["app"],
        "ratings"
    );
    assert_eq!(
        ratings.ingress[0].default_endpoint.as_deref(),
        Some("unix:///var/run/someuds.sock")
    );
    assert_eq!(
        ratings.ingress[0].port.as_ref().unwrap().protocol(),
        Protocol::Http
    );
    assert!(ratings.egress[1].port.is_none());
    let no_iptables = sidecars[2];
    assert_eq!(no_iptables.ingress[0].capture_mode, Some(CaptureMode::None));
    assert_eq!(no_iptables.egress[0].bind.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        no_iptables.egress[0].port.as_ref().unwrap().protocol(),
        Protocol::Mysql
    );
    assert_eq!(
        sidecars[3].egress[0].capture_mode,
        Some(CaptureMode::Iptables)
    );
    let pools = sidecars[4];
    let inbound = pools.inbound_connection_pool.as_ref().unwrap();
    assert_eq!(inbound.http.as_ref().unwrap().max_retries, Some(100));
    let port_pool = pools.ingress[0].connection_pool.as_ref().unwrap();
    assert_eq!(port_pool.tcp.as_ref().unwrap().max_connections, Some(100));

    let resource = one(EVERYTHING_ELSE);
    let Spec::Sidecar(edge) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    assert_eq!(
        edge.ingress[0].tls.as_ref().unwrap().mode(),
        ServerTlsMode::Mutual
    );
    let policy = edge.outbound_traffic_policy.as_ref().unwrap();
    assert_eq!(policy.mode, Some(OutboundTrafficMode::AllowAny));
    assert_eq!(
        policy.egress_proxy.as_ref().unwrap().port,
        Some(PortSelector { number: 3128 })
    );
    assert_eq!(edge.egress[0].port.as_ref().unwrap().number, 0);
    assert_round_trips(&resource);
}

#[test]
fn each_rule_names_its_field() {
    let http = "port: {number: 9080, protocol: HTTP, name: http}";
    let https = "port: {number: 8443, protocol: HTTPS, name: https}";
    let cert = "serverCertificate: /c.pem, privateKey: /k.pem";
    for (spec, path, reason) in [
        ("workloadSelector: {labels: {app: a}}".to_string(), "spec", "a Sidecar needs at least one of `ingress`, `egress`"),
        ("workloadSelector: {labels: {app: '*'}}\negress: [{hosts: ['*/*']}]".to_string(), "spec.workloadSelector.labels.app", "wildcards are not supported"),
        ("ingress:\n- defaultEndpoint: 127.0.0.1:8080".to_string(), "spec.ingress[0].port", "port is required"),
        ("ingress:\n- port: {number: 0, protocol: HTTP}".to_string(), "spec.ingress[0].port.number", "port 0 is out of range"),
        ("ingress:\n- port: {number: 80, protocol: SPDY}".to_string(), "spec.ingress[0].port.protocol", "unknown protocol `SPDY`"),
        ("ingress:\n- port: {number: 80, name: Web_1}".to_string(), "spec.ingress[0].port.name", "port name `Web_1` must be a DNS-1123 label"),
        ("ingress:\n- port: {number: 80, targetPort: 8080}".to_string(), "spec.ingress[0].port.targetPort", "has no effect on sidecars"),
        (format!("ingress:\n- {http}\n- port: {{number: 9080, name: other}}"), "spec.ingress[1].port.number", "port 9080 is used by another ingress listener"),
        (format!("ingress:\n- {http}\n  bind: unix:///var/run/in.sock"), "spec.ingress[0].bind", "is not an IP address"),
        (format!("ingress:\n- {http}\n  defaultEndpoint: 10.0.0.1:8080"), "spec.ingress[0].defaultEndpoint", "must be 127.0.0.1:PORT, [::1]:PORT"),
        (format!("ingress:\n- {http}\n  defaultEndpoint: '::1:8080'"), "spec.ingress[0].defaultEndpoint", "must be 127.0.0.1:PORT"),
        (format!("ingress:\n- {http}\n  defaultEndpoint: 127.0.0.1:http"), "spec.ingress[0].defaultEndpoint", "must be 127.0.0.1:PORT"),
        (format!("ingress:\n- {http}\n  defaultEndpoint: 0.0.0.0:70000"), "spec.ingress[0].defaultEndpoint", "port 70000 is out of range"),
        (format!("ingress:\n- {http}\n  defaultEndpoint: unix://app.sock"), "spec.ingress[0].defaultEndpoint", "is not a unix socket address"),
        (format!("ingress:\n- {http}\n  tls: {{mode: SIMPLE, {cert}}}"), "spec.ingress[0].tls", "TLS settings need the port's protocol to be HTTPS or TLS"),
        (format!("ingress:\n- {https}\n  tls: {{mode: ISTIO_MUTUAL}}"), "spec.ingress[0].tls.mode", "ISTIO_MUTUAL is not supported on a Sidecar ingress listener"),
        (format!("ingress:\n- {https}\n  tls: {{mode: SIMPLE, credentialName: c}}"), "spec.ingress[0].tls.credentialName", "is not supported on a Sidecar ingress listener"),
        (format!("ingress:\n- {https}\n  tls: {{mode: SIMPLE, {cert}, httpsRedirect: true}}"), "spec.ingress[0].tls.httpsRedirect", "is not supported"),
        (format!("ingress:\n- {https}\n  tls: {{mode: SIMPLE, {cert}, subjectAltNames: [a]}}"), "spec.ingress[0].tls.subjectAltNames", "is not supported"),
        (format!("ingress:\n- {https}\n  tls: {{mode: MUTUAL, {cert}}}"), "spec.ingress[0].tls.caCertificates", "required for MUTUAL mode"),
        (format!("ingress:\n- {http}\n  connectionPool: {{}}"), "spec.ingress[0].connectionPool", "set `tcp` or `http` limits"),
        (format!("ingress:\n- {http}\n  connectionPool: {{tcp: {{maxConnections: -1}}}}"), "spec.ingress[0].connectionPool.tcp.maxConnections", "-1 must not be negative"),
        ("inboundConnectionPool: {http: {maxRetries: -2}}".to_string(), "spec.inboundConnectionPool.http.maxRetries", "-2 must not be negative"),
        ("egress:\n- port: {number: 80}\n  hosts: []".to_string(), "spec.egress[0].hosts", "at least one host is required"),
        ("egress:\n- hosts: [foo.com]".to_string(), "spec.egress[0].hosts[0]", "host `foo.com` must be written `namespace/dnsName`"),
        ("egress:\n- hosts: ['Prod/*']".to_string(), "spec.egress[0].hosts[0]", "namespace `Prod` in host `Prod/*` is not `*`, `.`, `~` or a namespace name"),
        ("egress:\n- hosts: ['prod/a*.com']".to_string(), "spec.egress[0].hosts[0]", "`a*.com` is not a DNS name"),
        ("egress:\n- hosts: ['./*']\n- port: {number: 80}\n  hosts: ['*/*']".to_string(), "spec.egress[0]", "the egress listener without `port` must be the last one"),
        ("egress:\n- hosts: ['./*']\n- hosts: ['*/*']".to_string(), "spec.egress[1]", "only one egress listener may leave out `port`"),
        ("egress:\n- port: {number: 80}\n  hosts: ['./*']\n- port: {number: 80}\n  hosts: ['*/*']".to_string(), "spec.egress[1].port.number", "port 80 is used by another egress listener"),
        ("egress:\n- port: {number: 0}\n  bind: unix:///a.sock\n  hosts: ['./*']\n- port: {number: 0}\n  bind: unix:///a.sock\n  hosts: ['*/*']".to_string(), "spec.egress[1].bind", "unix socket `bind` is used by another egress listener"),
        ("egress:\n- port: {number: 0}\n  bind: 127.0.0.1\n  hosts: ['./*']".to_string(), "spec.egress[0].port.number", "port 0 needs a unix domain socket `bind`"),
        ("egress:\n- port: {number: 0}\n  bind: unix:///a.sock\n  captureMode: IPTABLES\n  hosts: ['./*']".to_string(), "spec.egress[0].captureMode", "cannot be captured with IPTABLES"),
        ("egress:\n- port: {number: 3306}\n  bind: unix:///a.sock\n  hosts: ['./*']".to_string(), "spec.egress[0].bind", "is not an IP address"),
        ("egress:\n- bind: 127.0.0.1\n  hosts: ['./*']".to_string(), "spec.egress[0].bind", "`bind` needs a `port`"),
        ("egress:\n- port: {number: 80, protocol: SPDY}\n  hosts: ['./*']".to_string(), "spec.egress[0].port.protocol", "unknown protocol `SPDY`"),
        ("outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: egress.example.com, port: {number: 3128}}}".to_string(), "spec.outboundTrafficPolicy.egressProxy", "only used with mode ALLOW_ANY"),
        ("outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress.example.com}}".to_string(), "spec.outboundTrafficPolicy.egressProxy.port", "the egress proxy's port is required"),
        ("outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: '', port: {number: 3128}}}".to_string(), "spec.outboundTrafficPolicy.egressProxy.host", "host must not be empty"),
    ] {
        assert_refused(&sidecar(&spec), path, reason);
    }
}

#[test]
fn unknown_fields_and_values_are_refused() {
    for (spec, path, reason) in [
        (
            "egress:\n- hosts: ['./*']\n  localhost: {}",
            "spec.egress[0].localhost",
            "unknown field `localhost`",
        ),
        (
            "egress:\n- hosts: ['./*']\n  captureMode: TPROXY",
            "spec.egress[0].captureMode",
            "unknown value `TPROXY`",
        ),
        (
            "outboundTrafficPolicy: {mode: DENY}",
            "spec.outboundTrafficPolicy.mode",
            "unknown value `DENY`",
        ),
        (
            "workloadSelector: {matchLabels: {app: a}}\negress: [{hosts: ['./*']}]",
            "spec.workloadSelector.matchLabels",
            "unknown field `matchLabels`, expected `labels`",
        ),
    ] {
        assert_refused(&sidecar(spec), path, reason);
    }
}
