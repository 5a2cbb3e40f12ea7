//! The demo's application: Istio's bookinfo played by `trellis-echo`
//! servers. Which workloads run, at which loopback address, what each one
//! calls, the flags of its echo server and of its agent, and the Istio
//! resources that make them a mesh. Plain functions over plain data; the
//! processes are started elsewhere ([`super::processes`]).
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;

/// The namespace of every resource and workload.
pub const NAMESPACE: &str = "default";
/// The port every service (and every echo server) serves HTTP on.
pub const APP_PORT: u16 = 9080;
/// The agents' ports, the same on every workload address (Istio's).
pub const ADMIN_PORT: u16 = 15000;
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;
pub const METRICS_PORT: u16 = 15020;
pub const DNS_PORT: u16 = 15053;
/// Every port an agent listens on, on its address.
pub const AGENT_PORTS: [u16; 5] = [
    ADMIN_PORT,
    OUTBOUND_PORT,
    INBOUND_PORT,
    METRICS_PORT,
    DNS_PORT,
];
/// The east-west gateway's ports, the same on each gateway's address:
/// the listener other networks connect to, health, metrics, admin.
pub const GATEWAY_PORT: u16 = 15443;
pub const GATEWAY_HEALTH_PORT: u16 = 15021;
pub const GATEWAY_PORTS: [u16; 4] = [GATEWAY_PORT, GATEWAY_HEALTH_PORT, METRICS_PORT, ADMIN_PORT];
/// The trust domain of the demo mesh (Istio's default).
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The last octet of the client agent's address.
const CLIENT_OCTET: u8 = 100;
/// The last octet of each network's east-west gateway.
const GATEWAY_OCTET: u8 = 200;
/// The last octet of the second cluster's control-plane node.
const NODE_OCTET: u8 = 250;

/// A network of the demo and the cluster on it, each in its own loopback
/// block `127.OCTET.B.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: &'static str,
    pub cluster: &'static str,
    /// The region of its workloads' locality (`--locality`), what
    /// reviews' DestinationRule fails over between.
    pub region: &'static str,
    /// The second octet of its addresses.
    pub octet: u8,
}

/// The first network: the control plane's voters (`init`'s defaults) and
/// all of bookinfo but reviews v3.
pub const NETWORK_1: Network = Network {
    name: "network-1",
    cluster: "cluster-1",
    region: "region-1",
    octet: 10,
};
/// The second network: one control-plane node joined with a cluster
/// token (a learner), and reviews: v3, and v1 and v2 for cluster-1's to
/// fail over to.
pub const NETWORK_2: Network = Network {
    name: "network-2",
    cluster: "cluster-2",
    region: "region-2",
    octet: 20,
};
pub const NETWORKS: [Network; 2] = [NETWORK_1, NETWORK_2];
/// The client agent's identity (`NAMESPACE/SERVICE_ACCOUNT`) and app label.
pub const CLIENT_IDENTITY: &str = "default/demo-client";
pub const CLIENT_APP: &str = "demo-client";

/// The services, each with the port of the `--upstream` listener that
/// stands for it on the agents of its callers.
pub const SERVICES: [(&str, u16); 4] = [
    ("productpage", 19080),
    ("details", 19081),
    ("reviews", 19082),
    ("ratings", 19083),
];

/// One version of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceVersion {
    pub service: &'static str,
    pub version: &'static str,
    /// The services it calls before answering, in order.
    pub calls: &'static [&'static str],
    /// The network (and cluster) it runs in.
    pub network: Network,
}

