//! Locality-aware balancing through a client agent in `r1/z1` to
//! plaintext endpoints on loopback that say they are elsewhere: failover
//! zone by zone and region by region as outlier detection ejects them, and
//! back; `distribute` weights; `failoverPriority` labels.
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use trellis_api::topology::Locality;
use trellis_testing::wait_for;

use super::*;

/// An endpoint's application, which answers 503 while `failing`.
struct Site {
    app: App,
    failing: Arc<AtomicBool>,
}

async fn site() -> Site {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let app = App::start(move |_, _| {
        let status = if f.load(Ordering::SeqCst) { 503 } else { 200 };
        (status, Duration::ZERO)
    })
    .await;
    Site { app, failing }
}

impl Site {
    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

/// reviews:9080 with one plaintext endpoint per site, at its locality and
/// with its `version` label, and `rule` (a DestinationRule, or nothing).
fn config(sites: &[(&Site, &str, &str)], rule: &str) -> String {
    let mut yaml = String::from(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
"#,
    );
    for (site, locality, version) in sites {
        yaml.push_str(&format!(
            "  - {{address: 127.0.0.1, locality: {locality}, ports: {{http: {}}}, \
             labels: {{app: reviews, version: {version}, security.istio.io/tlsMode: disabled}}}}\n",
            site.app.addr.port()
        ));
    }
    format!("{yaml}{rule}")
}

/// The client agent, in `r1/z1` with `version: v1`, and its upstream port
/// for reviews:9080.
async fn client(config: &str) -> (Agent, SocketAddr) {
    let setup = Setup {
        labels: BTreeMap::from([
            ("app".into(), "client".into()),
            ("version".into(), "v1".into()),
        ]),
        locality: Locality::parse("r1/z1").unwrap(),
        ..Setup::default()
    };
    let agent = Agent::start_with(&TestCa::new(), "client", config, 0, setup).await;
    let upstream = agent.upstream(REVIEWS, 9080).await;
    (agent, upstream)
}

/// How many requests each site answered while `n` requests were sent, one
/// after another; every one must succeed (a 503 is retried elsewhere).
async fn spread(upstream: SocketAddr, sites: &[&Site], n: usize) -> Vec<u64> {
    let before: Vec<u64> = sites.iter().map(|s| s.app.requests()).collect();
    for _ in 0..n {
        assert_eq!(send(upstream, get("/")).await.status, 200);
    }
    sites
        .iter()
        .zip(before)
        .map(|(s, b)| s.app.requests() - b)
        .collect()
}

/// Outlier detection that ejects on one 5xx for 2s, sweeping every 0.1s,
/// with locality balancing as Istio's default has it.
const FAILOVER: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 0.1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
"#;

#[tokio::test]
async fn traffic_fails_over_to_the_other_zone_then_region_and_comes_back() {
    let (near, zone, region) = (site().await, site().await, site().await);
    let sites = [&near, &zone, &region];
    let config = config(
        &[
            (&near, "r1/z1", "v1"),
            (&zone, "r1/z2", "v1"),
            (&region, "r2/z1", "v1"),
        ],
        FAILOVER,
    );
    let (_agent, up) = client(&config).await;
    assert_eq!(
        spread(up, &sites, 10).await,
        [10, 0, 0],
        "the caller's zone"
    );
    near.fail(true);
    // Its first 503 ejects it; the retry and the rest go to the other zone.
    assert_eq!(spread(up, &sites, 10).await, [1, 10, 0]);
    zone.fail(true);
    assert_eq!(
        spread(up, &sites, 10).await,
        [0, 1, 10],
        "then the other region"
    );
    near.fail(false);
    zone.fail(false);
    wait_for(
        Duration::from_secs(10),
        "the caller's zone to take requests again",
        || async { (spread(up, &sites, 1).await[0] == 1).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(spread(up, &sites, 10).await, [10, 0, 0]);
}

#[tokio::test]
async fn without_outlier_detection_every_locality_takes_requests() {
    let (near, far) = (site().await, site().await);
    let sites = [&near, &far];
    let config = config(&[(&near, "r1/z1", "v1"), (&far, "r2/z1", "v1")], "");
    let (_agent, up) = client(&config).await;
    let got = spread(up, &sites, 40).await;
    assert!(got.iter().all(|n| *n > 0), "{got:?}");
}

#[tokio::test]
async fn distribute_splits_the_callers_requests_by_its_rules_weights() {
    let (near, zone, region) = (site().await, site().await, site().await);
    let sites = [&near, &zone, &region];
    let rule = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        distribute:
        - {from: "r2/*", to: {"r2/*": 100}}
        - {from: "r1/z1/*", to: {"r1/z1/*": 75, "r1/z2/*": 25}}
"#;
    let config = config(
        &[
            (&near, "r1/z1", "v1"),
            (&zone, "r1/z2", "v1"),
            (&region, "r2/z1", "v1"),
        ],
        rule,
    );
    let (_agent, up) = client(&config).await;
    let got = spread(up, &sites, 200).await;
    // 150 expected of 200; the bounds are 4 standard deviations out.
    assert!((125..=175).contains(&got[0]), "{got:?}");
    assert_eq!(got[2], 0, "a locality the rule does not name: {got:?}");
}

#[tokio::test]
async fn failover_priority_prefers_endpoints_that_share_the_callers_labels() {
    let (near, same_version) = (site().await, site().await);
    let sites = [&near, &same_version];
    let rule = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 0.1s, baseEjectionTime: 30s, maxEjectionPercent: 100}
    loadBalancer:
      localityLbSetting:
        failoverPriority: [version]
"#;
    let config = config(
        &[(&near, "r1/z1", "v2"), (&same_version, "r2/z1", "v1")],
        rule,
    );
    let (_agent, up) = client(&config).await;
    assert_eq!(
        spread(up, &sites, 10).await,
        [0, 10],
        "the caller's version, far away"
    );
    same_version.fail(true);
    assert_eq!(
        spread(up, &sites, 10).await,
        [10, 1],
        "then the other version"
    );
}
