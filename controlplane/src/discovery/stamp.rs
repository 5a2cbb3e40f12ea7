//! Freshness stamps: every control-plane node writes, every few seconds,
//! that its cluster was heard from now (`Command::StampCluster`, through
//! Raft like any write). A node cut off from the leader cannot, so its
//! cluster's stamp ages on the other side; the push of every other node
//! marks that cluster's registered endpoints not ready once the stamp is
//! older than `--cluster-stale-after` (`push::local::stale_clusters`).
//! Raft's own metrics cannot say this: openraft keeps no per-node time of
//! last contact, and a learner's replication state is only on the leader.
use std::sync::Arc;

use crate::node::{now, Node};
use crate::push::local::stamp_every;
use crate::raft::state::Command;

/// Stamps this node's cluster forever, every [`stamp_every`] of the
/// node's `cluster_stale_after`. A node without a cluster record yet
/// (joining) waits for it.
pub async fn stamp_forever(node: Arc<Node>) {
    let every = stamp_every(node.settings.cluster_stale_after);
    let mut failing = false;
    loop {
        tokio::time::sleep(every).await;
        let Some(cluster) = node
            .read_state(|s| s.store.node_record(node.id))
            .map(|r| r.cluster)
        else {
            continue;
        };
        let cmd = Command::StampCluster {
            cluster: cluster.clone(),
            at: now(),
        };
        match node.write(cmd).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(%cluster, "stamping the cluster again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(%cluster, error = %e.message(),
                    "cannot stamp the cluster: other clusters will take its endpoints as stale");
            }
            Err(_) => {}
        }
    }
}
