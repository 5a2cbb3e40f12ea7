//! `Gateway`: Istio's documentation examples, and one failing case per
//! validation rule.

use super::*;

/// The first example of Istio's Gateway reference.
const MY_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: my-gateway
  namespace: some-config-namespace
spec:
  selector:
    app: my-gateway-controller
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - uk.bookinfo.com
    - eu.bookinfo.com
    tls:
      httpsRedirect: true # sends 301 redirect for http requests
  - port:
      number: 443
      name: https-443
      protocol: HTTPS
    hosts:
    - uk.bookinfo.com
    - eu.bookinfo.com
    tls:
      mode: SIMPLE # enables HTTPS on this port
      serverCertificate: /etc/certs/servercert.pem
      privateKey: /etc/certs/privatekey.pem
  - port:
      number: 9443
      name: https-9443
      protocol: HTTPS
    hosts:
    - "bookinfo-namespace/*.bookinfo.com"
    tls:
      mode: SIMPLE # enables HTTPS on this port
      credentialName: bookinfo-secret # fetches certs from Kubernetes secret
  - port:
      number: 9080
      name: http-wildcard
      protocol: HTTP
    hosts:
    - "*"
  - port:
      number: 2379 # to expose internal service via external port 2379
      name: mongo
      protocol: MONGO
    hosts:
    - "*"
"#;

/// Every TLS field, on a mutual-TLS server and a passthrough one.
const MUTUAL_TLS_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: mtls-ingress
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - name: mtls
    bind: 0.0.0.0
    port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - "./api.example.com"
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/server.pem
      privateKey: /etc/certs/key.pem
      caCertificates: /etc/certs/ca.pem
      caCrl: /etc/certs/crl.pem
      subjectAltNames: [client.example.com]
      verifyCertificateSpki: ["YWJj"]
      verifyCertificateHash: ["AB:CD"]
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
  - port:
      number: 15443
      name: tls
      protocol: TLS
    hosts:
    - "*.local"
    tls:
      mode: AUTO_PASSTHROUGH
  - port:
      number: 8443
      name: https-secrets
      protocol: HTTPS
    hosts:
    - "*/secure.example.com"
    tls:
      mode: OPTIONAL_MUTUAL
      credentialNames: [secure-rsa, secure-ecdsa]
  - port:
      number: 0
      name: uds
      protocol: HTTP
    bind: unix:///var/run/gateway.sock
    hosts: ["*"]
"#;

fn gateway(spec: &str) -> String {
    document("networking.istio.io/v1", "Gateway", spec)
}

#[test]
fn istio_examples_parse_and_round_trip() {
    let resource = one(MY_GATEWAY);
    assert_eq!(resource.metadata.namespace, "some-config-namespace");
    let Spec::Gateway(gw) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    assert_eq!(gw.selector["app"], "my-gateway-controller");
    assert_eq!(gw.servers.len(), 5);
    let http = &gw.servers[0];
    assert!(http.tls.as_ref().unwrap().https_redirect);
    assert_eq!(http.port.as_ref().unwrap().protocol(), Some(Protocol::Http));
    let https = gw.servers[1].tls.as_ref().unwrap();
    assert_eq!(https.mode(), ServerTlsMode::Simple);
    assert_eq!(
        https.server_certificate.as_deref(),
        Some("/etc/certs/servercert.pem")
    );
    assert_eq!(gw.servers[2].hosts, ["bookinfo-namespace/*.bookinfo.com"]);
    assert_eq!(
        gw.servers[2]
            .tls
            .as_ref()
            .unwrap()
            .credential_name
            .as_deref(),
        Some("bookinfo-secret")
    );
    assert_eq!(
        gw.servers[4].port.as_ref().unwrap().protocol(),
        Some(Protocol::Mongo)
    );
    assert_round_trips(&resource);

    let resource = one(MUTUAL_TLS_GATEWAY);
    let Spec::Gateway(gw) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    let tls = gw.servers[0].tls.as_ref().unwrap();
    assert_eq!(tls.mode(), ServerTlsMode::Mutual);
    assert_eq!(tls.min_protocol_version, Some(TlsProtocol::V1_2));
    assert_eq!(tls.max_protocol_version, Some(TlsProtocol::V1_3));
    assert_eq!(tls.verify_certificate_hash, ["AB:CD"]);
    assert_eq!(gw.servers[0].name.as_deref(), Some("mtls"));
    assert_eq!(
        gw.servers[1].tls.as_ref().unwrap().mode(),
        ServerTlsMode::AutoPassthrough
    );
    assert_eq!(
        gw.servers[2].tls.as_ref().unwrap().credential_names,
        ["secure-rsa", "secure-ecdsa"]
    );
    let dumped = assert_round_trips(&resource);
    assert!(dumped.contains("minProtocolVersion: TLSV1_2"), "{dumped}");
    assert!(dumped.contains("mode: OPTIONAL_MUTUAL"), "{dumped}");
}

