//! Who is on each side of a request, as Istio's standard metric labels name
//! them.
use std::sync::{Arc, LazyLock};

/// One side of a request or connection: a workload and its identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Workload {
    pub workload: String,
    pub namespace: String,
    /// SPIFFE ID, or empty when the side is not authenticated.
    pub principal: String,
    /// `app` label (or `app.kubernetes.io/name`).
    pub app: String,
    /// `version` label (or `app.kubernetes.io/version`).
    pub version: String,
}

impl Workload {
    /// A workload as its own metrics name it: `name` if given, else its
    /// `app` label, else its service account (the last part of its
    /// principal `spiffe://TD/ns/NS/sa/SA`); its `app` and `version`
    /// labels.
    pub fn new(
        principal: &str,
        namespace: &str,
        name: Option<&str>,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Workload {
        let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let app = label("app");
        let sa = principal.rsplit('/').next().unwrap_or_default();
        let workload = match name {
            Some(n) => n.to_string(),
            None if !app.is_empty() => app.clone(),
            None => sa.to_string(),
        };
        Workload {
            workload,
            namespace: namespace.to_string(),
            principal: principal.to_string(),
            app,
            version: label("version"),
        }
    }

    /// A side not known (yet): one shared value, not one made per request.
    pub fn none() -> Arc<Workload> {
        static NONE: LazyLock<Arc<Workload>> = LazyLock::new(Arc::default);
        NONE.clone()
    }

    /// "unknown" for what is not known, as Istio reports it.
    pub fn or_unknown(s: &str) -> &str {
        if s.is_empty() {
            "unknown"
        } else {
            s
        }
    }
}

/// Which proxy is reporting: the caller's or the callee's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The labels every request and connection series carries, apart from the
/// ones that vary per response.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnLabels {
    pub reporter: Reporter,
    pub source: Arc<Workload>,
    pub destination: Arc<Workload>,
    /// The service's hostname, e.g. `reviews.default.svc.cluster.local`.
    pub destination_service: Arc<str>,
    /// Whether the connection between the agents was mTLS.
    pub mtls: bool,
}

impl ConnLabels {
    /// Appends the labels in Prometheus form (`name="value",...`).
    pub fn render(&self, out: &mut String) {
        let (svc_name, svc_ns) = service_name_and_namespace(&self.destination_service);
        let pairs: [(&str, &str); 15] = [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &self.source.workload),
            ("source_workload_namespace", &self.source.namespace),
            ("source_principal", &self.source.principal),
            ("source_app", &self.source.app),
            ("source_version", &self.source.version),
            ("destination_workload", &self.destination.workload),
            (
                "destination_workload_namespace",
                &self.destination.namespace,
            ),
            ("destination_principal", &self.destination.principal),
            ("destination_app", &self.destination.app),
            ("destination_version", &self.destination.version),
            ("destination_service", &self.destination_service),
            ("destination_service_name", svc_name),
            ("destination_service_namespace", svc_ns),
            (
                "connection_security_policy",
                if self.mtls { "mutual_tls" } else { "none" },
            ),
        ];
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_label(out, k, Workload::or_unknown(v));
        }
    }
}

/// `destination_service_name` and `destination_service_namespace` of a
/// service host: a Kubernetes service's name and namespace
/// (`NAME.NS.svc`, `NAME.NS.svc.DOMAIN`), else the host itself and no
/// namespace (rendered `unknown`), as Istio names a ServiceEntry's host
/// or a destination outside the mesh.
pub fn service_name_and_namespace(host: &str) -> (&str, &str) {
    let mut labels = host.splitn(4, '.');
    match (labels.next(), labels.next(), labels.next()) {
        (Some(name), Some(ns), Some("svc")) if !name.is_empty() && !ns.is_empty() => (name, ns),
        _ => (host, ""),
    }
}

/// `name="value"` with the value escaped as the Prometheus text format wants.
pub fn push_label(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The namespace in a workload SPIFFE ID (`spiffe://TD/ns/NS/sa/SA`).
pub fn namespace_of(id: &trellis_identity::SpiffeId) -> Option<&str> {
    id.workload_parts().map(|(ns, _)| ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_hosts_name_their_namespace_and_other_hosts_none() {
        let cases = [
            ("reviews.default.svc.cluster.local", ("reviews", "default")),
            ("reviews.prod.svc", ("reviews", "prod")),
            ("api.example.com", ("api.example.com", "")),
            ("nothere.default", ("nothere.default", "")),
            ("10.0.0.1", ("10.0.0.1", "")),
            ("unknown", ("unknown", "")),
        ];
        for (host, want) in cases {
            assert_eq!(service_name_and_namespace(host), want, "{host}");
        }
    }
}
