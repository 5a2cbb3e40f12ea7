use super::*;
use trellis_api::config::{LocalityDistribute, LocalityFailover};

fn loc(s: &str) -> Locality {
    Locality::parse(s).unwrap()
}

/// Where things are in these tests: no network, cluster or labels unless
/// the test sets them.
struct At {
    locality: Locality,
    network: String,
    labels: BTreeMap<String, String>,
}

fn at(locality: &str) -> At {
    At {
        locality: loc(locality),
        network: String::new(),
        labels: BTreeMap::new(),
    }
}

impl At {
    fn place(&self) -> Place<'_> {
        Place {
            locality: &self.locality,
            network: &self.network,
            cluster: "",
            labels: &self.labels,
        }
    }
}

fn plan(setting: &LocalityLbSetting, origin: &At, endpoints: &[At]) -> Option<Plan> {
    let places: Vec<Place<'_>> = endpoints.iter().map(At::place).collect();
    Plan::new(Some(setting), true, &origin.place(), &places)
}

fn members(plan: &Plan) -> Vec<Vec<Vec<usize>>> {
    plan.levels
        .iter()
        .map(|l| l.iter().map(|g| g.members.clone()).collect())
        .collect()
}

#[test]
fn localities_rank_as_istios_failover_order() {
    let me = loc("r1/z1/s1");
    let none = LocalityLbSetting::default();
    let to_r2 = LocalityLbSetting {
        failover: vec![LocalityFailover {
            from: "r1".into(),
            to: "r2".into(),
        }],
        ..Default::default()
    };
    let other_rule = LocalityLbSetting {
        failover: vec![LocalityFailover {
            from: "r9".into(),
            to: "r3".into(),
        }],
        ..Default::default()
    };
    let cases = [
        ("r1/z1/s1", 0, 0),
        ("r1/z1/s2", 1, 1),
        ("r1/z1", 1, 1),
        ("r1/z2/s1", 2, 2),
        ("r2/z1/s1", 3, 3),
        ("r3/z1", 3, 4),
        ("", 3, 4),
    ];
    for (there, plain, with_failover) in cases {
        assert_eq!(locality_rank(&me, &loc(there), &none), plain, "{there}");
        assert_eq!(
            locality_rank(&me, &loc(there), &to_r2),
            with_failover,
            "{there} with failover r1 -> r2"
        );
        assert_eq!(
            locality_rank(&me, &loc(there), &other_rule),
            plain,
            "{there}: a rule for another region changes nothing"
        );
    }
}

#[test]
fn levels_are_the_ranks_endpoints_have_in_order() {
    let me = at("r1/z1");
    let eps = [at("r2/z9"), at("r1/z1"), at("r1/z2"), at("r1/z1"), at("r3")];
    let p = plan(&LocalityLbSetting::default(), &me, &eps).unwrap();
    // Same zone (0), other zone (2), other regions (3); no endpoint has
    // rank 1, which is skipped.
    assert_eq!(
        members(&p),
        [vec![vec![1, 3]], vec![vec![2]], vec![vec![0, 4]]]
    );
    assert_eq!(p.place_of(2), Some((1, 1)));
    assert_eq!(p.all(), [0, 1, 2, 3, 4]);
}

#[test]
fn a_plan_that_changes_nothing_is_none() {
    let me = at("r1/z1");
    let spread = [at("r1/z1"), at("r2/z1")];
    let places: Vec<Place<'_>> = spread.iter().map(At::place).collect();
    let on = LocalityLbSetting::default();
    assert!(
        Plan::new(None, true, &me.place(), &places).is_some(),
        "on by default"
    );
    assert!(
        Plan::new(Some(&on), false, &me.place(), &places).is_none(),
        "failover needs outlier detection"
    );
    let off = LocalityLbSetting {
        enabled: Some(false),
        ..Default::default()
    };
    assert!(Plan::new(Some(&off), true, &me.place(), &places).is_none());
    let together = [at("r1/z1"), at("r1/z1")];
    assert!(plan(&on, &me, &together).is_none(), "one level");
    let elsewhere = LocalityLbSetting {
        distribute: vec![LocalityDistribute {
            from: "r2/*".into(),
            to: [("r1/*".to_string(), 100)].into(),
        }],
        ..Default::default()
    };
    assert!(
        plan(&elsewhere, &me, &spread).is_none(),
        "a distribute rule for callers elsewhere"
    );
    let on_without_outlier = LocalityLbSetting {
        distribute: vec![LocalityDistribute {
            from: "r1/z1".into(),
            to: [("r1/*".to_string(), 100)].into(),
        }],
        ..Default::default()
    };
    let places: Vec<Place<'_>> = spread.iter().map(At::place).collect();
    assert!(
        Plan::new(Some(&on_without_outlier), false, &me.place(), &places).is_some(),
        "distribute does not need outlier detection"
    );
}

