//! [`Resources`]: what the control plane has pushed to this agent, by type
//! and key, and how a response changes it (pure). A response is taken
//! whole or not at all: [`Resources::apply`] returns a new set, or the
//! reason for the NACK, and the set in force stays as it was.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_api::config::{Resource, Spec, WorkloadGroup};
use trellis_api::v1::DiscoveryResponse;

use crate::mesh::Settings;

/// The `bundle` type's one item. Fields added after the first version
/// default to empty, so that an older cache still reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub trust_domain: String,
    pub roots: Vec<String>,
    pub control_plane: Vec<String>,
    /// The mesh's DNS domain of service names.
    #[serde(default)]
    pub domain: String,
    /// The cluster and network of the node that sent it.
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub network: String,
    /// Control-plane addresses by cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, Vec<String>>,
}

/// What the agent was told at start (its flags) about its domain, cluster
/// and network; what it was not told, the control plane's bundle says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Given {
    pub domain: Option<String>,
    pub cluster: Option<String>,
    pub network: Option<String>,
}

impl Bundle {
    /// `s` with what `given` leaves open taken from the bundle (when it
    /// says anything): the flags first, then the control plane, then
    /// `s`'s defaults.
    pub fn fill(&self, s: &Settings, given: &Given) -> Settings {
        let pick = |given: &Option<String>, pushed: &str, default: &str| match given {
            Some(v) => v.clone(),
            None if !pushed.is_empty() => pushed.to_string(),
            None => default.to_string(),
        };
        Settings {
            domain: pick(&given.domain, &self.domain, &s.domain),
            cluster: pick(&given.cluster, &self.cluster, &s.cluster),
            network: pick(&given.network, &self.network, &s.network),
            ..s.clone()
        }
    }

    /// Control-plane addresses in the order to try them: the nodes of
    /// `cluster` (the agent's) first, then `known` (its token's), then the
    /// others, each once.
    pub fn addresses(&self, known: &[String], cluster: &str) -> Vec<String> {
        let own = self.clusters.get(cluster).into_iter().flatten();
        let mut v: Vec<String> = Vec::new();
        for a in own.chain(known).chain(&self.control_plane) {
            if !v.contains(a) {
                v.push(a.clone());
            }
        }
        v
    }
}

/// Every pushed type but `bundle` carries Istio resources.
const BUNDLE: &str = "bundle";
const TYPES: &[&str] = &[
    "services",
    "routes",
    "clusters",
    "endpoints",
    "policies",
    "workload",
    BUNDLE,
];

/// Istio's root namespace.
const ROOT_NAMESPACE: &str = "istio-system";

/// One pushed item: its body as sent (kept for the cache) and parsed.
#[derive(Clone, Debug, PartialEq)]
enum Parsed {
    Resource(Box<Resource>),
    Bundle(Bundle),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    body: String,
    parsed: Parsed,
}