#[test]
fn each_rule_names_its_field() {
    let http = "port: {number: 80, name: http, protocol: HTTP}";
    let https = "port: {number: 443, name: https, protocol: HTTPS}";
    for (spec, path, reason) in [
        ("servers: []".to_string(), "spec.servers", "at least one server"),
        (format!("servers:\n- {http}\n  hosts: []"), "spec.servers[0].hosts", "at least one host"),
        (format!("servers:\n- {http}\n  hosts: [a.com, '~/*']"), "spec.servers[0].hosts[1]", "namespace `~` in host `~/*` is not `*`, `.` or a namespace name"),
        (format!("servers:\n- {http}\n  hosts: ['a*.com']"), "spec.servers[0].hosts[0]", "`a*.com` is not a DNS name"),
        ("servers:\n- hosts: ['*']".to_string(), "spec.servers[0].port", "port is required"),
        ("servers:\n- port: {number: 0, name: http, protocol: HTTP}\n  hosts: ['*']".to_string(), "spec.servers[0].port.number", "port 0 is out of range"),
        ("servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  bind: unix:///run/gw.sock\n  hosts: ['*']".to_string(), "spec.servers[0].port.number", "must be 0 with a unix domain socket"),
        (format!("servers:\n- {http}\n  bind: localhost\n  hosts: ['*']"), "spec.servers[0].bind", "`localhost` is not an IP address"),
        (format!("servers:\n- {http}\n  bind: unix://run.sock\n  hosts: ['*']"), "spec.servers[0].bind", "is not a unix socket address"),
        ("servers:\n- port: {number: 80, protocol: HTTP}\n  hosts: ['*']".to_string(), "spec.servers[0].port.name", "port name is required"),
        (format!("servers:\n- {http}\n  hosts: [a.com]\n- port: {{number: 81, name: http, protocol: HTTP}}\n  hosts: [b.com]"), "spec.servers[1].port.name", "port name `http` is used by another server"),
        (format!("servers:\n- {http}\n  name: web\n  hosts: [a.com]\n- port: {{number: 81, name: http2, protocol: HTTP}}\n  name: web\n  hosts: [b.com]"), "spec.servers[1].name", "server name `web` is used by another server"),
        ("servers:\n- port: {number: 80, name: http, protocol: HTTP, targetPort: 8080}\n  hosts: ['*']".to_string(), "spec.servers[0].port.targetPort", "has no effect on gateways"),
        ("servers:\n- port: {number: 80, name: http}\n  hosts: ['*']".to_string(), "spec.servers[0].port.protocol", "protocol is required"),
        ("servers:\n- port: {number: 80, name: http, protocol: QUIC}\n  hosts: ['*']".to_string(), "spec.servers[0].port.protocol", "unknown protocol `QUIC`"),
        (format!("servers:\n- {https}\n  hosts: ['*']"), "spec.servers[0].tls", "protocol HTTPS needs `tls` settings"),
        (format!("servers:\n- {http}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, credentialName: c}}"), "spec.servers[0].tls", "protocol HTTP is plain text: `tls` may only set `httpsRedirect`"),
        ("servers:\n- port: {number: 27017, name: mongo, protocol: MONGO}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH}".to_string(), "spec.servers[0].tls", "protocol MONGO cannot have TLS settings"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, privateKey: /k.pem}}"), "spec.servers[0].tls.serverCertificate", "required for SIMPLE mode unless `credentialName` is set"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}"), "spec.servers[0].tls.caCertificates", "required for MUTUAL mode"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: OPTIONAL_MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}}"), "spec.servers[0].tls.caCertificates", "required for OPTIONAL_MUTUAL mode"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: ISTIO_MUTUAL, credentialName: c}}"), "spec.servers[0].tls.credentialName", "ISTIO_MUTUAL uses the mesh's workload certificate"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, credentialName: c, credentialNames: [d]}}"), "spec.servers[0].tls", "only one of `credentialName`, `credentialNames` and `serverCertificate`/`privateKey` may be set"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, credentialName: c, caCrl: /crl.pem}}"), "spec.servers[0].tls.caCrl", "cannot be set together with `credentialName`"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem, caCrl: /crl.pem}}"), "spec.servers[0].tls.caCrl", "SIMPLE mode does not check client certificates"),
        (format!("servers:\n- {https}\n  hosts: ['*']\n  tls: {{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}}"), "spec.servers[0].tls.minProtocolVersion", "is above `maxProtocolVersion`"),
        (format!("selector: {{app: '*'}}\nservers:\n- {http}\n  hosts: ['*']"), "spec.selector.app", "wildcards are not supported in labels"),
    ] {
        assert_refused(&gateway(&spec), path, reason);
    }
}

#[test]
fn unknown_fields_and_values_are_refused() {
    let server = "- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']";
    for (spec, path, reason) in [
        (format!("servers:\n{server}\n  tls: {{mode: SIMPLE, credentialName: c, sni: a.com}}"), "spec.servers[0].tls.sni", "unknown field `sni`"),
        (format!("servers:\n{server}\n  tls: {{mode: STRICT}}"), "spec.servers[0].tls.mode", "unknown value `STRICT`"),
        (format!("servers:\n{server}\n  tls: {{mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_4}}"), "spec.servers[0].tls.minProtocolVersion", "unknown value `TLSV1_4`"),
        (format!("servers:\n{server}\n  tls: {{mode: SIMPLE, credentialName: c}}\n  port2: {{}}"), "spec.servers[0].port2", "unknown field `port2`"),
        ("servers: []\nselectors: {}".to_string(), "spec.selectors", "unknown field `selectors`"),
    ] {
        assert_refused(&gateway(&spec), path, reason);
    }
}
