//! Config push through a real 3-node control plane to real agents on
//! loopback (no root): `trellis apply` of Istio resources, workloads that
//! register themselves through a WorkloadGroup (with a readiness probe),
//! weight changes observed within a second (an established connection
//! still served after them), invalid config refused whole, a NACK shown in
//! `trellis proxy-status`, failover of an agent's stream when its
//! control-plane node is killed, the grace period of a departed workload,
//! and an agent restarted while the whole control plane is down serving
//! from its cache; a workload with a probe that fails over to another node
//! keeping its health, and so its traffic; and the agents' DNS proxies
//! answering with the virtual IP the control plane allocated; and a
//! registered workload's own metrics labelled as its group says.
//!
//! Most tests change the config, or kill a node or an agent, which the
//! others would see: each of those starts its own [`Push`] (2-3 s: three
//! nodes, two workloads registered, three agents) on a loopback block of
//! its own. The tests that only read share one ([`fixture::shared`]).
mod fixture;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use fixture::{hit, proxy_status, registered, split, tally, write, Push, BASE, GRACE};
use hickory_proto::rr::RecordType;
use trellis_agent::dns::testing::{addresses, query};
use trellis_agent::dns::Transport;
use trellis_e2e::{upgrade, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_register_through_their_groups_and_get_the_traffic_routed_to_them(
) -> anyhow::Result<()> {
    let push = fixture::shared().await?;
    assert!(
        push.applied_base
            .contains("workloadgroup.networking.istio.io/reviews-v2 created"),
        "{}",
        push.applied_base
    );
    // Both registered through their groups, and are ready (v2 passed its
    // probe).
    let r = registered(&push.cp);
    assert!(r.len() == 2 && r.values().all(|h| h == "ready"), "{r:?}");
    assert_eq!(tally(&push.url(), 20), BTreeMap::from([("v1".into(), 20)]));
    Ok(())
}

/// A workload registered through its WorkloadGroup reports the group's
/// labels in its own metrics (`reporter="destination"`), as its callers
/// report them: `app` and `version` come from the group, not `unknown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_registered_through_its_group_reports_its_labels() -> anyhow::Result<()> {
    let push = fixture::shared().await?;
    assert_eq!(hit(&push.url()), "v1");
    let metrics = format!("http://{}:15020/stats/prometheus", push.v1_ip());
    let labels = [
        "reporter=\"destination\"",
        "destination_workload=\"reviews\"",
        "destination_app=\"reviews\"",
        "destination_version=\"v1\"",
        "source_app=\"client\"",
    ];
    wait_for(Duration::from_secs(5), "v1's own metrics", || async {
        let text = fixture::curl(&[&metrics]).1;
        text.lines()
            .any(|l| l.starts_with("istio_requests_total{") && labels.iter().all(|w| l.contains(w)))
            .then_some(())
    })
    .await?;
    Ok(())
}

/// A weight change is observed within a second of the apply; a connection
/// to v1 opened before it is still served after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_is_observed_within_a_second_and_open_connections_outlive_it(
) -> anyhow::Result<()> {
    let push = Push::start(&GRACE).await?;
    let url = push.url();
    let mut held = upgrade::open(&format!("{}:19080", push.client_ip()), "reviews")?;
    upgrade::ping(&mut held, b"before the push")?;

    push.apply("vs2.yaml", &split(0, 100))?;
    let applied = Instant::now();
    wait_for(Duration::from_secs(1), "the new split", || async {
        (hit(&url) == "v2").then_some(())
    })
    .await?;
    let took = applied.elapsed();
    assert_eq!(
        tally(&url, 20),
        BTreeMap::from([("v2".into(), 20)]),
        "after {took:?}"
    );
    eprintln!("weight change observed {took:?} after apply");
    upgrade::ping(&mut held, b"the established connection is still served")?;
    Ok(())
}

/// Invalid config is refused whole, with the field path; nothing changes,
/// not even the valid VirtualService applied with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_refused_whole_with_its_field_path_and_changes_nothing(
) -> anyhow::Result<()> {
    let push = fixture::shared().await?;
    let bad = write(
        &push.dir,
        "bad.yaml",
        &format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: broken}}\nspec:\n  host: reviews\n  trafficPolicy: {{loadBalancer: {{simple: FASTEST}}}}\n",
            split(0, 100)
        ),
    );
    let out = push
        .cp
        .cli_raw(&["apply", "-f", &bad.display().to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.yaml: document 2 (DestinationRule default/broken): spec.trafficPolicy.loadBalancer"),
        "{err}"
    );
    // Not synchronisation: a window in which a push of the refused split,
    // had there been one, would reach the client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tally(&push.url(), 10), BTreeMap::from([("v1".into(), 10)]));
    let stored = push.cp.cli(&["get", "vs", "reviews", "-o", "yaml"])?;
    assert!(
        stored.contains("weight: 100") && stored.contains("subset: v1"),
        "{stored}"
    );
    assert!(push.cp.cli_raw(&["get", "dr", "broken"])?.status.code() != Some(0));
    Ok(())
}

