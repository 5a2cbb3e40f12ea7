//! A far-behind node catches up through a snapshot; learners never count
//! toward a quorum.
use std::time::Duration;

use trellis_api::v1::{GetRequest, PutRequest};
use trellis_e2e::{wait_for, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_after_10000_writes_and_catches_up_by_snapshot() -> anyhow::Result<()> {
    // Snapshot every 60 entries keeping 60 below it, so the log the 4th
    // node would need has long been compacted away when it joins (the
    // leader gathers concurrent writes into one entry, up to one per client
    // here: at least 625 entries); small log segments, so that compaction
    // shows on disk.
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-every",
            "60",
            "--keep-logs",
            "60",
            "--wal-segment-bytes",
            "65536",
        ],
    )
    .await?;
    let leader = c.leader().await.expect("leader");
    const WRITES: usize = 10_000;
    const CLIENTS: usize = 16;
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let mut client = c.admin(leader).await?;
        tasks.push(tokio::spawn(async move {
            for i in (t..WRITES).step_by(CLIENTS) {
                client
                    .put(PutRequest {
                        key: format!("bulk/{i:05}"),
                        value: vec![b'v'; 256],
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }

    // The log on disk stays bounded: about two snapshot intervals of
    // entries, not all 10,000 writes (which would take some 50 segments).
    let wal = c.node(leader).dir.join("wal");
    let segments: Vec<u64> = std::fs::read_dir(&wal)?
        .filter_map(|e| e.ok()?.metadata().ok().map(|m| m.len()))
        .collect();
    let bytes: u64 = segments.iter().sum();
    assert!(
        segments.len() <= 16 && bytes < 1_200_000,
        "the leader's log was not compacted: {} segments, {bytes} bytes",
        segments.len()
    );

    let id = c.join(false).await?;
    // Every write is on the new node, read from its own replica.
    let mut a = c.admin(id).await?;
    // A snapshot of 10,000 writes, sent, installed and then the log after
    // it: a few seconds on a quiet machine; 30 s was too short on a busy
    // one (two cores shared with builds).
    wait_for(
        Duration::from_secs(90),
        "the last write on the new node",
        || {
            let mut a = a.clone();
            async move {
                let r = a
                    .get(GetRequest {
                        key: format!("bulk/{:05}", WRITES - 1),
                        linearizable: false,
                    })
                    .await
                    .ok()?
                    .into_inner();
                r.found.then_some(())
            }
        },
    )
    .await?;
    for i in (0..WRITES).step_by(97) {
        let r = a
            .get(GetRequest {
                key: format!("bulk/{i:05}"),
                linearizable: false,
            })
            .await?
            .into_inner();
        assert!(r.found, "bulk/{i:05} missing on node {id}");
    }
    let out = c.node(id).output();
    assert!(
        out.contains("installed snapshot from the leader"),
        "node {id} caught up without a snapshot:\n{out}"
    );
    // It is a voter and the cluster takes writes with 4 voters.
    let members = c.members().await?;
    let me = members.iter().find(|m| m.node_id == id).expect("member");
    assert_eq!(me.role, "voter");
    let mut l = c.admin(leader).await?;
    l.put(PutRequest {
        key: "after/join".into(),
        value: b"1".to_vec(),
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_not_counted_in_the_quorum() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let learner = c.join(true).await?;
    let voters: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&i| i != learner)
        .collect();
    // Keep one voter and the learner: two live processes, but only one
    // voter of three, so no leader may be elected.
    let keep = voters[0];
    for &v in &voters[1..] {
        c.kill(v);
    }
    // Not synchronisation: a window of several election timeouts in which
    // a leader would be elected, were the learner counted; the writes
    // below then have 8 s each to (wrongly) commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [keep, learner] {
        let mut a = c.admin(id).await?;
        let r = tokio::time::timeout(
            Duration::from_secs(8),
            a.put(PutRequest {
                key: "no/quorum".into(),
                value: b"x".to_vec(),
            }),
        )
        .await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "a write committed through node {id} without a quorum of voters"
        );
    }
    // Bring a voter back: a quorum again, and the learner is still a learner.
    c.restart(voters[1]).await?;
    c.wait_writable(keep).await?;
    let m = c.members().await?;
    assert_eq!(
        m.iter()
            .find(|m| m.node_id == learner)
            .map(|m| m.role.as_str()),
        Some("learner")
    );
    Ok(())
}
