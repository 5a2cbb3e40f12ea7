//! `trellis analyze`: cross-resource checks that single-document validation
//! cannot make, in the manner of `istioctl analyze`. Pure: a list of
//! resources and workloads in, messages out, each naming the resource and
//! the field.
use std::collections::{BTreeMap, HashMap};

use trellis_api::config::{
    canonical_host, check_documents, host_matches, Destination, Resource, Spec,
};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "Error",
            Level::Warning => "Warning",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub level: Level,
    /// Istio's analyzer code name, e.g. `ReferencedResourceNotFound`.
    pub code: &'static str,
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// Path of the field inside the resource.
    pub field: String,
    pub text: String,
}

/// A workload the selectors may match: its namespace and labels.
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Istio's root namespace: selectors there look at every namespace.
const ROOT_NAMESPACE: &str = "istio-system";

const NOT_FOUND: &str = "ReferencedResourceNotFound";
/// A field Trellis accepts and does not act on (yet).
const NOT_ACTED_ON: &str = "FieldNotActedOn";
/// What Istio's validation warns about.
const VALIDATION_WARNING: &str = "ValidationWarning";
const CONFLICT: &str = "ConflictingMeshGatewayVirtualServiceHosts";

/// Runs every check over `resources` (the stored config with the files
/// being analyzed in place of their stored versions) and the workloads
/// known (WorkloadEntries, ServiceEntry endpoints, registered agents).
pub fn analyze(resources: &[Resource], workloads: &[Workload<'_>], domain: &str) -> Vec<Message> {
    let mut a = Analysis {
        domain,
        services: Vec::new(),
        rules: HashMap::new(),
        out: Vec::new(),
    };
    for r in resources {
        if let Spec::ServiceEntry(se) = &r.spec {
            a.services.extend(se.hosts.iter().cloned());
        }
    }
    for r in resources {
        if let Spec::DestinationRule(dr) = &r.spec {
            let host = a.canonical(&dr.host, &r.metadata.namespace);
            a.rules.entry(host).or_insert(r);
        }
    }
    let mut vs_hosts: BTreeMap<String, Vec<(&Resource, usize)>> = BTreeMap::new();
    for r in resources {
        let ns = &r.metadata.namespace;
        match &r.spec {
            Spec::VirtualService(vs) => {
                let mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
                for (i, h) in vs.hosts.iter().enumerate() {
                    if mesh {
                        vs_hosts.entry(a.canonical(h, ns)).or_default().push((r, i));
                    }
                }
                for (i, route) in vs.http.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        a.destination(
                            r,
                            &format!("spec.http[{i}].route[{j}].destination"),
                            &d.destination,
                        );
                    }
                    if let Some(m) = &route.mirror {
                        a.destination(r, &format!("spec.http[{i}].mirror"), m);
                    }
                    for (j, m) in route.mirrors.iter().enumerate() {
                        a.destination(
                            r,
                            &format!("spec.http[{i}].mirrors[{j}].destination"),
                            &m.destination,
                        );
                    }
                }
                for (i, route) in vs.tcp.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        a.destination(
                            r,
                            &format!("spec.tcp[{i}].route[{j}].destination"),
                            &d.destination,
                        );
                    }
                }
                for (i, route) in vs.tls.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        a.destination(
                            r,
                            &format!("spec.tls[{i}].route[{j}].destination"),
                            &d.destination,
                        );
                    }
                }
            }
            Spec::DestinationRule(dr) => {
                let host = a.canonical(&dr.host, ns);
                if !a.known(&host) {
                    a.push(
                        Level::Warning,
                        NOT_FOUND,
                        r,
                        "spec.host",
                        format!(
                            "host `{host}` is not a service of the mesh: no ServiceEntry has it"
                        ),
                    );
                }
            }
            _ => {}
        }
        if let Some((field, labels)) = selector(r) {
            if !labels.is_empty() && !workloads.iter().any(|w| selects(r, labels, w)) {
                let what = labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
                a.push(
                    Level::Warning,
                    NOT_FOUND,
                    r,
                    field,
                    format!("the selector {what} matches no workload in namespace {ns}"),
                );
            }
        }
    }
    for (host, owners) in vs_hosts {
        if owners.len() < 2 {
            continue;
        }
        let names: Vec<String> = owners
            .iter()
            .map(|(r, _)| format!("{}/{}", r.metadata.namespace, r.metadata.name))
            .collect();
        for (r, i) in &owners {
            a.push(
                Level::Error,
                CONFLICT,
                r,
                &format!("spec.hosts[{i}]"),
                format!(
                    "host `{host}` is in more than one VirtualService ({}); only the first is used",
                    names.join(", ")
                ),
            );
        }
    }
    a.out.sort_by(|x, y| {
        (x.kind, &x.namespace, &x.name, &x.field).cmp(&(y.kind, &y.namespace, &y.name, &y.field))
    });
    a.out
}