/// Bookinfo's workloads: productpage calls details and reviews, reviews v2
/// and v3 call ratings, v1 calls nothing. Reviews v3 runs only on the
/// second network; reviews v1 and v2 on both, so that cluster-1's fail
/// over to cluster-2's; the rest on the first. The i-th is at
/// `127.N.B.(i+1)`, N its network's octet.
pub const WORKLOADS: [ServiceVersion; 8] = [
    ServiceVersion {
        service: "productpage",
        version: "v1",
        calls: &["details", "reviews"],
        network: NETWORK_1,
    },
    ServiceVersion {
        service: "details",
        version: "v1",
        calls: &[],
        network: NETWORK_1,
    },
    ServiceVersion {
        service: "reviews",
        version: "v1",
        calls: &[],
        network: NETWORK_1,
    },
    ServiceVersion {
        service: "reviews",
        version: "v2",
        calls: &["ratings"],
        network: NETWORK_1,
    },
    ServiceVersion {
        service: "reviews",
        version: "v3",
        calls: &["ratings"],
        network: NETWORK_2,
    },
    ServiceVersion {
        service: "ratings",
        version: "v1",
        calls: &[],
        network: NETWORK_1,
    },
    ServiceVersion {
        service: "reviews",
        version: "v1",
        calls: &[],
        network: NETWORK_2,
    },
    ServiceVersion {
        service: "reviews",
        version: "v2",
        calls: &["ratings"],
        network: NETWORK_2,
    },
];

/// The reviews versions the split weighs, in the order of [`Split`].
pub const REVIEWS_VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

impl ServiceVersion {
    /// Its WorkloadGroup, e.g. `reviews-v2`.
    pub fn group(&self) -> String {
        format!("{}-{}", self.service, self.version)
    }

    /// Its service account, as bookinfo names them: `bookinfo-reviews`.
    pub fn service_account(&self) -> String {
        format!("bookinfo-{}", self.service)
    }

    /// Its name among the demo's workloads, a version being in one or two
    /// clusters: `reviews-v1-cluster-2`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.group(), self.network.cluster)
    }

    /// `reviews v1`, as the report names what answered.
    pub fn dest(&self) -> String {
        format!("{} {}", self.service, self.version)
    }
}

/// The calls that cross networks, through the callee network's gateway:
/// (that network, `SERVICE VERSION` of the callee), each once, by network.
pub fn crossings() -> Vec<(Network, String)> {
    let mut v: Vec<(Network, String)> = Vec::new();
    for caller in &WORKLOADS {
        for callee in WORKLOADS
            .iter()
            .filter(|w| caller.calls.contains(&w.service) && w.network != caller.network)
        {
            let c = (callee.network, callee.dest());
            if !v.contains(&c) {
                v.push(c);
            }
        }
    }
    v.sort_by(|a, b| (a.0.name, &a.1).cmp(&(b.0.name, &b.1)));
    v
}

/// The reviews workloads on `network`.
pub fn reviews_on(network: Network) -> Vec<ServiceVersion> {
    WORKLOADS
        .iter()
        .filter(|w| w.service == "reviews" && w.network == network)
        .copied()
        .collect()
}

/// `NAME.default.svc.cluster.local`.
pub fn host(service: &str) -> String {
    format!("{service}.{NAMESPACE}.svc.cluster.local")
}

/// The port of the `--upstream` listener standing for `service`.
pub fn upstream_port(service: &str) -> u16 {
    SERVICES
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("{service} is not a bookinfo service"))
}

/// The weights of reviews v1, v2 and v3 in the VirtualService:
/// `50,30,20` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split(pub [u32; 3]);

impl Default for Split {
    fn default() -> Self {
        Split([50, 30, 20])
    }
}

impl FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || {
            format!("`{s}`: expected the weights of reviews v1,v2,v3 summing to 100, e.g. 50,30,20")
        };
        let parts: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|_| usage())?;
        let w: [u32; 3] = parts.try_into().map_err(|_| usage())?;
        if w.iter().sum::<u32>() != 100 {
            return Err(usage());
        }
        Ok(Split(w))
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.0;
        write!(f, "{a},{b},{c}")
    }
}

impl Split {
    /// The weight of reviews `version`.
    pub fn weight(&self, version: &str) -> u32 {
        REVIEWS_VERSIONS
            .iter()
            .position(|v| *v == version)
            .map_or(0, |i| self.0[i])
    }
}

/// A workload at its address, with what its agent listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub workload: ServiceVersion,
    pub ip: Ipv4Addr,
}

impl Placed {
    /// Where its echo server listens.
    pub fn app(&self) -> SocketAddr {
        SocketAddr::from((self.ip, APP_PORT))
    }

