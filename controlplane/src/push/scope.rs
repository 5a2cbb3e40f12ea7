//! [`Scope`]: what one agent sees of the mesh, decided by its namespace and
//! the Sidecar resource that applies to it (pure).
//!
//! The Sidecar that applies is, as in Istio: one in the agent's namespace
//! whose `workloadSelector` matches its labels, else one in its namespace
//! without a selector, else one in the root namespace without a selector;
//! none: the agent sees everything exported to its namespace. Egress hosts
//! are `NAMESPACE/HOST`, the namespace `*` (any), `.` (the agent's) or a
//! name, the host `*`, `*.suffix` or a name.
use std::collections::BTreeMap;

use trellis_api::config::host_matches;

use super::horizon::Horizon;
use super::item::{Item, Visibility};

/// Istio's root namespace.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// One Sidecar resource, as scoping needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarRule {
    pub key: String,
    pub namespace: String,
    /// `None`: applies to every workload of its namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// Every egress listener's hosts, split at the `/`.
    pub egress: Vec<(String, String)>,
}

/// What one agent may see.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub namespace: String,
    /// The Sidecar in force, by key; `None`: no egress restriction.
    pub sidecar: Option<String>,
    egress: Option<Vec<(String, String)>>,
    /// Where the agent is, for what it is sent of other networks.
    pub horizon: Horizon,
}

