//! `WorkloadGroup`: Istio's documentation example, and one failing case
//! per validation rule.

use super::*;

/// The example of Istio's WorkloadGroup reference.
const REVIEWS_GROUP: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata:
  name: reviews
  namespace: bookinfo
spec:
  metadata:
    labels:
      app.kubernetes.io/name: reviews
      app.kubernetes.io/version: "1.3.4"
  template:
    ports:
      grpc: 3550
      http: 8080
    serviceAccount: default
  probe:
    initialDelaySeconds: 5
    timeoutSeconds: 3
    periodSeconds: 4
    successThreshold: 3
    failureThreshold: 3
    httpGet:
     path: /foo/bar
     host: 127.0.0.1
     port: 3100
     scheme: HTTPS
     httpHeaders:
     - name: Lit-Header
       value: Im-The-Best
"#;

fn group(spec: &str) -> String {
    document("networking.istio.io/v1", "WorkloadGroup", spec)
}

#[test]
fn istio_example_parses_and_round_trips() {
    let resource = one(REVIEWS_GROUP);
    let Spec::WorkloadGroup(wg) = &resource.spec else {
        panic!("{:?}", resource.spec)
    };
    let metadata = wg.metadata.as_ref().unwrap();
    assert_eq!(metadata.labels["app.kubernetes.io/version"], "1.3.4");
    let template = wg.template.as_ref().unwrap();
    assert_eq!(template.ports["grpc"], 3550);
    assert_eq!(template.service_account.as_deref(), Some("default"));
    assert!(template.address.is_empty(), "filled in per workload");
    let probe = wg.probe.as_ref().unwrap();
    assert_eq!(probe.period_seconds, Some(4));
    let http = probe.http_get.as_ref().unwrap();
    assert_eq!(http.port, 3100);
    assert_eq!(http.scheme.as_deref(), Some("HTTPS"));
    assert_eq!(
        http.http_headers,
        [HttpHeader {
            name: "Lit-Header".into(),
            value: "Im-The-Best".into()
        }]
    );
    assert_round_trips(&resource);

    // The other probe handlers and the annotations.
    for probe in [
        "tcpSocket: {host: 127.0.0.1, port: 3306}",
        "exec: {command: [/bin/check, --ready]}",
        "grpc: {port: 3550, service: reviews.v1.Reviews}",
    ] {
        let resource = one(&group(&format!(
            "metadata: {{annotations: {{owner: team-a}}}}\ntemplate: {{serviceAccount: reviews}}\nprobe: {{{probe}}}"
        )));
        assert_round_trips(&resource);
    }
}

#[test]
fn each_rule_names_its_field() {
    let template = "template: {serviceAccount: reviews}";
    for (spec, path, reason) in [
        ("probe: {tcpSocket: {port: 80}}".to_string(), "spec.template", "template is required"),
        ("template: {ports: {http: 0}}".to_string(), "spec.template.ports.http", "port 0 is out of range"),
        ("template: {ports: {HTTP: 80}}".to_string(), "spec.template.ports.HTTP", "port name `HTTP` must be a DNS-1123 label"),
        ("template: {address: 'a b'}".to_string(), "spec.template.address", "`a b` is not an address"),
        (format!("metadata: {{labels: {{app: '*'}}}}\n{template}"), "spec.metadata.labels.app", "wildcards are not supported"),
        (format!("{template}\nprobe: {{periodSeconds: 5}}"), "spec.probe", "exactly one of `httpGet`, `tcpSocket`, `exec`, `grpc` must be set"),
        (format!("{template}\nprobe: {{tcpSocket: {{port: 80}}, exec: {{command: [a]}}}}"), "spec.probe", "only one of `httpGet`, `tcpSocket`, `exec`, `grpc` may be set, found `tcpSocket` and `exec`"),
        (format!("{template}\nprobe: {{initialDelaySeconds: -1, tcpSocket: {{port: 80}}}}"), "spec.probe.initialDelaySeconds", "-1 must not be negative"),
        (format!("{template}\nprobe: {{timeoutSeconds: 0, tcpSocket: {{port: 80}}}}"), "spec.probe.timeoutSeconds", "0 is less than 1"),
        (format!("{template}\nprobe: {{periodSeconds: 0, tcpSocket: {{port: 80}}}}"), "spec.probe.periodSeconds", "0 is less than 1"),
        (format!("{template}\nprobe: {{successThreshold: 0, tcpSocket: {{port: 80}}}}"), "spec.probe.successThreshold", "0 is less than 1"),
        (format!("{template}\nprobe: {{failureThreshold: -3, tcpSocket: {{port: 80}}}}"), "spec.probe.failureThreshold", "-3 is less than 1"),
        (format!("{template}\nprobe: {{httpGet: {{path: /ready}}}}"), "spec.probe.httpGet.port", "port 0 is out of range"),
        (format!("{template}\nprobe: {{httpGet: {{port: 8080, scheme: https}}}}"), "spec.probe.httpGet.scheme", "scheme `https` must be HTTP or HTTPS"),
        (format!("{template}\nprobe: {{httpGet: {{port: 8080, httpHeaders: [{{name: 'X Ready', value: ok}}]}}}}"), "spec.probe.httpGet.httpHeaders[0].name", "header name `X Ready` must be letters"),
        (format!("{template}\nprobe: {{tcpSocket: {{port: 65536}}}}"), "spec.probe.tcpSocket.port", "port 65536 is out of range"),
        (format!("{template}\nprobe: {{exec: {{command: []}}}}"), "spec.probe.exec.command", "a command is required"),
        (format!("{template}\nprobe: {{exec: {{command: [/bin/check, '']}}}}"), "spec.probe.exec.command[1]", "must not be empty"),
        (format!("{template}\nprobe: {{grpc: {{service: a}}}}"), "spec.probe.grpc.port", "port 0 is out of range"),
    ] {
        assert_refused(&group(&spec), path, reason);
    }
}

#[test]
fn unknown_fields_are_refused() {
    for (spec, path, reason) in [
        (
            "template: {serviceAccount: a, labelz: {}}",
            "spec.template.labelz",
            "unknown field `labelz`",
        ),
        (
            "metadata: {name: a}\ntemplate: {}",
            "spec.metadata.name",
            "unknown field `name`, expected one of `annotations`, `labels`",
        ),
        (
            "template: {}\nprobe: {httpGet: {port: 80}, livenessProbe: {}}",
            "spec.probe.livenessProbe",
            "unknown field `livenessProbe`",
        ),
        (
            "template: {}\nprobe: {grpc: {port: 80, name: a}}",
            "spec.probe.grpc.name",
            "unknown field `name`, expected one of `port`, `service`",
        ),
    ] {
        assert_refused(&group(spec), path, reason);
    }
}
