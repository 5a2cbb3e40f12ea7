//! The data plane end to end: workloads in network namespaces, each behind
//! a `trellis-agent` that captures its traffic with iptables or nftables
//! and got its certificate from a real control plane with a VM token.
//! Every check goes through real sockets, real mTLS and the real binaries.
//! A workload without an agent (the outsider) is reached in plaintext.
//! Capture covers IPv6 as well: the hosts have both families.
//!
//! Starting the mesh (eight namespaces, seven agents) takes longer than
//! most tests here, so they share one ([`fixture::dataplane`]); none
//! changes what another reads. Skipped where namespaces cannot be made.
mod fixture;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fixture::{curl, dataplane, echo_stats, metrics, sh, statuses};
use trellis_e2e::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_capture_redirects_to_the_agent_and_a_clean_shutdown_removes_it(
) -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let table = sh(&dp.spare, "nft list table inet trellis").await?;
    assert!(table.contains("redirect to :15001"), "{table}");
    let (status, log) = {
        let mut env = dp.env.lock().unwrap();
        let status = env.terminate(&dp.spare, "agent")?;
        (status, env.log(&dp.spare, "agent"))
    };
    assert!(status.success(), "{status}: {log}");
    let gone = sh(&dp.spare, "nft list table inet trellis").await;
    assert!(gone.is_err(), "the table outlived the agent: {gone:?}");
    Ok(())
}

/// An 80/20 split over 1,000 requests from an unmodified client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_20_split_holds_over_1000_requests() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let urls = vec!["http://240.240.0.1:9080/"; 1000].join(" ");
    let out = curl(&dp.client, &urls).await;
    let v1 = out.matches(r#""version":"v1""#).count();
    let v2 = out.matches(r#""version":"v2""#).count();
    assert_eq!(
        v1 + v2,
        1000,
        "every request answered: {}",
        &out[..out.len().min(500)]
    );
    assert!((740..=860).contains(&v1), "80/20 split: v1={v1} v2={v2}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_sees_the_callers_verified_identity_and_a_request_id() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let one: serde_json::Value =
        serde_json::from_str(&curl(&dp.client, "http://240.240.0.1:9080/").await)?;
    let xfcc = one["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://e2e.trellis.test/ns/default/sa/productpage"),
        "{one}"
    );
    assert!(one["headers"]["x-request-id"].is_string(), "{one}");
    Ok(())
}

/// Trace context passes through both agents unchanged (they report no
/// spans, so they make none), and the agents start no trace of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_through_both_agents_unchanged_and_none_is_started(
) -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let one: serde_json::Value =
        serde_json::from_str(&curl(&dp.client, "http://240.240.0.1:9080/").await)?;
    assert!(one["headers"].get("traceparent").is_none(), "{one}");
    let trace = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=opaque"),
        ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("x-b3-spanid", "00f067aa0ba902b7"),
        ("x-b3-sampled", "1"),
        ("x-request-id", "e2e-request-1"),
    ];
    let sent: String = trace
        .iter()
        .map(|(k, v)| format!("-H '{k}: {v}' "))
        .collect();
    let traced: serde_json::Value =
        serde_json::from_str(&curl(&dp.client, &format!("{sent}http://240.240.0.1:9080/")).await)?;
    for (k, v) in trace {
        assert_eq!(traced["headers"][k], v, "{k}: {traced}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_fault_answers_with_its_status() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    assert_eq!(
        statuses(
            &dp.client,
            "http://240.240.0.1:9080/",
            "-H 'x-fault: abort'",
            3
        )
        .await,
        [418; 3]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_upstream_and_without_them_its_failures_show() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let flaky = "-H 'x-echo-fail-rate: 0.3'";
    let with = statuses(
        &dp.client,
        "http://240.240.0.1:9080/",
        &format!("{flaky} -H 'x-retry: yes'"),
        40,
    )
    .await;
    assert_eq!(with, [200; 40], "retries hide a 30% failure rate");
    let without = statuses(
        &dp.client,
        "http://240.240.0.1:9080/",
        &format!("{flaky} -H 'x-retry: no'"),
        40,
    )
    .await;
    assert!(
        without.contains(&503),
        "without retries some fail: {without:?}"
    );
    Ok(())
}

/// Mirroring: the shadow service gets copies; the caller sees only v1's
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirroring_copies_requests_to_the_shadow_and_the_caller_sees_the_primarys_answers(
) -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let mirrored: serde_json::Value =
        serde_json::from_str(&curl(&dp.client, "http://240.240.0.1:9080/mirror").await)?;
    assert_eq!(mirrored["service"], "reviews");
    for _ in 0..4 {
        curl(&dp.client, "http://240.240.0.1:9080/mirror").await;
    }
    let stats = format!("http://{}:9080/echo/stats", dp.r3.addr);
    wait_for(Duration::from_secs(5), "mirrored copies", || async {
        let s = curl(&dp.outsider, &stats).await;
        let n = serde_json::from_str::<serde_json::Value>(&s).ok()?["requests"].as_u64()?;
        (n >= 5).then_some(())
    })
    .await?;
    Ok(())
}