/// Two levels of 100 endpoints each, with `p0` and `p1` of them healthy.
fn two_levels(p0: usize, p1: usize) -> (Plan, Vec<bool>) {
    let plan = Plan::from_levels(vec![
        vec![Group {
            weight: 1,
            members: (0..100).collect(),
        }],
        vec![Group {
            weight: 1,
            members: (100..200).collect(),
        }],
    ]);
    let healthy = (0..200)
        .map(|i| if i < 100 { i < p0 } else { i - 100 < p1 })
        .collect();
    (plan, healthy)
}

#[test]
fn priority_load_spills_over_as_envoy_computes_it() {
    // Envoy's table (overprovisioning factor 1.4): the healthy percent of
    // each level → the percent of requests it takes.
    let cases = [
        ((100, 100), [100, 0]),
        ((72, 100), [100, 0]),
        ((71, 100), [99, 1]),
        ((50, 100), [70, 30]),
        ((25, 100), [35, 65]),
        ((0, 100), [0, 100]),
        // Not enough health in all: scaled up to carry everything.
        ((20, 20), [50, 50]),
        ((0, 10), [0, 100]),
        ((10, 0), [100, 0]),
    ];
    for ((p0, p1), want) in cases {
        let (plan, healthy) = two_levels(p0, p1);
        assert_eq!(
            plan.loads(&healthy).unwrap(),
            want,
            "{p0}% and {p1}% healthy"
        );
    }
    let (plan, healthy) = two_levels(0, 0);
    assert_eq!(plan.loads(&healthy), None, "nothing healthy: panic");
}

#[test]
fn rounding_is_left_with_the_first_healthy_level() {
    let plan = Plan::from_levels(
        (0..3)
            .map(|l| {
                vec![Group {
                    weight: 1,
                    members: (l * 10..l * 10 + 10).collect(),
                }]
            })
            .collect(),
    );
    // 2 of 10 healthy in each: 28% health each, 84 in all: 33 each, and
    // the 1 left over to the first.
    let healthy: Vec<bool> = (0..30).map(|i| i % 10 < 2).collect();
    assert_eq!(plan.loads(&healthy).unwrap(), [34, 33, 33]);
}

#[test]
fn a_request_goes_to_the_healthy_endpoints_of_the_level_its_roll_lands_in() {
    let (plan, healthy) = two_levels(50, 100);
    let mut to_p0 = 0;
    for roll in 0..100 {
        let got = plan.choose(&healthy, roll, 0).unwrap();
        if got[0] < 100 {
            to_p0 += 1;
            assert_eq!(got, (0..50).collect::<Vec<_>>(), "only the healthy ones");
        } else {
            assert_eq!(got, (100..200).collect::<Vec<_>>());
        }
    }
    assert_eq!(to_p0, 70);
    let (plan, healthy) = two_levels(0, 0);
    assert_eq!(plan.choose(&healthy, 0, 0), None);
}

#[test]
fn a_retry_avoids_the_failed_endpoint_in_the_nearest_level_that_can() {
    let (plan, mut healthy) = two_levels(100, 100);
    let instead = plan.instead_of(&healthy, 3);
    assert_eq!(instead.len(), 99);
    assert!(!instead.contains(&3));
    for h in healthy.iter_mut().take(100) {
        *h = false;
    }
    healthy[3] = true;
    assert_eq!(plan.instead_of(&healthy, 3), (100..200).collect::<Vec<_>>());
}

fn distribute_from_z1(to: &[(&str, u32)]) -> LocalityLbSetting {
    LocalityLbSetting {
        distribute: vec![
            LocalityDistribute {
                from: "r9/*".into(),
                to: [("r9/*".to_string(), 100)].into(),
            },
            LocalityDistribute {
                from: "r1/z1/*".into(),
                to: to.iter().map(|(l, w)| (l.to_string(), *w)).collect(),
            },
        ],
        ..Default::default()
    }
}

#[test]
fn distribute_weights_the_localities_its_rule_names_and_drops_the_rest() {
    let me = at("r1/z1/s1");
    let eps = [at("r1/z1/s1"), at("r1/z2"), at("r1/z1/s1"), at("r2/z1")];
    let p = plan(
        &distribute_from_z1(&[("r1/z1/*", 80), ("r1/z2/*", 20)]),
        &me,
        &eps,
    )
    .unwrap();
    assert_eq!(
        p.levels,
        [vec![
            Group {
                weight: 80,
                members: vec![0, 2]
            },
            Group {
                weight: 20,
                members: vec![1]
            },
        ]]
    );
    assert_eq!(p.all(), [0, 1, 2], "r2 takes nothing");
    assert_eq!(p.place_of(3), None);
    // Every locality roll over the sum of effective weights: 80 to 20.
    let healthy = [true; 4];
    let sum = 100 * 100;
    let z1 = (0..sum)
        .filter(|&r| p.choose(&healthy, 0, r).unwrap() == [0, 2])
        .count();
    assert_eq!(z1, 8000);
    // z1 half healthy: availability 70%: 80 × 70 against 20 × 100.
    let half = [true, true, false, true];
    let z1 = (0..(80 * 70 + 20 * 100))
        .filter(|&r| p.choose(&half, 0, r).unwrap() == [0])
        .count();
    assert_eq!(z1, 80 * 70);
    // z1 all down: everything to z2.
    let down = [false, true, false, true];
    assert!((0..100).all(|r| p.choose(&down, 0, r).unwrap() == [1]));
}