/// The warnings of the documents in `yaml` (the files being analyzed):
/// fields Trellis does not act on, and what Istio's validation warns
/// about, each naming the resource and the field. The stored config has
/// none to give: fields not acted on are not stored.
pub fn document_warnings(yaml: &str) -> Vec<Message> {
    let mut out = Vec::new();
    for d in check_documents(yaml).warnings {
        let Some(kind) = d
            .kind
            .as_deref()
            .and_then(|k| Spec::KINDS.iter().find(|known| **known == k))
        else {
            continue;
        };
        let (namespace, name) = d
            .name
            .as_deref()
            .and_then(|n| n.split_once('/'))
            .unwrap_or_default();
        for w in d.warnings {
            let code = if w.reason.starts_with("accepted, not acted on") {
                NOT_ACTED_ON
            } else {
                VALIDATION_WARNING
            };
            out.push(Message {
                level: Level::Warning,
                code,
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                field: w.path,
                text: w.reason,
            });
        }
    }
    out
}

struct Analysis<'a> {
    domain: &'a str,
    services: Vec<String>,
    rules: HashMap<String, &'a Resource>,
    out: Vec<Message>,
}

impl Analysis<'_> {
    fn canonical(&self, host: &str, namespace: &str) -> String {
        canonical_host(host, namespace, self.domain, |h| self.known(h))
    }

    fn known(&self, host: &str) -> bool {
        self.services.iter().any(|s| host_matches(s, host))
    }

    fn push(&mut self, level: Level, code: &'static str, r: &Resource, field: &str, text: String) {
        self.out.push(Message {
            level,
            code,
            kind: r.kind(),
            namespace: r.metadata.namespace.clone(),
            name: r.metadata.name.clone(),
            field: field.to_string(),
            text,
        });
    }

    /// A route destination must be a service, and its subset defined.
    fn destination(&mut self, r: &Resource, field: &str, d: &Destination) {
        let host = self.canonical(&d.host, &r.metadata.namespace);
        if !self.known(&host) {
            self.push(
                Level::Error,
                NOT_FOUND,
                r,
                &format!("{field}.host"),
                format!("host `{host}` resolves to no service: no ServiceEntry has it"),
            );
            return;
        }
        let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) else {
            return;
        };
        let text = match self.rules.get(&host).map(|dr| &dr.spec) {
            Some(Spec::DestinationRule(dr)) if dr.subsets.iter().any(|s| s.name == subset) => {
                return
            }
            Some(_) => {
                let dr = self.rules[&host];
                format!(
                    "subset `{subset}` is not defined in DestinationRule {}/{} for `{host}`",
                    dr.metadata.namespace, dr.metadata.name
                )
            }
            None => format!(
                "subset `{subset}` of `{host}` is not defined: no DestinationRule for the host"
            ),
        };
        self.push(Level::Error, NOT_FOUND, r, &format!("{field}.subset"), text);
    }
}

/// The workload selector of a resource that has one, with its field path.
fn selector(r: &Resource) -> Option<(&'static str, &BTreeMap<String, String>)> {
    match &r.spec {
        Spec::PeerAuthentication(pa) => pa
            .selector
            .as_ref()
            .map(|s| ("spec.selector.matchLabels", &s.match_labels)),
        Spec::DestinationRule(dr) => dr
            .workload_selector
            .as_ref()
            .map(|s| ("spec.workloadSelector.matchLabels", &s.match_labels)),
        Spec::ServiceEntry(se) => se
            .workload_selector
            .as_ref()
            .map(|s| ("spec.workloadSelector.labels", &s.labels)),
        _ => None,
    }
}