/// STRICT refuses plaintext, over IPv6 too, whichever front end captures
/// (r1 iptables and ip6tables, r2 nftables): the agent takes the
/// connection and closes it (curl: 52 empty reply, 56 reset), which
/// neither a missing listener (7) nor a lost packet (28) would give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_refuses_plaintext_over_ipv4_and_ipv6_whichever_front_end_captures(
) -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    for url in [
        format!("http://{}:9080/", dp.r1.addr),
        format!("http://[{}]:9080/", dp.r1.addr6),
        format!("http://[{}]:9080/", dp.r2.addr6),
    ] {
        let strict = sh(
            &dp.outsider,
            &format!("curl -sg -m 3 '{url}' ; echo exit=$?"),
        )
        .await?;
        assert!(
            !strict.contains("reviews")
                && (strict.ends_with("exit=52\n") || strict.ends_with("exit=56\n")),
            "{url}: {strict}"
        );
    }
    Ok(())
}

/// The PERMISSIVE workload takes plaintext; over IPv6 only through its
/// agent, as its server listens on IPv4 alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_workload_takes_plaintext_over_ipv6_only_through_its_agent(
) -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let permissive = curl(&dp.outsider, &format!("http://{}:9080/", dp.r3.addr)).await;
    assert!(permissive.contains(r#""service":"shadow""#), "{permissive}");
    let permissive6 = curl(
        &dp.outsider,
        &format!("-g 'http://[{}]:9080/'", dp.r3.addr6),
    )
    .await;
    assert!(
        permissive6.contains(r#""service":"shadow""#),
        "{permissive6}"
    );
    Ok(())
}

/// An IPv6 service address, from nftables (client) and iptables (r1)
/// capture: captured, routed and sent over mTLS as the IPv4 one (nothing
/// listens at it, or routes it, but capture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_service_address_is_captured_routed_and_sent_over_mtls() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    for (h, sa) in [(&dp.client, "productpage"), (&dp.r1, "reviews")] {
        let six: serde_json::Value =
            serde_json::from_str(&curl(h, "-g 'http://[fd00:f0::1]:9080/'").await)?;
        assert_eq!(six["service"], "reviews", "{}: {six}", h.name);
        assert!(
            six["headers"]["x-forwarded-client-cert"]
                .as_str()
                .is_some_and(|x| x.contains(&format!("/sa/{sa}"))),
            "{}: {six}",
            h.name
        );
    }
    Ok(())
}

