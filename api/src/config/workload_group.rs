//! `WorkloadGroup`: the template for the WorkloadEntries of workloads that
//! register themselves (VMs), and how their readiness is probed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resource::{Group, KindSpec};
use super::validate::{
    check_labels, check_no_empty, check_non_negative, check_one_of, check_port, push, Validate,
};
use super::{FieldError, WorkloadEntry};

/// `networking.istio.io` `WorkloadGroup`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorkloadGroup {
    /// Labels and annotations every WorkloadEntry of the group gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<WorkloadGroupMetadata>,
    /// The WorkloadEntry each workload starts from; `address` is filled in
    /// per workload. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<WorkloadEntry>,
    /// How the proxy checks that a workload is ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ReadinessProbe>,
}

/// Istio's `WorkloadGroup.ObjectMeta`: what is copied onto each entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkloadGroupMetadata {
    /// Labels of each entry.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of each entry.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A readiness check, as in Kubernetes: timings and exactly one of
/// `httpGet`, `tcpSocket`, `exec`, `grpc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReadinessProbe {
    /// Seconds after start before the first probe; at least 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds before a probe times out; at least 1 (1 when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Seconds between probes; at least 1 (10 when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Consecutive successes to become ready again; at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    /// Consecutive failures to become unready; at least 1 (3 when unset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    /// Ready when an HTTP GET answers 2xx or 3xx.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpHealthCheckConfig>,
    /// Ready when a TCP connection opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpHealthCheckConfig>,
    /// Ready when a command exits with 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecHealthCheckConfig>,
    /// Ready when the gRPC health service answers SERVING.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheckConfig>,
}

/// An HTTP GET probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpHealthCheckConfig {
    /// Request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port on the workload, 1..=65535. Required.
    pub port: u32,
    /// Host to connect to; the workload's IP when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` or `HTTPS`; `HTTP` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Request headers, repeats allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// A header sent by an HTTP probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpHeader {
    /// Header name: letters, digits, `-` and `_`.
    pub name: String,
    /// Header value.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
}

/// A TCP connect probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TcpHealthCheckConfig {
    /// Host to connect to; localhost when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Port, 1..=65535. Required.
    pub port: u32,
}

/// A command probe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecHealthCheckConfig {
    /// Program and arguments, not run through a shell. Required.
    pub command: Vec<String>,
}

/// A gRPC health check probe (`grpc.health.v1.Health/Check`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcHealthCheckConfig {
    /// Port, 1..=65535. Required.
    pub port: u32,
    /// Service name to ask about; the server as a whole when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl KindSpec for WorkloadGroup {
    const KIND: &'static str = "WorkloadGroup";
    const GROUP: Group = Group::Networking;
}

impl Validate for WorkloadGroup {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        if let Some(metadata) = &self.metadata {
            check_labels(errors, &format!("{path}.metadata.labels"), &metadata.labels);
        }
        let template_path = format!("{path}.template");
        match &self.template {
            Some(template) => template.validate_template(&template_path, errors),
            None => push(errors, &template_path, "template is required"),
        }
        self.probe.validate_at(&format!("{path}.probe"), errors);
    }
}

impl Validate for ReadinessProbe {
    fn validate_at(&self, path: &str, errors: &mut Vec<FieldError>) {
        check_one_of(
            errors,
            path,
            &[
                ("httpGet", self.http_get.is_some()),
                ("tcpSocket", self.tcp_socket.is_some()),
                ("exec", self.exec.is_some()),
                ("grpc", self.grpc.is_some()),
            ],
            true,
        );
        check_non_negative(
            errors,
            &format!("{path}.initialDelaySeconds"),
            self.initial_delay_seconds,
        );
        for (field, value) in [
            ("timeoutSeconds", self.timeout_seconds),
            ("periodSeconds", self.period_seconds),
            ("successThreshold", self.success_threshold),
            ("failureThreshold", self.failure_threshold),
        ] {
            if let Some(value) = value.filter(|v| *v < 1) {
                push(
                    errors,
                    &format!("{path}.{field}"),
                    format!("{value} is less than 1; leave it out for the default"),
                );
            }
        }
        if let Some(http) = &self.http_get {
            let at = format!("{path}.httpGet");
            check_port(errors, &format!("{at}.port"), http.port);
            if let Some(scheme) = http
                .scheme
                .as_deref()
                .filter(|s| !matches!(*s, "HTTP" | "HTTPS"))
            {
                push(
                    errors,
                    &format!("{at}.scheme"),
                    format!("scheme `{scheme}` must be HTTP or HTTPS"),
                );
            }
            for (i, header) in http.http_headers.iter().enumerate() {
                let valid = !header.name.is_empty()
                    && header
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !valid {
                    push(
                        errors,
                        &format!("{at}.httpHeaders[{i}].name"),
                        format!(
                            "header name `{}` must be letters, digits, `-` and `_`",
                            header.name
                        ),
                    );
                }
            }
        }
        if let Some(tcp) = &self.tcp_socket {
            check_port(errors, &format!("{path}.tcpSocket.port"), tcp.port);
        }
        if let Some(exec) = &self.exec {
            let at = format!("{path}.exec.command");
            if exec.command.is_empty() {
                push(errors, &at, "a command is required");
            }
            check_no_empty(errors, &at, &exec.command);
        }
        if let Some(grpc) = &self.grpc {
            check_port(errors, &format!("{path}.grpc.port"), grpc.port);
        }
    }
}