/// Every agent is listed in `proxy-status`, in sync, each at its own
/// address rather than the loopback one it connects from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_lists_every_agent_synced_at_its_own_address() -> anyhow::Result<()> {
    let push = fixture::shared().await?;
    let ps = wait_for(Duration::from_secs(5), "all agents synced", || async {
        let ps = proxy_status(&push.cp);
        (ps.len() == 3 && ps.values().all(|p| p["status"] == "SYNCED")).then_some(ps)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", proxy_status(&push.cp)))?;
    let v1_name = format!("reviews-v1-{}.default", push.v1_ip().replace('.', "-"));
    assert!(ps.keys().any(|k| k.starts_with(&v1_name)), "{ps:?}");
    let mut at: Vec<&str> = ps.values().filter_map(|p| p["address"].as_str()).collect();
    at.sort_unstable();
    assert_eq!(at, [push.client_ip(), push.v1_ip(), push.v2_ip()], "{ps:?}");
    Ok(())
}

/// The agents' DNS proxies answer the service's name with the virtual IP
/// the control plane allocated to it (its ServiceEntry has none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agents_dns_proxy_answers_with_the_virtual_ip_the_control_plane_allocated(
) -> anyhow::Result<()> {
    let push = fixture::shared().await?;
    let mut vips = Vec::new();
    for ip in [push.client_ip(), push.v1_ip()] {
        let server = format!("{ip}:15053").parse()?;
        let m = query(server, "reviews.default", RecordType::A, Transport::Udp).await?;
        vips.push(addresses(&m));
    }
    assert!(
        matches!(&vips[0][..], [IpAddr::V4(a)] if a.octets()[..2] == [240, 240]),
        "{vips:?}"
    );
    assert_eq!(vips[0], vips[1], "one allocation, seen by every agent");
    Ok(())
}

/// A policy the agent cannot enforce is refused (NACK), shown with its
/// reason; once it is gone the agent is in sync again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_agent_cannot_enforce_is_nacked_with_its_reason_until_removed(
) -> anyhow::Result<()> {
    let push = Push::start(&GRACE).await?;
    let authz = write(
        &push.dir,
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client}\nspec:\n  selector: {matchLabels: {app: client}}\n  action: DENY\n  rules: [{}]\n",
    );
    push.cp
        .cli(&["apply", "-f", &authz.display().to_string()])?;
    let client_name = wait_for(Duration::from_secs(5), "the client's NACK", || async {
        proxy_status(&push.cp).into_iter().find_map(|(name, p)| {
            let nack = p["last_nack"].as_str().unwrap_or("");
            (p["status"] == "NACKED" && nack.contains("AuthorizationPolicy default/deny-client"))
                .then_some(name)
        })
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}\n{}",
            proxy_status(&push.cp),
            push.client.output()
        )
    })?;
    assert!(client_name.starts_with("client-"), "{client_name}");
    assert!(push.client.output().contains("config refused (NACK)"));
    push.cp
        .cli(&["delete", "-f", &authz.display().to_string()])?;
    wait_for(
        Duration::from_secs(5),
        "the client synced again",
        || async { (proxy_status(&push.cp)[&client_name]["status"] == "SYNCED").then_some(()) },
    )
    .await?;
    Ok(())
}

/// An unready workload gets no traffic: with v2's probe failing, v2's
/// share of a 50/50 split is 503 (no healthy upstream); once the probe
/// passes again, v2 answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_workload_gets_no_traffic_until_its_probe_passes_again() -> anyhow::Result<()> {
    let push = Push::start(&GRACE).await?;
    let url = push.url();
    push.apply(
        "sick.yaml",
        &BASE.replace("path: /healthz", "path: /healthz?status=503"),
    )?;
    push.apply("half.yaml", &split(50, 50))?;
    wait_for(Duration::from_secs(10), "v2 unready", || async {
        registered(&push.cp)
            .values()
            .any(|h| h.starts_with("unhealthy"))
            .then_some(())
    })
    .await?;
    // The half split reached the client when v2 answers, and v2's health
    // when its half gets 503s.
    wait_for(
        Duration::from_secs(5),
        "the client without a healthy v2",
        || async { (hit(&url) == "status 503").then_some(()) },
    )
    .await?;
    // The split is a random roll per request: v1 answers its share, v2's
    // share is 503 (no healthy upstream), in whatever proportion 20 rolls
    // give (neither is empty but once in a million runs).
    let t = tally(&url, 20);
    let v1 = t.get("v1").copied().unwrap_or(0);
    let unavailable = t.get("status 503").copied().unwrap_or(0);
    assert!(
        v1 > 0 && unavailable > 0 && v1 + unavailable == 20,
        "v2's half has no healthy endpoint: {t:?}"
    );
    push.apply("base.yaml", BASE)?;
    wait_for(Duration::from_secs(10), "v2 ready again", || async {
        let t = tally(&url, 10);
        (t.get("v2").copied().unwrap_or(0) > 0 && !t.keys().any(|k| k.starts_with("status")))
            .then_some(())
    })
    .await?;
    Ok(())
}