    /// Its agent's admin endpoint (`/ready`, `/clusters`).
    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ADMIN_PORT))
    }

    /// Its agent's metrics endpoint (`/stats/prometheus`).
    pub fn metrics(&self) -> SocketAddr {
        SocketAddr::from((self.ip, METRICS_PORT))
    }

    /// The `--upstream` listener standing for `service` on its agent.
    pub fn upstream(&self, service: &str) -> SocketAddr {
        SocketAddr::from((self.ip, upstream_port(service)))
    }

    /// The URLs its echo server calls (`--call`), through its agent, with
    /// bookinfo's paths (`/details/0`).
    pub fn call_urls(&self) -> Vec<String> {
        self.workload
            .calls
            .iter()
            .map(|s| format!("http://{}/{s}/0", self.upstream(s)))
            .collect()
    }

    /// Where the log of `what` (`agent`, `echo`) goes, e.g.
    /// `agent-reviews-v2-cluster-1.log`.
    pub fn log_name(&self, what: &str) -> String {
        format!("{what}-{}.log", self.workload.name())
    }

    /// Flags of its `trellis-echo`.
    pub fn echo_args(&self) -> Vec<String> {
        let w = &self.workload;
        let mut a = vec![
            "--http".to_string(),
            self.app().to_string(),
            "--name".into(),
            w.service.into(),
            "--version".into(),
            w.version.into(),
            "--identity".into(),
            format!(
                "spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{}",
                w.service_account()
            ),
            "--cluster".into(),
            w.network.cluster.into(),
        ];
        for url in self.call_urls() {
            a.extend(["--call".to_string(), url]);
        }
        a
    }

    /// Flags of its `trellis-agent`, but for the token.
    pub fn agent_args(&self, data_dir: &Path) -> Vec<String> {
        let w = &self.workload;
        let mut a = agent_ports(self.ip, w.network, data_dir);
        a.extend([
            "--app-host".to_string(),
            self.ip.to_string(),
            "--label".into(),
            format!("app={}", w.service),
            "--label".into(),
            format!("version={}", w.version),
        ]);
        for s in w.calls {
            a.extend([
                "--upstream".to_string(),
                format!("{}={}:{APP_PORT}", self.upstream(s), host(s)),
            ]);
        }
        a
    }
}

/// The listeners every agent has, on its own address, and its network
/// and locality.
fn agent_ports(ip: Ipv4Addr, network: Network, data_dir: &Path) -> Vec<String> {
    let at = |port: u16| SocketAddr::from((ip, port)).to_string();
    vec![
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--inbound".into(),
        at(INBOUND_PORT),
        "--outbound".into(),
        at(OUTBOUND_PORT),
        "--admin".into(),
        at(ADMIN_PORT),
        "--metrics".into(),
        at(METRICS_PORT),
        "--dns".into(),
        at(DNS_PORT),
        "--peer-inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--network".into(),
        network.name.into(),
        "--locality".into(),
        network.region.into(),
    ]
}

/// Where everything runs, in block B of each network: the workloads at
/// `127.N.B.1..=6` (N their network's octet), the client agent at
/// `127.10.B.100` with the mesh's entry point at `entry` (on 127.0.0.1,
/// for `curl`), each network's east-west gateway at `127.N.B.200`, the
/// second cluster's control-plane node at `127.20.B.250`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub block: u8,
    pub entry: SocketAddr,
}