/// A peer with the wrong identity is refused: 503 UF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_identity_is_refused() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let wrong = statuses(&dp.client, "http://240.240.0.3:9080/", "", 1).await;
    assert_eq!(wrong, [503]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_goes_through_captured_mtls() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let tcp = sh(
        &dp.client,
        r#"bash -c 'exec 3<>/dev/tcp/240.240.0.1/9000; printf "hello mesh\n" >&3; read -t 5 l <&3; echo "$l"'"#,
    )
    .await?;
    assert_eq!(tcp.trim(), "hello mesh");
    Ok(())
}

/// gRPC, unary and bidirectional streaming, via an explicit upstream port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_calls_go_through_an_explicit_upstream() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}:19090", dp.client.addr))?
        .connect()
        .await?;
    let mut grpc = trellis_echo::v1::echo_client::EchoClient::new(ch);
    let r = grpc
        .echo(trellis_echo::v1::EchoRequest {
            message: "hi".into(),
        })
        .await?
        .into_inner();
    assert_eq!((r.message.as_str(), r.service.as_str()), ("hi", "reviews"));
    let reqs = tokio_stream::iter((0..3).map(|i| trellis_echo::v1::EchoRequest {
        message: format!("m{i}"),
    }));
    let mut stream = grpc.stream(reqs).await?.into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await? {
        got.push(m.message);
    }
    assert_eq!(got, ["m0", "m1", "m2"]);
    Ok(())
}

/// Outlier detection ejects the endpoint whose application died. ratings
/// has hosts of its own, so that no other test sees its echo server go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_endpoint_whose_application_died() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    dp.env.lock().unwrap().kill(&dp.rt2, "echo");
    statuses(&dp.client, "http://240.240.0.4:9080/", "", 10).await;
    let clusters = curl(&dp.client, "127.0.0.1:15000/clusters").await;
    let rt2_line = format!("outbound|9080||ratings.default.svc.cluster.local::{}:15006::health_flags::/failed_outlier_check", dp.rt2.addr);
    assert!(clusters.contains(&rt2_line), "{clusters}");
    assert_eq!(
        statuses(&dp.client, "http://240.240.0.4:9080/", "", 10).await,
        [200; 10]
    );
    Ok(())
}

/// A plaintext endpoint without an agent (the outsider): the client's
/// agent reaches it on a marked connection, which capture lets out rather
/// than passing it through the agent a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_endpoint_is_reached_on_a_connection_capture_lets_out() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    wait_for(
        Duration::from_secs(10),
        "the outsider through the mesh",
        || async {
            curl(&dp.client, "http://240.240.0.5:9080/")
                .await
                .contains(r#""service":"legacy""#)
                .then_some(())
        },
    )
    .await?;
    // More than maxRequestsPerConnection (2), so that a connection of the
    // agent's closes: a connection captured again would be passed through
    // as TCP to the outsider's address, with its access-log line only at
    // close.
    assert_eq!(
        statuses(&dp.client, "http://240.240.0.5:9080/", "", 4).await,
        [200; 4]
    );
    let metrics = metrics(&dp.client).await?;
    let passthrough = format!(r#"destination_service="{}""#, dp.outsider.addr);
    assert!(
        metrics.contains(r#"destination_service="legacy.default.svc.cluster.local""#)
            && !metrics.contains(&passthrough),
        "the agent's own connection was captured again: {:?}",
        metrics
            .lines()
            .filter(|l| l.contains(&passthrough))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// The HTTP version to a plaintext endpoint is Istio's choice, not the
/// client's: an `http` port gets HTTP/1.1 even from an HTTP/2 client, one
/// with h2UpgradePolicy UPGRADE HTTP/2 even from an HTTP/1.1 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_version_to_a_plaintext_endpoint_is_the_ports_not_the_clients(
) -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let proto = |args: &'static str| {
        let client = dp.client.clone();
        async move {
            let body = curl(&client, args).await;
            let r: trellis_echo::Report =
                serde_json::from_str(&body).with_context(|| format!("{args}: {body:?}"))?;
            anyhow::Ok(r.proto)
        }
    };
    assert_eq!(
        proto("--http2-prior-knowledge http://240.240.0.5:9080/").await?,
        "HTTP/1.1"
    );
    assert_eq!(proto("http://240.240.0.5:9082/").await?, "HTTP/2");
    Ok(())
}