#[test]
fn a_wildcard_to_shares_its_weight_by_endpoints_rounded_up() {
    let me = at("r1/z1");
    let eps = [at("r1/z1"), at("r1/z1"), at("r1/z2"), at("r2/z1")];
    let p = plan(&distribute_from_z1(&[("r1", 90), ("r2/*", 10)]), &me, &eps).unwrap();
    let weights: Vec<(u32, Vec<usize>)> = p.levels[0]
        .iter()
        .map(|g| (g.weight, g.members.clone()))
        .collect();
    assert_eq!(weights, [(60, vec![0, 1]), (30, vec![2]), (10, vec![3])]);
}

#[test]
fn failover_priority_ranks_by_the_labels_matched_in_order() {
    let mut me = at("r1/z1");
    me.network = "net-a".into();
    me.labels = [("version".to_string(), "v1".to_string())].into();
    let labels: Vec<String> = [NETWORK_LABEL, REGION_LABEL, "version"]
        .map(String::from)
        .to_vec();
    let ep = |network: &str, locality: &str, version: &str| {
        let mut a = at(locality);
        a.network = network.into();
        a.labels = [("version".to_string(), version.to_string())].into();
        a
    };
    let cases = [
        (ep("net-a", "r1/z2", "v1"), 0),
        (ep("net-a", "r1/z1", "v2"), 1),
        (ep("net-a", "r2/z1", "v1"), 2),
        (ep("net-b", "r1/z1", "v1"), 3),
    ];
    for (e, want) in &cases {
        assert_eq!(
            label_rank(&me.place(), &e.place(), &labels),
            *want,
            "{} {} {:?}",
            e.network,
            e.locality,
            e.labels
        );
    }
    // A label that is neither topology nor set reads as empty on both sides.
    assert_eq!(
        label_rank(&me.place(), &cases[0].0.place(), &["zone-group".into()]),
        0
    );
    // `key=value`: the value given, not the caller's.
    let pinned = ["version=v2".to_string()];
    assert_eq!(label_rank(&me.place(), &cases[1].0.place(), &pinned), 0);
    assert_eq!(label_rank(&me.place(), &cases[0].0.place(), &pinned), 1);
    // A network label on an endpoint with no network field stands for it.
    let mut labelled = at("r1/z1");
    labelled.labels = [(NETWORK_LABEL.to_string(), "net-a".to_string())].into();
    assert_eq!(label_rank(&me.place(), &labelled.place(), &labels[..1]), 0);

    let setting = LocalityLbSetting {
        failover_priority: labels.clone(),
        ..Default::default()
    };
    let eps: Vec<At> = cases.into_iter().rev().map(|(e, _)| e).collect();
    let p = plan(&setting, &me, &eps).unwrap();
    assert_eq!(
        members(&p),
        [vec![vec![3]], vec![vec![2]], vec![vec![1]], vec![vec![0]]]
    );
}

#[test]
fn failover_priority_with_failover_orders_by_locality_within_a_label_rank() {
    let me = at("r1/z1");
    let setting = LocalityLbSetting {
        failover_priority: vec![ZONE_LABEL.to_string()],
        failover: vec![LocalityFailover {
            from: "r1".into(),
            to: "r3".into(),
        }],
        ..Default::default()
    };
    let eps = [at("r2/z1"), at("r3/z1"), at("r1/z1"), at("r3/z2")];
    let p = plan(&setting, &me, &eps).unwrap();
    assert_eq!(
        members(&p),
        [vec![vec![2]], vec![vec![1]], vec![vec![0]], vec![vec![3]]]
    );
}

#[test]
fn distribute_rules_match_localities_with_wildcards() {
    let l = loc("r1/z1/s1");
    for (rule, want) in [
        ("r1/z1/s1", true),
        ("r1/z1/*", true),
        ("r1/*", true),
        ("r1", true),
        ("*", true),
        ("*/z1", true),
        ("r1/z2", false),
        ("r2/*", false),
        ("r1/z1/s2", false),
    ] {
        assert_eq!(locality_matches(&l, rule), want, "{rule}");
    }
}