/// A workload whose agent is gone is removed after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_workloads_entry_is_removed_after_the_grace_period() -> anyhow::Result<()> {
    let mut push = Push::start(&GRACE).await?;
    push.agent_v2.kill();
    wait_for(Duration::from_secs(10), "v2's entry removed", || async {
        let r = registered(&push.cp);
        (r.len() == 1 && !r.contains_key(&push.v2_entry())).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&push.cp)))?;
    Ok(())
}

/// Killing the node the client streams its config from: traffic goes on
/// throughout, the client moves to another node, and config pushed
/// through that node reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_is_killed_fails_over_serving_throughout() -> anyhow::Result<()> {
    let mut push = Push::start(&GRACE).await?;
    let url = push.url();
    let client_name = push.client_name()?;
    let node = proxy_status(&push.cp)[&client_name]["node"]
        .as_u64()
        .unwrap();
    push.cp.kill(node);
    // Traffic while the node is down and until the client has moved: at
    // least 20 requests, a poll apart.
    let mut served = 0;
    let moved = wait_for(
        Duration::from_secs(10),
        "the client on another node",
        || {
            assert_eq!(
                hit(&url),
                "v1",
                "traffic while the control plane node is down"
            );
            served += 1;
            let moved = proxy_status(&push.cp)
                .get(&client_name)
                .and_then(|p| p["node"].as_u64())
                .filter(|&n| n != node);
            let done = moved.filter(|_| served >= 20);
            async move { done }
        },
    )
    .await?;
    eprintln!("client moved from node {node} to node {moved} ({served} requests meanwhile)");
    push.apply("vs2.yaml", &split(0, 100))?;
    wait_for(
        Duration::from_secs(3),
        "an update through the new node",
        || async {
            (push.client.output().matches("config applied").count() > 0 && hit(&url) == "v2")
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

/// The whole control plane down, the client restarted: it serves from its
/// cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_restarted_with_the_control_plane_down_serves_from_its_cache() -> anyhow::Result<()>
{
    let mut push = Push::start(&GRACE).await?;
    for id in [1, 2, 3] {
        push.cp.kill(id);
    }
    push.restart_client().await?;
    let t = tally(&push.url(), 20);
    assert!(t.get("v1").copied().unwrap_or(0) > 0, "{t:?}");
    assert!(push.client.output().contains("serving the cached config"));
    Ok(())
}

/// A workload with a readiness probe whose node is killed registers on the
/// node it fails over to with the health it had. Its agent reports health
/// only when the probe's result changes, so an entry that started over as
/// "not probed yet" would stay out of the mesh for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_workload_fails_over_with_its_health() -> anyhow::Result<()> {
    let mut push = Push::start(&[]).await?;
    let url = push.url();
    push.apply("vs.yaml", &split(0, 100))?;
    let entry = push.v2_entry();
    let proxy = format!("{entry}.default");
    wait_for(
        Duration::from_secs(10),
        "v2 ready and answering",
        || async {
            (registered(&push.cp).get(&entry).map(String::as_str) == Some("ready")
                && hit(&url) == "v2")
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&push.cp)))?;

    let node = proxy_status(&push.cp)[&proxy]["node"].as_u64().unwrap();
    push.cp.kill(node);
    let moved = wait_for(
        Duration::from_secs(15),
        "v2's agent on another node",
        || async {
            let n = proxy_status(&push.cp).get(&proxy)?["node"].as_u64()?;
            (n != node).then_some(n)
        },
    )
    .await?;
    eprintln!("reviews-v2's agent moved from node {node} to node {moved}");
    wait_for(
        Duration::from_secs(5),
        "v2 ready on its new stream",
        || async {
            (registered(&push.cp).get(&entry).map(String::as_str) == Some("ready")).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", registered(&push.cp)))?;
    assert_eq!(tally(&url, 20), BTreeMap::from([("v2".into(), 20)]));
    Ok(())
}
