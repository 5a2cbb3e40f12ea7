//! The control plane as users run it: real processes on loopback, real
//! mTLS, real disks. Each test starts its own cluster.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_api::v1::{Empty, GetRequest, PutRequest};
use trellis_e2e::{wait_for, Cluster};

async fn put(c: &Cluster, node: u64, key: &str, value: &str) -> anyhow::Result<u64> {
    let mut a = c.admin(node).await?;
    Ok(a.put(PutRequest {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    })
    .await?
    .into_inner()
    .index)
}

async fn get_local(c: &Cluster, node: u64, key: &str) -> Option<Vec<u8>> {
    let mut a = c.admin(node).await.ok()?;
    let r = a
        .get(GetRequest {
            key: key.into(),
            linearizable: false,
        })
        .await
        .ok()?
        .into_inner();
    r.found.then_some(r.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_readable_on_every_node() -> anyhow::Result<()> {
    let c = Cluster::start(3, &[]).await?;
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    assert_eq!(ids.len(), 3);
    for &w in &ids {
        put(&c, w, &format!("via/{w}"), &format!("v{w}")).await?;
    }
    for &r in &ids {
        for &w in &ids {
            let key = format!("via/{w}");
            let want = format!("v{w}").into_bytes();
            wait_for(
                Duration::from_secs(5),
                &format!("{key} on node {r}"),
                || async {
                    (get_local(&c, r, &key).await.as_deref() == Some(&want[..])).then_some(())
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// A client writes continuously, through every node in turn, while the
/// leader is killed: a new leader takes writes within 3 s, no
/// acknowledged write is lost, and the old leader, restarted, follows the
/// new one and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_no_acknowledged_write_is_lost() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let leader = c.leader().await.expect("a leader");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let last_ack = Arc::new(Mutex::new(Instant::now()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let survivors: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    let clients = {
        let mut v = Vec::new();
        for &id in &ids {
            v.push((id, c.admin(id).await?));
        }
        v
    };
    let writer = {
        let acked = acked.clone();
        let last_ack = last_ack.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut clients = clients;
            let mut i = 0u64;
            let mut gaps = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (_, client) = &mut clients[(i as usize) % 3];
                let key = format!("w/{i:06}");
                let res = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.put(PutRequest {
                        key: key.clone(),
                        value: vec![b'x'; 256],
                    }),
                )
                .await;
                if let Ok(Ok(_)) = res {
                    let now = Instant::now();
                    let mut last = last_ack.lock().unwrap();
                    gaps.push(now - *last);
                    *last = now;
                    acked.lock().unwrap().insert(key);
                }
                i += 1;
            }
            gaps
        })
    };
    // The leader is killed in the middle of steady writing.
    wait_for(
        Duration::from_secs(10),
        "20 writes acknowledged",
        || async { (acked.lock().unwrap().len() >= 20).then_some(()) },
    )
    .await?;
    let killed_at = Instant::now();
    c.kill(leader);
    // Wait for writes to resume after the kill.
    let resumed = wait_for(
        Duration::from_secs(10),
        "writes after killing the leader",
        || async {
            let l = *last_ack.lock().unwrap();
            (l > killed_at).then_some(l - killed_at)
        },
    )
    .await?;
    // Writes go on under the new leader: those count as well.
    let at_resume = acked.lock().unwrap().len();
    wait_for(
        Duration::from_secs(10),
        "10 writes acknowledged by the new leader",
        || async { (acked.lock().unwrap().len() >= at_resume + 10).then_some(()) },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await?;
    eprintln!("writes resumed {resumed:?} after kill -9 of the leader");
    assert!(
        resumed < Duration::from_secs(3),
        "a new leader took {resumed:?} to accept writes (limit 3 s)"
    );
    let new_leader = c.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);

    // No acknowledged write is missing, read linearizably on the survivors.
    let acked: Vec<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(
        acked.len() > 20,
        "only {} writes were acknowledged",
        acked.len()
    );
    for &s in &survivors {
        let mut a = c.admin(s).await?;
        for key in &acked {
            let r = a
                .get(GetRequest {
                    key: key.clone(),
                    linearizable: true,
                })
                .await?
                .into_inner();
            assert!(r.found, "acknowledged write {key} missing on node {s}");
        }
    }

    // The old leader restarts, rejoins as a follower and converges.
    c.restart(leader).await?;
    for key in &acked {
        wait_for(
            Duration::from_secs(10),
            &format!("{key} on restarted node {leader}"),
            || async { get_local(&c, leader, key).await.map(|_| ()) },
        )
        .await?;
    }
    let members = c.members().await?;
    let old = members
        .iter()
        .find(|m| m.node_id == leader)
        .expect("old leader is a member");
    assert!(
        !old.leader,
        "the restarted node should follow the new leader"
    );
    let applied: Vec<Option<u64>> = members.iter().map(|m| m.last_applied_index).collect();
    wait_for(
        Duration::from_secs(10),
        "all nodes at the same applied index",
        || async {
            let m = c.members().await.ok()?;
            let idx: BTreeSet<Option<u64>> = m.iter().map(|m| m.last_applied_index).collect();
            (idx.len() == 1 && !idx.contains(&None)).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; last seen {applied:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_roles_and_remove_works_online() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, &[]).await?;
    let learner = c.join(true).await?;
    let out = c.cli(&["controlplane", "members", "-o", "json"])?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(rows.len(), 4, "{out}");
    let role = |id: u64| {
        rows.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["role"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(role(learner).as_deref(), Some("learner"));
    assert_eq!(rows.iter().filter(|r| r["role"] == "voter").count(), 3);
    assert_eq!(rows.iter().filter(|r| r["leader"] == true).count(), 1);

    // Remove a voter that is not the leader, online.
    let leader = c.leader().await.expect("leader");
    let victim = c
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|&i| i != leader && i != learner)
        .unwrap();
    c.cli(&["controlplane", "remove", &victim.to_string()])?;
    let m = c.members().await?;
    assert!(
        m.iter().all(|m| m.node_id != victim),
        "node {victim} still listed"
    );
    // The cluster keeps taking writes with the remaining voters.
    put(&c, leader, "after/remove", "ok").await?;
    let mut a = c.admin(leader).await?;
    assert_eq!(a.members(Empty {}).await?.into_inner().members.len(), 3);
    Ok(())
}

/// The whole cluster is killed with SIGKILL and restarted: every node gets
/// its state back from its latest snapshot plus the log after it (the state
/// is kept in memory, not written anywhere else), so each serves every
/// acknowledged write from its own replica again, those before the last
/// snapshot and those after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_killed_restarts_from_snapshot_and_log() -> anyhow::Result<()> {
    // Small segments and few entries kept, so the log below the snapshots
    // is really purged and only the snapshot holds the first writes.
    let mut c = Cluster::start(
        3,
        &[
            "--snapshot-every",
            "200",
            "--keep-logs",
            "20",
            "--wal-segment-bytes",
            "4096",
        ],
    )
    .await?;
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    // 450 writes: at least two snapshots on every node, and a tail after
    // the last one that only the log holds.
    let mut a = c.admin(ids[0]).await?;
    let mut last = 0;
    for i in 0..450 {
        last = a
            .put(PutRequest {
                key: format!("r/{i:04}"),
                value: format!("v{i}").into_bytes(),
            })
            .await?
            .into_inner()
            .index;
    }
    wait_for(
        Duration::from_secs(10),
        "every node applied the last write",
        || async {
            let m = c.members().await.ok()?;
            m.iter()
                .all(|m| m.last_applied_index >= Some(last))
                .then_some(())
        },
    )
    .await?;
    for &id in &ids {
        let dir = &c.node(id).dir;
        let snap = dir.join("snapshot.bin");
        assert!(
            snap.exists(),
            "node {id} took no snapshot ({})",
            snap.display()
        );
        // Segments are named by their first index.
        let first = std::fs::read_dir(dir.join("wal"))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".wal")?
                    .parse::<u64>()
                    .ok()
            })
            .min();
        assert!(
            first.is_some_and(|f| f > 100),
            "node {id}: the log still starts at {first:?}, it was not purged"
        );
    }
    for &id in &ids {
        c.kill(id);
    }
    for &id in &ids {
        c.restart(id).await?;
    }
    for &id in &ids {
        c.wait_writable(id).await?;
    }
    for &id in &ids {
        for i in [0, 199, 200, 401, 449] {
            let key = format!("r/{i:04}");
            let want = format!("v{i}").into_bytes();
            wait_for(
                Duration::from_secs(10),
                &format!("{key} on node {id} after the restart"),
                || async {
                    (get_local(&c, id, &key).await.as_deref() == Some(&want[..])).then_some(())
                },
            )
            .await?;
        }
    }
    // And nothing in between is missing, read from the restarted replicas.
    for &id in &ids {
        let mut a = c.admin(id).await?;
        for i in 0..450 {
            let r = a
                .get(GetRequest {
                    key: format!("r/{i:04}"),
                    linearizable: false,
                })
                .await?
                .into_inner();
            assert!(r.found, "r/{i:04} missing on node {id} after the restart");
        }
    }
    Ok(())
}