/// maxRequestsPerConnection (2) on plaintext HTTP/1.1: 6 requests in a row
/// open at least 3 connections to the outsider. Port 9083 is this test's
/// alone, so that no other request counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_applies_to_plaintext_http1() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let before = echo_stats(&dp.outsider, 9083).await?.http_connections;
    assert_eq!(
        statuses(&dp.client, "http://240.240.0.5:9083/", "", 6).await,
        [200; 6]
    );
    // Less the second query's own connection.
    let opened = echo_stats(&dp.outsider, 9083).await?.http_connections - before - 1;
    assert!(
        opened >= 3,
        "6 requests, 2 a connection: {opened} connections"
    );
    Ok(())
}

/// idleTimeout (3s on 9081): the agent's pooled connection is closed once
/// idle that long (Istio's default, 1h, would keep it open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_the_pooled_connection_to_a_plaintext_endpoint() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    assert_eq!(
        statuses(&dp.client, "http://240.240.0.5:9081/", "", 1).await,
        [200]
    );
    let open = echo_stats(&dp.outsider, 9081).await?.open_http_connections;
    assert_eq!(open, 2, "the agent's pooled connection, and the query's");
    wait_for(
        Duration::from_secs(20),
        "the idle connection to the outsider closed",
        || async {
            let open = echo_stats(&dp.outsider, 9081)
                .await
                .ok()?
                .open_http_connections;
            (open == 1).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// A port whose SYNs are dropped fails after the DestinationRule's
/// connectTimeout (300ms a try), not --connect-timeout (10s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_applies_to_a_plaintext_port_whose_syns_are_dropped() -> anyhow::Result<()>
{
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    let t = Instant::now();
    let codes = statuses(&dp.client, "http://240.240.0.5:9999/", "--max-time 8", 1).await;
    let took = t.elapsed();
    assert_eq!(codes, [503], "connect timeout: UF (took {took:?})");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "tries of 300ms each: {took:?}"
    );
    Ok(())
}

/// Istio's metrics, from the caller's agent, after the traffic that makes
/// each: an abort fault (418, FI), a peer with the wrong identity (UF),
/// mTLS to reviews and an opaque TCP connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_agent_reports_istios_metrics() -> anyhow::Result<()> {
    let Some(dp) = dataplane().await? else {
        return Ok(());
    };
    statuses(
        &dp.client,
        "http://240.240.0.1:9080/",
        "-H 'x-fault: abort'",
        1,
    )
    .await;
    statuses(&dp.client, "http://240.240.0.3:9080/", "", 1).await;
    statuses(&dp.client, "http://240.240.0.1:9080/", "", 1).await;
    sh(
        &dp.client,
        r#"bash -c 'exec 3<>/dev/tcp/240.240.0.1/9000; printf "x\n" >&3; read -t 5 l <&3'"#,
    )
    .await?;
    let want = [
        r#"reporter="source""#,
        r#"destination_service="reviews.default.svc.cluster.local""#,
        r#"response_code="418""#,
        r#"response_flags="FI""#,
        r#"response_flags="UF""#,
        r#"connection_security_policy="mutual_tls""#,
        "istio_tcp_connections_opened_total{",
    ];
    let missing = || async {
        let m = metrics(&dp.client).await.unwrap_or_default();
        want.iter()
            .filter(|w| !m.contains(*w))
            .copied()
            .collect::<Vec<_>>()
    };
    let counted = wait_for(
        Duration::from_secs(5),
        "the metrics of that traffic",
        || async { missing().await.is_empty().then_some(()) },
    )
    .await;
    assert!(
        counted.is_ok(),
        "missing from metrics: {:?}",
        missing().await
    );
    Ok(())
}