impl Topology {
    /// Address `host` of `network`'s block.
    pub fn ip(&self, network: Network, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, network.octet, self.block, host)
    }

    /// The workloads at their addresses.
    pub fn placed(&self) -> Vec<Placed> {
        WORKLOADS
            .iter()
            .zip(1u8..)
            .map(|(w, i)| Placed {
                workload: *w,
                ip: self.ip(w.network, i),
            })
            .collect()
    }

    /// The workload of `service` `version`.
    pub fn find(&self, service: &str, version: &str) -> Option<Placed> {
        self.placed()
            .into_iter()
            .find(|p| p.workload.service == service && p.workload.version == version)
    }

    /// The client agent's own address, on the first network.
    pub fn client_ip(&self) -> Ipv4Addr {
        self.ip(NETWORK_1, CLIENT_OCTET)
    }

    pub fn client_admin(&self) -> SocketAddr {
        SocketAddr::from((self.client_ip(), ADMIN_PORT))
    }

    /// The address of `network`'s east-west gateway.
    pub fn gateway_ip(&self, network: Network) -> Ipv4Addr {
        self.ip(network, GATEWAY_OCTET)
    }

    /// The address of the second cluster's control-plane node.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.ip(NETWORK_2, NODE_OCTET)
    }

    /// Flags of `network`'s `trellis-eastwest`, but for the token and the
    /// control plane: its listeners on its address, which it advertises.
    pub fn gateway_args(&self, network: Network, data_dir: &Path) -> Vec<String> {
        let at = |port: u16| SocketAddr::from((self.gateway_ip(network), port)).to_string();
        vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen".into(),
            at(GATEWAY_PORT),
            "--health".into(),
            at(GATEWAY_HEALTH_PORT),
            "--metrics".into(),
            at(METRICS_PORT),
            "--admin".into(),
            at(ADMIN_PORT),
            "--peer-inbound-port".into(),
            INBOUND_PORT.to_string(),
        ]
    }

    /// The URL a user `curl`s: productpage through the client agent.
    pub fn entry_url(&self) -> String {
        format!("http://{}/productpage", self.entry)
    }

    /// Flags of the client agent, but for the token: one upstream
    /// listener, `entry`, standing for productpage.
    pub fn client_agent_args(&self, data_dir: &Path) -> Vec<String> {
        let mut a = agent_ports(self.client_ip(), NETWORK_1, data_dir);
        a.extend([
            "--label".to_string(),
            format!("app={CLIENT_APP}"),
            "--upstream".into(),
            format!("{}={}:{APP_PORT}", self.entry, host("productpage")),
        ]);
        a
    }

    /// Every address the demo's workloads and agents listen on, but the
    /// entry point: all must be free before it starts.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        let agent = AGENT_PORTS;
        let mut v = Vec::new();
        for p in self.placed() {
            v.push(p.app());
            v.extend(agent.iter().map(|port| SocketAddr::from((p.ip, *port))));
            v.extend(p.workload.calls.iter().map(|s| p.upstream(s)));
        }
        v.extend(
            agent
                .iter()
                .map(|port| SocketAddr::from((self.client_ip(), *port))),
        );
        for n in NETWORKS {
            v.extend(
                GATEWAY_PORTS
                    .iter()
                    .map(|port| SocketAddr::from((self.gateway_ip(n), *port))),
            );
        }
        v
    }

    /// What must be true before traffic flows: each caller's agent sees a
    /// healthy endpoint of each cluster its calls are routed to, at the
    /// callee's address on the caller's own network, else at the callee
    /// network's gateway (split horizon). (admin address of the caller's
    /// agent, cluster name as `/clusters` shows it, endpoint address.)
    pub fn expected_endpoints(&self) -> Vec<(SocketAddr, String, Ipv4Addr)> {
        let placed = self.placed();
        let cluster =
            |service: &str, subset: &str| format!("outbound|{APP_PORT}|{subset}|{}", host(service));
        let targets = |service: &str, from: Network| -> Vec<(String, Ipv4Addr)> {
            placed
                .iter()
                .filter(|p| p.workload.service == service)
                .map(|p| {
                    // reviews is routed to its subsets, the others whole.
                    let subset = if service == "reviews" {
                        p.workload.version
                    } else {
                        ""
                    };
                    let ip = if p.workload.network == from {
                        p.ip
                    } else {
                        self.gateway_ip(p.workload.network)
                    };
                    (cluster(service, subset), ip)
                })
                .collect()
        };
        let mut v: Vec<(SocketAddr, String, Ipv4Addr)> = targets("productpage", NETWORK_1)
            .into_iter()
            .map(|(c, ip)| (self.client_admin(), c, ip))
            .collect();
        for p in &placed {
            for s in p.workload.calls {
                v.extend(
                    targets(s, p.workload.network)
                        .into_iter()
                        .map(|(c, ip)| (p.admin(), c, ip)),
                );
            }
        }
        v
    }
}

