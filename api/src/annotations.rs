//! Annotations the control plane adds to the resources it pushes, which
//! agents read: the one place both sides take their names from.

/// On a ServiceEntry without `addresses`: `HOST=IP,...`, the virtual IPs
/// the control plane allocated to its hosts (from 240.240.0.0/16).
pub const ADDRESSES: &str = "trellis.io/addresses";

/// On a registered WorkloadEntry: `ready`, or why the workload takes no
/// traffic (`not probed yet`, `unhealthy: ...`).
pub const HEALTH: &str = "trellis.io/health";

/// On a registered WorkloadEntry, [`HEALTH`] also says `stale: ...` when
/// the cluster it registered through has not been heard from for longer
/// than the control plane's `--cluster-stale-after`.
///
/// The value of [`HEALTH`] of a workload that takes traffic.
pub const READY: &str = "ready";

/// On a registered WorkloadEntry: the WorkloadGroup it registered in.
pub const WORKLOAD_GROUP: &str = "trellis.io/workload-group";

/// On a WorkloadEntry on another network than the agent it is pushed to:
/// `IP:PORT` of that network's east-west gateway, where the agent connects
/// instead (with the SNI and the identity of the endpoint, as if
/// directly). The entry's `address` is then the gateway's IP.
pub const GATEWAY: &str = "trellis.io/gateway";
/// On a registered WorkloadEntry the control-plane node serving it holds
/// only locally (it registered while the node could not reach the Raft
/// leader): why, until the registration is committed.
pub const LOCAL_ONLY: &str = "trellis.io/local-only";
/// On a resource the control plane did not get from `trellis apply`:
/// where it came from, e.g. `kubernetes/CLUSTER` for the Services and
/// pods that cluster's discovery wrote.
pub const SOURCE: &str = "trellis.io/source";
/// On a resource a cluster's Istio custom resource became: its
/// `metadata.creationTimestamp` there (RFC 3339, UTC). When clusters hold
/// the same resource, the oldest is in force.
pub const CREATED: &str = "trellis.io/created";
/// On a copy of a resource that another copy of the same kind, namespace
/// and name shadows (`trellis get` shows it; agents never get it): the
/// source of the copy in force, `trellis` or `kubernetes/CLUSTER`.
pub const SHADOWED_BY: &str = "trellis.io/shadowed-by";
