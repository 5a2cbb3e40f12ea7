//! Locality-aware load balancing: a DestinationRule's `localityLbSetting`
//! arranged as Istio arranges it for Envoy, and Envoy's choice among the
//! arrangement's priorities and localities as endpoints go unhealthy.
//!
//! [`Plan::new`] is computed once per config from where the calling
//! workload is ([`Place`]): endpoints ranked into priority levels (failover)
//! or grouped by locality with weights (`distribute`). [`Plan::choose`]
//! runs per request over which endpoints are healthy: Envoy's priority
//! load with its overprovisioning factor, then a locality by its weight
//! times its availability. Both are pure; the cluster supplies the health
//! and the random numbers.
use std::collections::BTreeMap;

use trellis_api::config::LocalityLbSetting;
use trellis_api::topology::{
    Locality, CLUSTER_LABEL, NETWORK_LABEL, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL,
};

/// Envoy's default overprovisioning factor (1.4), in percent: a priority
/// level or locality with 5 of 7 endpoints healthy still takes all of its
/// share; below that the rest spills over to the next level.
pub const OVERPROVISIONING: u64 = 140;

/// Where a workload is, as locality balancing compares it: the calling
/// workload or an endpoint.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    pub locality: &'a Locality,
    /// Empty: not said.
    pub network: &'a str,
    /// Empty: not said (an endpoint's `topology.istio.io/cluster` label
    /// then stands for it).
    pub cluster: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Place<'_> {
    /// The value of `key` as `failoverPriority` reads it: the topology
    /// labels (`topology.istio.io/network`, `.../cluster`,
    /// `topology.kubernetes.io/region`, `/zone`, `topology.istio.io/subzone`)
    /// from where the workload is, as Istio adds them to its labels; any
    /// other label from the workload's labels. Empty: absent.
    pub fn label(&self, key: &str) -> &str {
        let topology: &str = match key {
            NETWORK_LABEL => self.network,
            CLUSTER_LABEL => self.cluster,
            REGION_LABEL => self.locality.region.as_str(),
            ZONE_LABEL => self.locality.zone.as_str(),
            SUBZONE_LABEL => self.locality.subzone.as_str(),
            _ => "",
        };
        if topology.is_empty() {
            self.labels.get(key).map_or("", String::as_str)
        } else {
            topology
        }
    }
}

/// Endpoints that share a locality (or, without `distribute`, a priority
/// level) and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Envoy's locality weight; with one group per level it is not read.
    pub weight: u32,
    /// Indices into the cluster's endpoints.
    pub members: Vec<usize>,
}

/// A cluster's endpoints by priority level (0 first) and, within a level,
/// by weighted locality. Endpoints in no group take no traffic (a
/// `distribute` rule gives their locality no weight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub levels: Vec<Vec<Group>>,
    /// Every member of every group: the endpoints a cluster in panic mode
    /// spreads requests over.
    all: Vec<usize>,
}