/// Whether an agent's `/clusters` text lists `cluster` with a healthy
/// endpoint at `ip` (lines `CLUSTER::IP:PORT::health_flags::healthy`).
pub fn has_healthy_endpoint(clusters: &str, cluster: &str, ip: Ipv4Addr) -> bool {
    clusters.lines().any(|l| {
        let mut parts = l.split("::");
        let (Some(c), Some(addr), Some("health_flags"), Some("healthy")) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        c == cluster
            && addr
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip() == std::net::IpAddr::V4(ip))
    })
}

/// One file of the mesh's config, as written into the demo directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshFile {
    pub name: &'static str,
    pub yaml: String,
}

/// The name of the file with the reviews VirtualService, the one to edit.
pub const SPLIT_FILE: &str = "4-reviews-virtualservice.yaml";

/// The Istio resources of the demo, in files applied in name order:
/// a ServiceEntry per service, a WorkloadGroup per version (with a
/// readiness probe), a DestinationRule with reviews' subsets and a
/// VirtualService splitting reviews by `split`.
pub fn mesh_files(split: Split) -> Vec<MeshFile> {
    const API: &str = "apiVersion: networking.istio.io/v1";
    let mut services = String::from(
        "# The services of the mesh: each port 9080, its endpoints the workloads\n\
         # labelled app=NAME that registered through their WorkloadGroup.\n",
    );
    for (i, (s, _)) in SERVICES.iter().enumerate() {
        if i > 0 {
            services.push_str("---\n");
        }
        services.push_str(&format!(
            "{API}\nkind: ServiceEntry\nmetadata: {{name: {s}, namespace: {NAMESPACE}}}\nspec:\n  \
             hosts: [{h}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  \
             ports: [{{number: {APP_PORT}, name: http, protocol: HTTP}}]\n  \
             workloadSelector: {{labels: {{app: {s}}}}}\n",
            h = host(s)
        ));
    }
    let mut groups = String::from(
        "# One WorkloadGroup per version: an agent started with a token of the group\n\
         # registers its workload with these labels, runs as the service account, and\n\
         # takes traffic once the probe passes (/plain answers `ok` and calls nothing).\n",
    );
    let mut seen = Vec::new();
    for w in &WORKLOADS {
        // One group per version, whichever clusters run it.
        if seen.contains(&w.group()) {
            continue;
        }
        if !seen.is_empty() {
            groups.push_str("---\n");
        }
        seen.push(w.group());
        groups.push_str(&format!(
            "{API}\nkind: WorkloadGroup\nmetadata: {{name: {g}, namespace: {NAMESPACE}}}\nspec:\n  \
             metadata: {{labels: {{app: {s}, version: {v}}}}}\n  \
             template: {{serviceAccount: {sa}}}\n  \
             probe:\n    periodSeconds: 5\n    httpGet: {{path: /plain, port: {APP_PORT}}}\n",
            g = w.group(),
            s = w.service,
            v = w.version,
            sa = w.service_account(),
        ));
    }
    let (r1, r2) = (NETWORK_1.region, NETWORK_2.region);
    let mut rule = format!(
        "# The subsets of reviews, by version label, and locality failover: each\n\
         # caller uses the endpoints of a subset in its own region, and those of the\n\
         # other region (cluster) once outlier detection has ejected its own.\n\
         {API}\nkind: DestinationRule\n\
         metadata: {{name: reviews, namespace: {NAMESPACE}}}\nspec:\n  host: {}\n  \
         trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        \
         enabled: true\n        failover:\n        - {{from: {r1}, to: {r2}}}\n        \
         - {{from: {r2}, to: {r1}}}\n    outlierDetection:\n      \
         consecutive5xxErrors: 1\n      interval: 1s\n      baseEjectionTime: 5s\n      \
         maxEjectionPercent: 100\n  subsets:\n",
        host("reviews")
    );
    for v in REVIEWS_VERSIONS {
        rule.push_str(&format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"));
    }
    let mut vs = format!(
        "# How reviews' traffic is split between its versions. Edit the weights\n\
         # (they must sum to 100) and apply again: trellis apply -f THIS_FILE\n\
         {API}\nkind: VirtualService\nmetadata: {{name: reviews, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [{}]\n  http:\n  - route:\n",
        host("reviews")
    );
    for v in REVIEWS_VERSIONS {
        vs.push_str(&format!(
            "    - destination: {{host: {}, subset: {v}}}\n      weight: {}\n",
            host("reviews"),
            split.weight(v)
        ));
    }
    vec![
        MeshFile {
            name: "1-services.yaml",
            yaml: services,
        },
        MeshFile {
            name: "2-workloadgroups.yaml",
            yaml: groups,
        },
        MeshFile {
            name: "3-reviews-destinationrule.yaml",
            yaml: rule,
        },
        MeshFile {
            name: SPLIT_FILE,
            yaml: vs,
        },
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use trellis_api::config::{parse_documents, Spec};

    use super::*;

    fn topology() -> Topology {
        Topology {
            block: 10,
            entry: "127.0.0.1:19080".parse().unwrap(),
        }
    }

    #[test]
    fn the_mesh_files_parse_and_say_what_bookinfo_needs() {
        let files = mesh_files(Split([60, 40, 0]));
        let mut names: Vec<&str> = files.iter().map(|f| f.name).collect();
        names.sort_unstable();
        assert_eq!(names, files.iter().map(|f| f.name).collect::<Vec<_>>());
        let mut kinds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut resources = Vec::new();
        for f in &files {
            let rs = parse_documents(&f.yaml).unwrap_or_else(|e| panic!("{}: {e}", f.name));
            resources.extend(rs);
        }
        for r in &resources {
            assert_eq!(r.metadata.namespace, NAMESPACE);
            kinds
                .entry(r.kind())
                .or_default()
                .push(r.metadata.name.clone());
        }
        assert_eq!(
            kinds["ServiceEntry"],
            ["productpage", "details", "reviews", "ratings"]
        );
        assert_eq!(
            kinds["WorkloadGroup"],
            [
                "productpage-v1",
                "details-v1",
                "reviews-v1",
                "reviews-v2",
                "reviews-v3",
                "ratings-v1"
            ]
        );
        assert_eq!(kinds["DestinationRule"], ["reviews"]);
        assert_eq!(kinds["VirtualService"], ["reviews"]);

        for r in &resources {
            match &r.spec {
                Spec::ServiceEntry(se) => {
                    let json = serde_json::to_value(se).unwrap();
                    let name = &r.metadata.name;
                    assert_eq!(json["hosts"][0], host(name));
                    assert_eq!(json["workloadSelector"]["labels"]["app"], name.as_str());
                    assert_eq!(json["location"], "MESH_INTERNAL");
                    assert_eq!(json["resolution"], "STATIC");
                    assert_eq!(json["ports"][0]["number"], APP_PORT);
                }
                Spec::WorkloadGroup(wg) => {
                    let json = serde_json::to_value(wg).unwrap();
                    let (service, version) = r.metadata.name.rsplit_once('-').unwrap();
                    assert_eq!(json["metadata"]["labels"]["app"], service);
                    assert_eq!(json["metadata"]["labels"]["version"], version);
                    assert_eq!(
                        json["template"]["serviceAccount"],
                        format!("bookinfo-{service}")
                    );
                    assert_eq!(json["probe"]["httpGet"]["port"], APP_PORT);
                }
                Spec::VirtualService(vs) => {
                    let json = serde_json::to_value(vs).unwrap();
                    let route = json["http"][0]["route"].as_array().unwrap();
                    let weights: Vec<(String, u64)> = route
                        .iter()
                        .map(|d| {
                            (
                                d["destination"]["subset"].as_str().unwrap().to_string(),
                                d["weight"].as_u64().unwrap_or(0),
                            )
                        })
                        .collect();
                    assert_eq!(
                        weights,
                        [("v1".into(), 60), ("v2".into(), 40), ("v3".into(), 0)]
                    );
                }
                Spec::DestinationRule(dr) => {
                    let json = serde_json::to_value(dr).unwrap();
                    let subsets: Vec<&str> = json["subsets"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s["name"].as_str().unwrap())
                        .collect();
                    assert_eq!(subsets, REVIEWS_VERSIONS);
                    // Failover between the clusters' regions, which needs
                    // outlier detection to eject the endpoints that fail.
                    let policy = &json["trafficPolicy"];
                    let lb = &policy["loadBalancer"]["localityLbSetting"];
                    assert_eq!(lb["enabled"], true);
                    assert_eq!(
                        lb["failover"],
                        serde_json::json!([
                            {"from": "region-1", "to": "region-2"},
                            {"from": "region-2", "to": "region-1"}
                        ])
                    );
                    assert_eq!(policy["outlierDetection"]["consecutive5xxErrors"], 1);
                    assert_eq!(policy["outlierDetection"]["maxEjectionPercent"], 100);
                }
                other => panic!("unexpected {}", other.kind()),
            }
        }
    }

    #[test]
    fn splits_are_three_weights_summing_to_100() {
        assert_eq!("50,30,20".parse(), Ok(Split([50, 30, 20])));
        assert_eq!(" 100, 0 ,0".parse(), Ok(Split([100, 0, 0])));
        for bad in ["", "50,50", "50,30,30", "a,b,c", "50,30,20,0", "-50,100,50"] {
            assert!(bad.parse::<Split>().is_err(), "{bad}");
        }
        assert_eq!(Split::default().to_string(), "50,30,20");
        assert_eq!(Split::default().weight("v2"), 30);
        assert_eq!(Split::default().weight("v9"), 0);
    }

    #[test]
    fn each_echo_calls_the_upstream_listeners_of_its_own_agent() {
        let t = topology();
        for p in t.placed() {
            let echo = p.echo_args();
            let agent = p.agent_args(Path::new("/d"));
            let calls: Vec<&String> = echo
                .iter()
                .zip(echo.iter().skip(1))
                .filter(|(f, _)| *f == "--call")
                .map(|(_, url)| url)
                .collect();
            assert_eq!(calls.len(), p.workload.calls.len(), "{echo:?}");
            for (service, url) in p.workload.calls.iter().zip(&calls) {
                let listen = p.upstream(service);
                assert!(url.starts_with(&format!("http://{listen}/")), "{url}");
                let upstream = format!("{listen}={}:{APP_PORT}", host(service));
                assert!(agent.contains(&upstream), "{agent:?} lacks {upstream}");
            }
            assert!(agent.contains(&format!("version={}", p.workload.version)));
            let network = agent.iter().position(|a| a == "--network").unwrap();
            assert_eq!(agent[network + 1], p.workload.network.name);
            let locality = agent.iter().position(|a| a == "--locality").unwrap();
            assert_eq!(agent[locality + 1], p.workload.network.region);
            let cluster = echo.iter().position(|a| a == "--cluster").unwrap();
            assert_eq!(echo[cluster + 1], p.workload.network.cluster);
            assert_eq!(p.ip.octets()[1], p.workload.network.octet);
        }
        let pp = t.find("productpage", "v1").unwrap();
        assert_eq!(
            pp.call_urls(),
            [
                "http://127.10.10.1:19081/details/0",
                "http://127.10.10.1:19082/reviews/0"
            ]
        );
        assert!(t.find("reviews", "v1").unwrap().call_urls().is_empty());
        assert_eq!(
            t.find("reviews", "v3").unwrap().ip,
            Ipv4Addr::new(127, 20, 10, 5)
        );
        let client = t.client_agent_args(Path::new("/d"));
        assert!(client
            .contains(&"127.0.0.1:19080=productpage.default.svc.cluster.local:9080".to_string()));
    }

    #[test]
    fn listeners_are_distinct() {
        let l = topology().listeners();
        let mut sorted = l.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), l.len());
        // 8 workloads × (app + 5 agent ports), 5 upstreams, the client
        // agent, 2 gateways.
        assert_eq!(l.len(), 8 * 6 + 5 + 5 + 2 * 4);
    }

    #[test]
    fn expected_endpoints_follow_the_calls() {
        let e = topology().expected_endpoints();
        let pp: SocketAddr = "127.10.10.1:15000".parse().unwrap();
        let want = |admin: SocketAddr, cluster: &str, ip: [u8; 4]| {
            assert!(
                e.contains(&(admin, cluster.to_string(), Ipv4Addr::from(ip))),
                "{cluster} from {admin}: {e:?}"
            );
        };
        want(
            "127.10.10.100:15000".parse().unwrap(),
            "outbound|9080||productpage.default.svc.cluster.local",
            [127, 10, 10, 1],
        );
        want(
            pp,
            "outbound|9080||details.default.svc.cluster.local",
            [127, 10, 10, 2],
        );
        want(
            pp,
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            [127, 10, 10, 4],
        );
        // reviews v3 is on network-2: productpage reaches it at that
        // network's gateway, and v3 reaches ratings at network-1's.
        want(
            pp,
            "outbound|9080|v3|reviews.default.svc.cluster.local",
            [127, 20, 10, 200],
        );
        want(
            "127.20.10.5:15000".parse().unwrap(),
            "outbound|9080||ratings.default.svc.cluster.local",
            [127, 10, 10, 200],
        );
        want(
            "127.10.10.4:15000".parse().unwrap(),
            "outbound|9080||ratings.default.svc.cluster.local",
            [127, 10, 10, 6],
        );
        // cluster-2's reviews v1, behind its network's gateway too.
        want(
            pp,
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            [127, 20, 10, 200],
        );
        want(
            pp,
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            [127, 10, 10, 3],
        );
        // client→productpage, productpage→details+5 reviews, both v2s
        // and v3→ratings
        assert_eq!(e.len(), 1 + 6 + 3);
    }

    #[test]
    fn calls_cross_to_reviews_in_cluster_2_and_back_to_ratings() {
        let c: Vec<(&str, String)> = crossings().into_iter().map(|(n, d)| (n.name, d)).collect();
        let want = |n: &'static str, d: &str| (n, d.to_string());
        assert_eq!(
            c,
            [
                want("network-1", "ratings v1"),
                want("network-2", "reviews v1"),
                want("network-2", "reviews v2"),
                want("network-2", "reviews v3"),
            ]
        );
        let versions = |n| -> Vec<&str> { reviews_on(n).iter().map(|w| w.version).collect() };
        assert_eq!(versions(NETWORK_1), ["v1", "v2"]);
        assert_eq!(versions(NETWORK_2), ["v3", "v1", "v2"]);
        let names: Vec<String> = WORKLOADS.iter().map(ServiceVersion::name).collect();
        assert!(
            names.contains(&"reviews-v1-cluster-2".to_string()),
            "{names:?}"
        );
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn healthy_endpoints_in_clusters_text() {
        let text = "outbound|9080|v1|reviews.default.svc.cluster.local::127.0.10.3:15006::health_flags::healthy\n\
                    outbound|9080|v1|reviews.default.svc.cluster.local::127.0.10.3:15006::rq_active::0\n\
                    outbound|9080|v2|reviews.default.svc.cluster.local::127.0.10.4:15006::health_flags::/failed_outlier_check\n";
        let v1 = "outbound|9080|v1|reviews.default.svc.cluster.local";
        let v2 = "outbound|9080|v2|reviews.default.svc.cluster.local";
        assert!(has_healthy_endpoint(text, v1, Ipv4Addr::new(127, 0, 10, 3)));
        assert!(!has_healthy_endpoint(
            text,
            v1,
            Ipv4Addr::new(127, 0, 10, 4)
        ));
        assert!(!has_healthy_endpoint(
            text,
            v2,
            Ipv4Addr::new(127, 0, 10, 4)
        ));
        assert!(!has_healthy_endpoint("", v1, Ipv4Addr::new(127, 0, 10, 3)));
    }
}