impl Scope {
    /// The scope of an agent in `namespace` with `labels`, given every
    /// Sidecar of the mesh (sorted by key, so ties break alike everywhere).
    pub fn of<'a>(
        namespace: &'a str,
        labels: &BTreeMap<String, String>,
        sidecars: &'a [SidecarRule],
    ) -> Scope {
        let selected = |s: &&SidecarRule| {
            s.selector
                .as_ref()
                .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        };
        let in_ns = |ns: &'a str| sidecars.iter().filter(move |s| s.namespace == ns);
        let rule = in_ns(namespace)
            .find(selected)
            .or_else(|| in_ns(namespace).find(|s| s.selector.is_none()))
            .or_else(|| in_ns(ROOT_NAMESPACE).find(|s| s.selector.is_none()));
        Scope {
            namespace: namespace.to_string(),
            sidecar: rule.map(|r| r.key.clone()),
            egress: rule.map(|r| r.egress.clone()),
            horizon: Horizon::default(),
        }
    }

    /// This scope, for an agent at `horizon`.
    pub fn at(self, horizon: Horizon) -> Scope {
        Scope { horizon, ..self }
    }

    /// Whether the agent sees `item`.
    pub fn sees(&self, item: &Item) -> bool {
        let ns = &*item.namespace;
        match &item.visibility {
            Visibility::All => true,
            Visibility::Own => ns == self.namespace,
            Visibility::OwnOrRoot => ns == self.namespace || ns == ROOT_NAMESPACE,
            // Its own namespace's endpoints tell an agent its own ports.
            Visibility::Namespace => {
                ns == self.namespace
                    || self.egress_covers(|egress_ns, _| self.ns_matches(egress_ns, ns))
            }
            Visibility::Hosts { hosts, export_to } => {
                self.exported(ns, export_to)
                    && self.egress_covers(|egress_ns, egress_host| {
                        self.ns_matches(egress_ns, ns)
                            && hosts.iter().any(|h| host_matches(egress_host, h))
                    })
            }
        }
    }

    /// The only namespaces whose items the agent can see; `None`: any.
    pub fn namespaces(&self) -> Option<Vec<&str>> {
        let egress = self.egress.as_ref()?;
        let mut v = vec![self.namespace.as_str(), ROOT_NAMESPACE];
        for (ns, _) in egress {
            match ns.as_str() {
                "*" => return None,
                "." | "~" => {}
                name => v.push(name),
            }
        }
        v.sort_unstable();
        v.dedup();
        Some(v)
    }

    fn egress_covers(&self, f: impl Fn(&str, &str) -> bool) -> bool {
        match &self.egress {
            None => true,
            Some(hosts) => hosts.iter().any(|(ns, h)| f(ns, h)),
        }
    }

    fn ns_matches(&self, pattern: &str, ns: &str) -> bool {
        match pattern {
            "*" => true,
            "." => ns == self.namespace,
            "~" => false,
            name => name == ns,
        }
    }

    /// `exportTo`: empty or `*` is everyone, `.` the resource's namespace,
    /// `~` no one, else the namespaces named.
    fn exported(&self, ns: &str, export_to: &[String]) -> bool {
        export_to.is_empty()
            || export_to.iter().any(|e| match e.as_str() {
                "*" => true,
                "." => ns == self.namespace,
                "~" => false,
                name => name == self.namespace,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::item::Type;

    fn item(ns: &str, visibility: Visibility) -> Item {
        Item {
            key: "k".into(),
            ty: Type::Services,
            namespace: ns.into(),
            body: Default::default(),
            visibility,
            network: "".into(),
        }
    }

    fn hosts(h: &[&str], export_to: &[&str]) -> Visibility {
        Visibility::Hosts {
            hosts: h.iter().map(|s| s.to_string()).collect(),
            export_to: export_to.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn sidecar(
        ns: &str,
        name: &str,
        selector: Option<&[(&str, &str)]>,
        egress: &[&str],
    ) -> SidecarRule {
        SidecarRule {
            key: format!("config/Sidecar/{ns}/{name}"),
            namespace: ns.into(),
            selector: selector.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            egress: egress
                .iter()
                .map(|h| {
                    let (n, h) = h.split_once('/').unwrap();
                    (n.to_string(), h.to_string())
                })
                .collect(),
        }
    }

    fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_sidecar_that_applies_is_istios_choice() {
        let sidecars = vec![
            sidecar(ROOT_NAMESPACE, "default", None, &["./*", "istio-system/*"]),
            sidecar("prod", "default", None, &["prod/*"]),
            sidecar(
                "prod",
                "reviews",
                Some(&[("app", "reviews")]),
                &["*/ratings.prod.svc.cluster.local"],
            ),
        ];
        let s = |ns: &str, l: &[(&str, &str)]| Scope::of(ns, &labels(l), &sidecars).sidecar;
        assert_eq!(
            s("prod", &[("app", "reviews")]).as_deref(),
            Some("config/Sidecar/prod/reviews")
        );
        assert_eq!(
            s("prod", &[("app", "web")]).as_deref(),
            Some("config/Sidecar/prod/default")
        );
        assert_eq!(
            s("dev", &[]).as_deref(),
            Some("config/Sidecar/istio-system/default")
        );
        assert_eq!(Scope::of("dev", &labels(&[]), &[]).sidecar, None);
    }

    #[test]
    fn what_an_agent_sees() {
        let root = sidecar(ROOT_NAMESPACE, "default", None, &["./*", "istio-system/*"]);
        let narrow = sidecar("prod", "s", None, &["*/*.example.com"]);
        let open = Scope::of("prod", &labels(&[]), &[]);
        let rooted = Scope::of("prod", &labels(&[]), std::slice::from_ref(&root));
        let scoped = Scope::of("prod", &labels(&[]), &[narrow]);
        let svc = |ns: &str, h: &str, e: &[&str]| item(ns, hosts(&[h], e));
        let cases = [
            // (item, open, rooted, scoped)
            (
                svc("dev", "a.dev.svc.cluster.local", &[]),
                true,
                false,
                false,
            ),
            (
                svc("prod", "a.prod.svc.cluster.local", &[]),
                true,
                true,
                false,
            ),
            (svc("istio-system", "x.example.com", &[]), true, true, true),
            (svc("dev", "x.example.com", &["."]), false, false, false),
            (svc("dev", "x.example.com", &["prod"]), true, false, true),
            (svc("prod", "x.example.com", &["~"]), false, false, false),
            (item("dev", Visibility::Namespace), true, false, true),
            (item("prod", Visibility::Namespace), true, true, true),
            (
                item("istio-system", Visibility::OwnOrRoot),
                true,
                true,
                true,
            ),
            (item("dev", Visibility::OwnOrRoot), false, false, false),
            (item("prod", Visibility::Own), true, true, true),
            (item("dev", Visibility::Own), false, false, false),
            (item("", Visibility::All), true, true, true),
        ];
        assert_eq!(open.namespaces(), None);
        assert_eq!(rooted.namespaces(), Some(vec!["istio-system", "prod"]));
        assert_eq!(scoped.namespaces(), None, "`*/...` names any namespace");
        for (i, (it, o, r, s)) in cases.iter().enumerate() {
            // What a scope sees is always in the namespaces it names.
            for sc in [&open, &rooted, &scoped] {
                if sc.sees(it) && !it.namespace.is_empty() {
                    assert!(
                        sc.namespaces().is_none_or(|n| n.contains(&&*it.namespace)),
                        "case {i}"
                    );
                }
            }
            assert_eq!(
                (open.sees(it), rooted.sees(it), scoped.sees(it)),
                (*o, *r, *s),
                "case {i}: {it:?}"
            );
        }
    }
}