/// One request on its own connection, as raw bytes; the whole answer.
async fn raw_http(addr: &str, request: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await?;
    // A server that answers before reading the whole request (431) resets
    // the connection after its answer: the answer is what counts.
    if answer.is_empty() {
        read?;
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n").into_bytes()
}

/// `--http-listen`: `/ready` and `/metrics` over plain HTTP, the node's
/// Raft facts in Prometheus' format; what is not a probe or a scrape gets
/// a 4xx and the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_serves_ready_and_metrics_and_refuses_the_rest() -> anyhow::Result<()> {
    let http = format!("127.0.0.1:{}", trellis_e2e::free_port());
    let c = Cluster::start(1, &["--http-listen", &http]).await?;
    put(&c, 1, "some/key", "v").await?;

    let ready = raw_http(&http, &get("/ready")).await?;
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
    assert!(ready.ends_with("\r\n\r\nready\n"), "{ready}");

    let metrics = wait_for(Duration::from_secs(5), "the write in /metrics", || async {
        let m = raw_http(&http, &get("/metrics")).await.ok()?;
        let applied: u64 = m
            .lines()
            .find_map(|l| {
                l.strip_prefix("trellis_controlplane_raft_last_applied_index{node=\"1\"} ")
            })?
            .parse()
            .ok()?;
        (applied >= 2).then_some(m)
    })
    .await?;
    assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
    assert!(
        metrics.contains("content-type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    for line in [
        "trellis_controlplane_ready{node=\"1\"} 1",
        "trellis_controlplane_raft_is_leader{node=\"1\"} 1",
        "trellis_controlplane_raft_leader{node=\"1\"} 1",
        "trellis_controlplane_connected_agents{node=\"1\"} 0",
        "trellis_controlplane_kubernetes_discovery_writes_total{node=\"1\"} 0",
        "# TYPE trellis_controlplane_raft_term gauge",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }

    let post =
        b"POST /ready HTTP/1.1\r\nHost: cp\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    let status = |r: &str| r.lines().next().unwrap_or_default().to_string();
    for (what, request, want) in [
        ("a POST", post.to_vec(), "HTTP/1.1 405 Method Not Allowed"),
        ("another path", get("/debug"), "HTTP/1.1 404 Not Found"),
        (
            "not HTTP",
            b"HELLO THERE\r\n\r\n".to_vec(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "a 20 KiB header",
            format!(
                "GET /ready HTTP/1.1\r\nHost: cp\r\nX-Big: {}\r\n\r\n",
                "a".repeat(20 << 10)
            )
            .into_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
    ] {
        let answer = raw_http(&http, &request).await?;
        assert_eq!(status(&answer), want, "{what}: {answer}");
    }
    // None of it harmed the node.
    let again = raw_http(&http, &get("/ready")).await?;
    assert_eq!(status(&again), "HTTP/1.1 200 OK");
    Ok(())
}