/// Whether `r`'s selector `labels` picks workload `w`: in the resource's
/// namespace, or anywhere from the root namespace (except a ServiceEntry,
/// which only selects in its own).
fn selects(r: &Resource, labels: &BTreeMap<String, String>, w: &Workload<'_>) -> bool {
    let ns = r.metadata.namespace.as_str();
    let anywhere = ns == ROOT_NAMESPACE && !matches!(r.spec, Spec::ServiceEntry(_));
    (anywhere || w.namespace == ns) && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::config::{parse_documents, WorkloadEntry};

    const BASE: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
";

    fn run(extra: &str, workloads: &[WorkloadEntry]) -> Vec<Message> {
        let rs = parse_documents(&format!("{BASE}---\n{extra}")).unwrap();
        let ws: Vec<Workload> = workloads
            .iter()
            .map(|w| Workload {
                namespace: "default",
                labels: &w.labels,
            })
            .collect();
        analyze(&rs, &ws, "cluster.local")
    }

    fn reviews() -> WorkloadEntry {
        WorkloadEntry {
            address: "10.0.0.1".into(),
            labels: [("app".to_string(), "reviews".to_string())].into(),
            ..Default::default()
        }
    }

    fn summary(ms: &[Message]) -> Vec<String> {
        ms.iter()
            .map(|m| {
                format!(
                    "{} {} {}/{} {}",
                    m.code, m.kind, m.namespace, m.name, m.field
                )
            })
            .collect()
    }

    #[test]
    fn a_clean_config_has_no_findings() {
        let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
";
        assert_eq!(run(vs, &[reviews()]), vec![]);
    }

    #[test]
    fn each_check_names_the_resource_and_field() {
        let cases = [
            (
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v9}}]}]
",
                vec!["ReferencedResourceNotFound VirtualService default/r spec.http[0].route[0].destination.subset"],
                "subset `v9` is not defined in DestinationRule default/reviews",
            ),
            (
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: ratings}}]}]
",
                vec!["ReferencedResourceNotFound VirtualService default/r spec.http[0].route[0].destination.host"],
                "`ratings.default.svc.cluster.local` resolves to no service",
            ),
            (
                "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: d, namespace: other}
spec: {host: nothing.example.com}
",
                vec!["ReferencedResourceNotFound DestinationRule other/d spec.host"],
                "is not a service of the mesh",
            ),
            (
                "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p}
spec:
  selector: {matchLabels: {app: nobody}}
  mtls: {mode: STRICT}
",
                vec!["ReferencedResourceNotFound PeerAuthentication default/p spec.selector.matchLabels"],
                "app=nobody matches no workload",
            ),
            (
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews}}]}]
",
                vec![
                    "ConflictingMeshGatewayVirtualServiceHosts VirtualService default/a spec.hosts[0]",
                    "ConflictingMeshGatewayVirtualServiceHosts VirtualService default/b spec.hosts[0]",
                ],
                "more than one VirtualService (default/a, default/b)",
            ),
        ];
        for (extra, want, text) in cases {
            let got = run(extra, &[reviews()]);
            assert_eq!(summary(&got), want, "{extra}");
            assert!(got[0].text.contains(text), "{}", got[0].text);
        }
    }

    #[test]
    fn a_selector_matching_nothing_is_found_only_without_workloads() {
        let got = run("", &[]);
        assert_eq!(
            summary(&got),
            vec!["ReferencedResourceNotFound ServiceEntry default/reviews spec.workloadSelector.labels"]
        );
        assert_eq!(run("", &[reviews()]), vec![]);
    }

    #[test]
    fn fields_not_acted_on_and_istio_warnings_are_warnings() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: prod}\nspec:\n  host: reviews\n  trafficPolicy: {tunnel: {protocol: CONNECT, targetHost: h, targetPort: 8080}}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec: {hosts: ['*x.com'], resolution: NONE}\n";
        assert_eq!(
            summary(&document_warnings(yaml)),
            [
                "FieldNotActedOn DestinationRule prod/r spec.trafficPolicy.tunnel",
                "ValidationWarning ServiceEntry default/e spec.hosts[0]",
            ]
        );
    }
}