/// Who this agent is, for the checks it makes before taking a response.
#[derive(Clone, Debug, Default)]
pub struct Me {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// The pushed state in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// The control plane's version of this state.
    pub version: u64,
    types: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// The cache file's form: bodies by type and key.
#[derive(Serialize, Deserialize)]
struct Cached {
    version: u64,
    types: BTreeMap<String, BTreeMap<String, String>>,
}

impl Resources {
    /// The set after `resp`, or why `resp` is refused. A refusal names
    /// the item.
    pub fn apply(&self, resp: &DiscoveryResponse, me: &Me) -> Result<Resources, String> {
        let mut next = self.clone();
        for d in &resp.deltas {
            if !TYPES.contains(&d.r#type.as_str()) {
                return Err(format!("unknown type `{}`", d.r#type));
            }
            let items = next.types.entry(d.r#type.clone()).or_default();
            if d.full {
                items.clear();
            }
            for k in &d.removed {
                items.remove(k);
            }
            for i in &d.items {
                let body = std::str::from_utf8(&i.body)
                    .map_err(|_| format!("{}: the body is not UTF-8", i.key))?;
                let parsed = parse(&d.r#type, body).map_err(|e| format!("{}: {e}", i.key))?;
                if let Parsed::Resource(r) = &parsed {
                    refuse_unenforced(r, me).map_err(|e| format!("{}: {e}", i.key))?;
                }
                items.insert(
                    i.key.clone(),
                    Entry {
                        body: body.to_string(),
                        parsed,
                    },
                );
            }
        }
        next.version = resp.version;
        Ok(next)
    }

    /// Every Istio resource pushed (for the mesh view).
    pub fn resources(&self) -> Vec<Resource> {
        self.types
            .values()
            .flat_map(|m| m.values())
            .filter_map(|e| match &e.parsed {
                Parsed::Resource(r) => Some((**r).clone()),
                Parsed::Bundle(_) => None,
            })
            .collect()
    }

    /// The trust bundle and control-plane addresses, once pushed.
    pub fn bundle(&self) -> Option<&Bundle> {
        self.types
            .get(BUNDLE)?
            .values()
            .find_map(|e| match &e.parsed {
                Parsed::Bundle(b) => Some(b),
                Parsed::Resource(_) => None,
            })
    }

    /// The WorkloadGroup `name` in `namespace`, if pushed.
    pub fn group(&self, namespace: &str, name: &str) -> Option<&WorkloadGroup> {
        self.types
            .get("workload")?
            .values()
            .find_map(|e| match &e.parsed {
                Parsed::Resource(r)
                    if r.metadata.namespace == namespace && r.metadata.name == name =>
                {
                    match &r.spec {
                        Spec::WorkloadGroup(g) => Some(g.as_ref()),
                        _ => None,
                    }
                }
                _ => None,
            })
    }

    /// Items per type, for the admin page.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.types
            .iter()
            .map(|(t, m)| (t.clone(), m.len()))
            .collect()
    }

    /// The cache file's contents.
    pub fn to_cache(&self) -> Vec<u8> {
        let c = Cached {
            version: self.version,
            types: self
                .types
                .iter()
                .map(|(t, m)| {
                    let bodies = m.iter().map(|(k, e)| (k.clone(), e.body.clone())).collect();
                    (t.clone(), bodies)
                })
                .collect(),
        };
        serde_json::to_vec(&c).expect("strings always serialize")
    }

    /// The set a cache file holds; its items are checked as a push's are.
    pub fn from_cache(bytes: &[u8]) -> Result<Resources, String> {
        let c: Cached = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut r = Resources {
            version: c.version,
            types: BTreeMap::new(),
        };
        for (t, items) in c.types {
            let mut m = BTreeMap::new();
            for (k, body) in items {
                let parsed = parse(&t, &body).map_err(|e| format!("{k}: {e}"))?;
                m.insert(k, Entry { body, parsed });
            }
            r.types.insert(t, m);
        }
        Ok(r)
    }
}

fn parse(ty: &str, body: &str) -> Result<Parsed, String> {
    if ty == BUNDLE {
        return serde_json::from_str(body)
            .map(Parsed::Bundle)
            .map_err(|e| format!("bad bundle: {e}"));
    }
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let r = Resource::from_value(value).map_err(|e| e.to_string())?;
    r.validate().map_err(|errs| {
        errs.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(Parsed::Resource(Box::new(r)))
}

/// The agent cannot enforce AuthorizationPolicy or RequestAuthentication
/// yet; one that applies to it is refused, so that the refusal shows in
/// `trellis proxy-status` instead of traffic the policy meant to stop
/// going through.
fn refuse_unenforced(r: &Resource, me: &Me) -> Result<(), String> {
    let ns = r.metadata.namespace.as_str();
    let selector = match &r.spec {
        Spec::AuthorizationPolicy(p) => p.selector.as_ref(),
        Spec::RequestAuthentication(p) => p.selector.as_ref(),
        _ => return Ok(()),
    };
    let applies = (ns == me.namespace || ns == ROOT_NAMESPACE)
        && selector.is_none_or(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| me.labels.get(k) == Some(v))
        });
    if applies {
        return Err(format!(
            "{} {ns}/{} applies to this workload, and this agent does not enforce {} resources yet",
            r.kind(),
            r.metadata.name,
            r.kind()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::v1::{ConfigItem, TypeDelta};

    fn item(key: &str, yaml: &str) -> ConfigItem {
        let v: serde_json::Value = trellis_api::yaml::from_str(yaml).unwrap();
        ConfigItem {
            key: key.into(),
            body: serde_json::to_vec(&v).unwrap().into(),
        }
    }

    fn vs(name: &str, host: &str) -> ConfigItem {
        item(
            &format!("config/VirtualService/default/{name}"),
            &format!(
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  http: [{{route: [{{destination: {{host: {host}}}}}]}}]
"
            ),
        )
    }

    fn resp(version: u64, deltas: Vec<TypeDelta>) -> DiscoveryResponse {
        DiscoveryResponse {
            nonce: format!("n{version}"),
            version,
            deltas,
        }
    }

    fn me() -> Me {
        Me {
            namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
        }
    }

    fn names(r: &Resources) -> Vec<String> {
        let mut v: Vec<String> = r
            .resources()
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn full_then_delta_then_full() {
        let r = Resources::default()
            .apply(
                &resp(
                    5,
                    vec![TypeDelta {
                        r#type: "routes".into(),
                        full: true,
                        items: vec![vs("a", "a"), vs("b", "b")],
                        removed: vec![],
                    }],
                ),
                &me(),
            )
            .unwrap();
        assert_eq!((r.version, names(&r)), (5, vec!["a".into(), "b".into()]));
        let r = r
            .apply(
                &resp(
                    6,
                    vec![TypeDelta {
                        r#type: "routes".into(),
                        full: false,
                        items: vec![vs("c", "c")],
                        removed: vec!["config/VirtualService/default/a".into()],
                    }],
                ),
                &me(),
            )
            .unwrap();
        assert_eq!(names(&r), vec!["b", "c"]);
        let r = r
            .apply(
                &resp(
                    7,
                    vec![TypeDelta {
                        r#type: "routes".into(),
                        full: true,
                        items: vec![vs("d", "d")],
                        removed: vec![],
                    }],
                ),
                &me(),
            )
            .unwrap();
        assert_eq!(names(&r), vec!["d"]);
        let back = Resources::from_cache(&r.to_cache()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn a_bad_item_refuses_the_whole_response() {
        let r = Resources::default();
        let mut bad = vs("x", "x");
        bad.body = b"{\"apiVersion\":\"networking.istio.io/v1\",\"kind\":\"Nope\"}"
            .to_vec()
            .into();
        let err = r
            .apply(
                &resp(
                    2,
                    vec![TypeDelta {
                        r#type: "routes".into(),
                        full: false,
                        items: vec![vs("ok", "ok"), bad],
                        removed: vec![],
                    }],
                ),
                &me(),
            )
            .unwrap_err();
        assert!(
            err.starts_with("config/VirtualService/default/x: "),
            "{err}"
        );
        let err = r
            .apply(
                &resp(
                    2,
                    vec![TypeDelta {
                        r#type: "listeners".into(),
                        ..Default::default()
                    }],
                ),
                &me(),
            )
            .unwrap_err();
        assert!(err.contains("unknown type `listeners`"), "{err}");
    }

    #[test]
    fn connection_pool_settings_the_agent_applies_are_taken() {
        let dr = item(
            "config/DestinationRule/default/echo",
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 250ms}
      http: {maxRequestsPerConnection: 3}
    portLevelSettings:
    - port: {number: 9080}
      connectionPool: {http: {maxRequestsPerConnection: 0}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {connectionPool: {tcp: {connectTimeout: 1s}}}
",
        );
        let r = Resources::default().apply(
            &resp(
                4,
                vec![TypeDelta {
                    r#type: "clusters".into(),
                    full: true,
                    items: vec![dr],
                    removed: vec![],
                }],
            ),
            &me(),
        );
        assert_eq!(r.map(|r| names(&r)), Ok(vec!["echo".to_string()]));
    }

    #[test]
    fn an_authorization_policy_that_applies_is_refused() {
        let policy = |ns: &str, selector: &str| {
            item(
                &format!("config/AuthorizationPolicy/{ns}/deny"),
                &format!(
                    "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny, namespace: {ns}}}
spec:
  {selector}
  action: DENY
  rules: [{{}}]
"
                ),
            )
        };
        let push = |i: ConfigItem| {
            Resources::default().apply(
                &resp(
                    3,
                    vec![TypeDelta {
                        r#type: "policies".into(),
                        full: true,
                        items: vec![i],
                        removed: vec![],
                    }],
                ),
                &me(),
            )
        };
        let err = push(policy("default", "selector: {matchLabels: {app: web}}")).unwrap_err();
        assert!(
            err.contains("does not enforce AuthorizationPolicy resources yet"),
            "{err}"
        );
        assert!(push(policy("istio-system", "")).is_err());
        assert!(push(policy("default", "selector: {matchLabels: {app: db}}")).is_ok());
    }

    fn settings() -> Settings {
        Settings {
            trust_domain: "example.org".into(),
            domain: "cluster.local".into(),
            namespace: "default".into(),
            labels: BTreeMap::new(),
            addresses: Vec::new(),
            peer_inbound_port: 15006,
            cluster: String::new(),
            network: String::new(),
            locality: Default::default(),
            principal: "spiffe://example.org/ns/default/sa/web".into(),
            workload_name: None,
            workload_group: None,
        }
    }

    /// The agent's flags win, then what the control plane pushed, then
    /// the defaults.
    #[test]
    fn the_bundle_fills_in_what_the_flags_left_open() {
        let bundle = Bundle {
            domain: "corp.example".into(),
            cluster: "east".into(),
            network: "net-east".into(),
            ..Default::default()
        };
        let pushed = bundle.fill(&settings(), &Given::default());
        assert_eq!(
            (
                pushed.domain.as_str(),
                pushed.cluster.as_str(),
                pushed.network.as_str()
            ),
            ("corp.example", "east", "net-east")
        );
        let given = Given {
            domain: Some("mesh.internal".into()),
            cluster: None,
            network: Some("net-vm".into()),
        };
        let flags = bundle.fill(&settings(), &given);
        assert_eq!(
            (
                flags.domain.as_str(),
                flags.cluster.as_str(),
                flags.network.as_str()
            ),
            ("mesh.internal", "east", "net-vm")
        );
        // An old control plane's bundle says nothing: the defaults stay.
        let old = Bundle::default().fill(&settings(), &Given::default());
        assert_eq!(
            (old.domain.as_str(), old.cluster.as_str()),
            ("cluster.local", "")
        );
        // And an old cache still reads.
        let cached: Bundle =
            serde_json::from_str(r#"{"trustDomain":"t","roots":[],"controlPlane":["a:1"]}"#)
                .unwrap();
        assert_eq!(cached.control_plane, ["a:1"]);
    }

    #[test]
    fn an_agent_tries_its_own_clusters_nodes_first() {
        let bundle = Bundle {
            control_plane: vec!["a:1".into(), "b:1".into(), "c:1".into()],
            clusters: [
                ("east".to_string(), vec!["a:1".to_string()]),
                (
                    "west".to_string(),
                    vec!["b:1".to_string(), "c:1".to_string()],
                ),
            ]
            .into(),
            ..Default::default()
        };
        let token = ["a:1".to_string(), "x:1".to_string()];
        assert_eq!(
            bundle.addresses(&token, "west"),
            ["b:1", "c:1", "a:1", "x:1"]
        );
        assert_eq!(
            bundle.addresses(&token, "east"),
            ["a:1", "x:1", "b:1", "c:1"]
        );
        assert_eq!(bundle.addresses(&token, ""), ["a:1", "x:1", "b:1", "c:1"]);
    }
}