impl Plan {
    /// The arrangement `setting` (the DestinationRule's, after subset and
    /// port overrides; `None`: Istio's mesh default, enabled) gives the
    /// `endpoints` for a caller at `origin`. `None` when it changes nothing:
    /// locality balancing disabled; failover without outlier detection
    /// (`outlier`), which Istio requires; a `distribute` rule whose `from`
    /// does not match the caller; or every endpoint in one level.
    pub fn new(
        setting: Option<&LocalityLbSetting>,
        outlier: bool,
        origin: &Place<'_>,
        endpoints: &[Place<'_>],
    ) -> Option<Plan> {
        let default = LocalityLbSetting::default();
        let setting = setting.unwrap_or(&default);
        if setting.enabled == Some(false) {
            return None;
        }
        let plan = if !setting.distribute.is_empty() {
            distribute(setting, origin, endpoints)?
        } else if outlier {
            failover(setting, origin, endpoints)
        } else {
            return None;
        };
        let trivial = plan.levels.len() <= 1
            && plan.levels.iter().all(|l| l.len() <= 1)
            && plan.all.len() == endpoints.len();
        (!trivial).then_some(plan)
    }

    fn from_levels(levels: Vec<Vec<Group>>) -> Plan {
        let mut all: Vec<usize> = levels
            .iter()
            .flatten()
            .flat_map(|g| g.members.iter().copied())
            .collect();
        all.sort_unstable();
        Plan { levels, all }
    }

    /// The endpoints that take traffic at all.
    pub fn all(&self) -> &[usize] {
        &self.all
    }

    /// Endpoint `i`'s priority level and its locality's weight; `None`:
    /// it takes no traffic.
    pub fn place_of(&self, i: usize) -> Option<(usize, u32)> {
        self.levels.iter().enumerate().find_map(|(p, groups)| {
            groups
                .iter()
                .find(|g| g.members.contains(&i))
                .map(|g| (p, g.weight))
        })
    }

    /// Envoy's priority load: the percent of requests each level takes
    /// when `healthy[i]` says which endpoints are healthy. A level's
    /// health is its healthy share × 1.4, at most 100; levels take what
    /// their health allows in order, the rest spilling to the next; when
    /// the healths sum to under 100 they are scaled up to carry it all.
    /// `None`: no level has a healthy endpoint (panic).
    pub fn loads(&self, healthy: &[bool]) -> Option<Vec<u32>> {
        let health: Vec<u64> = self
            .levels
            .iter()
            .map(|groups| {
                let members = groups.iter().flat_map(|g| g.members.iter());
                let total = members.clone().count() as u64;
                let up = members.filter(|&&i| healthy[i]).count() as u64;
                availability(up, total)
            })
            .collect();
        let total: u64 = health.iter().sum::<u64>().min(100);
        if total == 0 {
            return None;
        }
        let mut left = 100u64;
        let mut loads: Vec<u32> = health
            .iter()
            .map(|h| {
                let load = (h * 100 / total).min(left);
                left -= load;
                load as u32
            })
            .collect();
        // Rounding: what is left goes to the first level that has any
        // health, as in Envoy.
        if let Some(first) = health.iter().position(|h| *h > 0) {
            loads[first] += left as u32;
        }
        Some(loads)
    }

    /// The healthy endpoints a request picks among: a level by its load
    /// (`priority_roll` uniform in 0..100), then a locality of it by its
    /// weight × availability (`locality_roll` any number, taken modulo the
    /// sum). `None`: nothing healthy (panic).
    pub fn choose(
        &self,
        healthy: &[bool],
        priority_roll: u32,
        locality_roll: u64,
    ) -> Option<Vec<usize>> {
        let loads = self.loads(healthy)?;
        let mut at = priority_roll % 100;
        let level = loads
            .iter()
            .position(|&l| {
                if at < l {
                    true
                } else {
                    at -= l;
                    false
                }
            })
            .or_else(|| loads.iter().rposition(|&l| l > 0))?;
        let groups = &self.levels[level];
        let effective: Vec<u64> = groups
            .iter()
            .map(|g| {
                let up = g.members.iter().filter(|&&i| healthy[i]).count() as u64;
                u64::from(g.weight) * availability(up, g.members.len() as u64)
            })
            .collect();
        let sum: u64 = effective.iter().sum();
        if sum == 0 {
            return None;
        }
        let mut at = locality_roll % sum;
        let group = effective.iter().position(|&w| {
            if at < w {
                true
            } else {
                at -= w;
                false
            }
        })?;
        Some(
            groups[group]
                .members
                .iter()
                .copied()
                .filter(|&i| healthy[i])
                .collect(),
        )
    }

    /// Where a retry goes when the only endpoint [`Plan::choose`] offered
    /// is `exclude`, the one that failed: the healthy endpoints of the
    /// first level that has one besides it (empty: none has).
    pub fn instead_of(&self, healthy: &[bool], exclude: usize) -> Vec<usize> {
        self.levels
            .iter()
            .map(|groups| {
                groups
                    .iter()
                    .flat_map(|g| g.members.iter().copied())
                    .filter(|&i| i != exclude && healthy[i])
                    .collect::<Vec<_>>()
            })
            .find(|l| !l.is_empty())
            .unwrap_or_default()
    }
}

/// Envoy's availability of `up` healthy endpoints of `total`, in percent:
/// the healthy share × the overprovisioning factor, at most 100.
fn availability(up: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    (up * OVERPROVISIONING / total).min(100)
}

/// Istio's failover order of an endpoint at `to` for a caller at `from`:
/// 0 the same region, zone and subzone; 1 the same zone; 2 the same
/// region; 3 another region (with `failover` rules for the caller's
/// region: 3 the region they name, 4 any other).
pub fn locality_rank(from: &Locality, to: &Locality, setting: &LocalityLbSetting) -> u32 {
    if from.region == to.region {
        return match (from.zone == to.zone, from.subzone == to.subzone) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
    }
    match setting.failover.iter().find(|f| f.from == from.region) {
        Some(f) if f.to != to.region => 4,
        _ => 3,
    }
}

/// Istio's `failoverPriority` rank of `endpoint` for a caller at `origin`:
/// 0 when every label matches, else the number of labels from the first
/// that does not match to the end. A label written `key=value` matches
/// endpoints whose `key` is `value` rather than the caller's.
pub fn label_rank(origin: &Place<'_>, endpoint: &Place<'_>, labels: &[String]) -> u32 {
    labels
        .iter()
        .position(|l| {
            let (key, want) = match l.split_once('=') {
                Some((k, v)) => (k, v),
                None => (l.as_str(), origin.label(l)),
            };
            endpoint.label(key) != want
        })
        .map_or(0, |j| (labels.len() - j) as u32)
}

/// Priority levels by failover: by `failoverPriority` labels when given
/// (then, with `failover` rules too, by locality within each label rank),
/// else by locality; ranks that no endpoint has are skipped, as Istio
/// compacts them.
fn failover(setting: &LocalityLbSetting, origin: &Place<'_>, endpoints: &[Place<'_>]) -> Plan {
    let by_labels = !setting.failover_priority.is_empty();
    let mut ranks: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        let label = if by_labels {
            label_rank(origin, e, &setting.failover_priority)
        } else {
            0
        };
        let locality = if !by_labels || !setting.failover.is_empty() {
            locality_rank(origin.locality, e.locality, setting)
        } else {
            0
        };
        ranks.entry((label, locality)).or_default().push(i);
    }
    Plan::from_levels(
        ranks
            .into_values()
            .map(|members| vec![Group { weight: 1, members }])
            .collect(),
    )
}

/// Istio's match of a locality against a rule's `region/zone/subzone`,
/// where `*` matches anything and a missing zone or subzone too.
pub fn locality_matches(l: &Locality, rule: &str) -> bool {
    let mut parts = rule.splitn(3, '/');
    let region = parts.next().unwrap_or_default();
    let zone = parts.next().unwrap_or_default();
    let subzone = parts.next().unwrap_or_default();
    let part = |rule: &str, have: &str, may_omit: bool| {
        rule == "*" || rule == have || (may_omit && rule.is_empty())
    };
    part(region, &l.region, false) && part(zone, &l.zone, true) && part(subzone, &l.subzone, true)
}

/// One level of localities weighted by the first `distribute` rule whose
/// `from` matches the caller: each `to` (in sorted order) takes the
/// localities it matches that no earlier one took, its weight shared among
/// them by their numbers of endpoints (rounded up, as Istio does); a
/// locality no `to` takes gets no traffic. `None`: no rule is the
/// caller's.
fn distribute(
    setting: &LocalityLbSetting,
    origin: &Place<'_>,
    endpoints: &[Place<'_>],
) -> Option<Plan> {
    let rule = setting
        .distribute
        .iter()
        .find(|d| locality_matches(origin.locality, &d.from))?;
    let mut localities: BTreeMap<&Locality, Vec<usize>> = BTreeMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        localities.entry(e.locality).or_default().push(i);
    }
    let mut groups = Vec::new();
    for (to, &weight) in &rule.to {
        let taken: Vec<&Locality> = localities
            .keys()
            .copied()
            .filter(|l| locality_matches(l, to))
            .collect();
        let sizes: Vec<(&Locality, u64)> = taken
            .iter()
            .map(|l| (*l, localities[l].len() as u64))
            .collect();
        let total: u64 = sizes.iter().map(|(_, n)| n).sum();
        for (l, own) in sizes {
            let members = localities.remove(l).unwrap_or_default();
            groups.push(Group {
                weight: u32::try_from((u64::from(weight) * own).div_ceil(total))
                    .unwrap_or(u32::MAX),
                members,
            });
        }
    }
    groups.retain(|g| g.weight > 0);
    Some(Plan::from_levels(vec![groups]))
}

#[cfg(test)]
mod tests;
