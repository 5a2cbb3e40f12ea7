//! The agent on loopback, without root: HTTP proxy mode and explicit
//! upstreams, config refused whole at start, live config updates (a bad one
//! leaves the previous in force), timeouts and delay faults, DestinationRule
//! `maxRequestsPerConnection`, `maxRetries`, `maxConcurrentStreams` and
//! `connectTimeout`, more concurrent streams between agents than hyper
//! allows by default, HTTP upgrades through the mesh, certificate renewal,
//! serving on while the control plane is down, also across an agent
//! restart, and hot restarts and drains that no keep-alive client notices.
//!
//! Each test starts its own [`Loopback`] (about a second: a one-node
//! control plane, an echo server and two agents) on a loopback block of its
//! own, so that the tests run side by side and none depends on what
//! another did to the agents' pools, circuit breakers or config.
mod fixture;
mod hot_restart;
mod systemd;
mod third_party;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use fixture::{
    agent_args, cert_sha, concurrent, curl, inbound_requests_by_connection, logged_by_connection,
    status, Loopback, MESH,
};
use trellis_e2e::loopback::Block;
use trellis_e2e::{bin, upgrade, wait_for};

#[test]
fn a_config_file_with_an_invalid_field_is_refused_at_start_naming_its_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let block = Block::take(11, &[(13, 15000)])?;
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        fixture::mesh(block).replace(
            "timeout: 300ms",
            "timeout: 300ms\n    retries: {attempts: 2, retryOn: sometimes}",
        ),
    )?;
    let out = Command::new(bin("trellis-agent"))
        .args([
            "--cert-chain",
            "/nonexistent",
            "--key",
            "/nonexistent",
            "--roots",
            "/nonexistent",
        ])
        .args(agent_args(
            &block.ip(13).to_string(),
            &dir.path().join("data"),
            &bad,
        ))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("spec.http[0].retries.retryOn"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_port_routes_by_full_and_short_host_name_and_404s_an_unknown_one(
) -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let proxy = lb.proxy();
    for url in [
        "http://echo.default.svc.cluster.local:9080/a",
        "http://echo:9080/b",
    ] {
        let r = curl(&["-x", &proxy, url]);
        assert!(r.contains(r#""service":"echo""#), "{url}: {r}");
    }
    assert_eq!(
        status(&["-x", &proxy, "http://unknown.example:80/"]),
        404,
        "no route: NR"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_upstream_port_reaches_its_service() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    assert!(curl(&[&lb.upstream()]).contains(r#""service":"echo""#));
    Ok(())
}

/// maxRequestsPerConnection (3): the client agent retires its pooled
/// connection to the server's after 3 requests, so the server's agent sees
/// no connection carry more, and 9 requests in a row arrive over at least
/// 3 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_carries_at_most_max_requests_per_connection() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let upstream = lb.upstream();
    for i in 0..9 {
        assert_eq!(status(&[&format!("{upstream}per-connection/{i}")]), 200);
    }
    let server_log = lb.server_log();
    let by_conn = wait_for(Duration::from_secs(5), "9 requests logged", || async {
        let by_conn = inbound_requests_by_connection(&server_log);
        let logged = by_conn
            .values()
            .flatten()
            .filter(|p| p.starts_with("/per-connection/"))
            .count();
        (logged == 9).then_some(by_conn)
    })
    .await?;
    assert!(
        by_conn.values().all(|paths| paths.len() <= 3),
        "{by_conn:?}"
    );
    let conns = by_conn
        .values()
        .filter(|paths| paths.iter().any(|p| p.starts_with("/per-connection/")))
        .count();
    assert!(conns >= 3, "{by_conn:?}");
    Ok(())
}

/// maxRetries (1): three requests fail at once (after 300ms, each route
/// allowing two retries); one of them gets the cluster's one outstanding
/// retry, the others give up at once with their 503. So the server sees
/// 3 + 2 tries, where the retry budget alone (3 retries outstanding at
/// least) would let all 9 through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_lets_one_retry_out_at_a_time() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let proxy = lb.proxy();
    let tries: Vec<_> = (0..3)
        .map(|i| {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                status(&[
                    "-x",
                    &proxy,
                    "-H",
                    "x-echo-fail-rate: 1",
                    "-H",
                    "x-echo-delay-ms: 300",
                    &format!("http://flaky:9080/max-retries/{i}"),
                ])
            })
        })
        .collect();
    for t in tries {
        assert_eq!(t.join().unwrap(), 503);
    }
    let server_log = lb.server_log();
    let tried = || -> usize {
        logged_by_connection(&server_log, "/max-retries/")
            .iter()
            .sum()
    };
    wait_for(Duration::from_secs(5), "5 tries logged", || async {
        (tried() >= 5).then_some(())
    })
    .await?;
    // Not synchronisation: a window in which a sixth try would show, as it
    // would if the budget let more than one retry out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tried(), 5, "maxRetries 1 lets one retry out at a time");
    Ok(())
}

/// More concurrent requests than hyper's default HTTP/2 stream limit (200)
/// all reach the server at once over the one pooled connection between the
/// agents: none waits for another to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_requests_than_hypers_default_stream_limit_reach_the_server_at_once(
) -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let stats = format!("http://{}:9080/echo/stats", lb.server_ip());
    let echo_requests = || {
        let body = curl(&[&stats]);
        serde_json::from_str::<trellis_echo::Stats>(&body).map_or(0, |s| s.requests)
    };
    let before = echo_requests();
    const CONCURRENT: u64 = 250;
    let client_proxy = format!("{}:15001", lb.client_ip());
    let held = concurrent(
        &client_proxy,
        "http://flaky:9080/concurrent",
        6000,
        CONCURRENT,
    );
    wait_for(
        Duration::from_secs(5),
        "all concurrent requests at the server",
        || async { (echo_requests() >= before + CONCURRENT).then_some(()) },
    )
    .await?;
    for h in held {
        assert!(h.await??, "a held request failed");
    }
    Ok(())
}

/// maxConcurrentStreams (100): a burst of 250 goes over at least 3
/// connections between the agents, none carrying more than 100 of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_spreads_a_burst_over_connections_of_at_most_that_many(
) -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    const CONCURRENT: u64 = 250;
    let client_proxy = format!("{}:15001", lb.client_ip());
    for h in concurrent(&client_proxy, "http://narrow:9080/narrow", 2000, CONCURRENT) {
        assert!(h.await??, "a request failed");
    }
    let server_log = lb.server_log();
    let by_conn = wait_for(Duration::from_secs(5), "the burst logged", || async {
        let by_conn = logged_by_connection(&server_log, "/narrow/");
        (by_conn.iter().sum::<usize>() == CONCURRENT as usize).then_some(by_conn)
    })
    .await?;
    assert!(
        by_conn.len() >= 3 && by_conn.iter().all(|&n| n <= 100),
        "requests per connection: {by_conn:?}"
    );
    Ok(())
}

/// connectTimeout (250ms) instead of the agent's --connect-timeout (10s):
/// a peer that takes the TCP connection but never answers the mTLS
/// handshake fails the request in well under a second (503 UF after
/// Istio's default two retries), not in 3 × 10s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_gives_up_on_a_peer_that_never_answers_the_handshake() -> anyhow::Result<()>
{
    let lb = Loopback::start().await?;
    let _blackhole = std::net::TcpListener::bind(format!("{}:15006", lb.blackhole_ip()))?;
    let t = Instant::now();
    let code = status(&[
        "--max-time",
        "8",
        "-x",
        &lb.proxy(),
        "http://blackhole:9080/",
    ]);
    let took = t.elapsed();
    eprintln!("connectTimeout 250ms to an unanswered peer: {code} after {took:?}");
    assert_eq!(code, 503, "connect timeout: UF (took {took:?})");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "tries of 250ms each: {took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_answers_504() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    assert_eq!(
        status(&[
            "-H",
            "x-slow: 1",
            "-H",
            "x-echo-delay-ms: 2000",
            &lb.upstream()
        ]),
        504
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_fault_holds_the_request_its_time() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let t = Instant::now();
    assert_eq!(status(&["-H", "x-delay: 1", &lb.upstream()]), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "delayed {:?}",
        t.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_100_continue_request_bodies_stream_through() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let upstream = lb.upstream();
    let body = "x".repeat(100_000);
    let r = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &body,
        &upstream,
    ]);
    assert!(r.contains(r#""body_bytes":100000"#), "{r}");
    let r = curl(&[
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &body[..2000],
        &upstream,
    ]);
    assert!(r.contains(r#""body_bytes":2000"#), "{r}");
    Ok(())
}

/// Malformed requests get 400, oversized headers 431, and the connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_oversized_headers_431() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let upstream = format!("{}:19080", lb.client_ip());
    let raw = |req: &[u8]| -> String {
        let mut s = TcpStream::connect(&upstream).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(req);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(raw(b"GET / HTTP/1.1\r\nbroken header\r\n\r\n").starts_with("HTTP/1.1 400"));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: echo\r\nx-big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert!(raw(big.as_bytes()).starts_with("HTTP/1.1 431"));
    Ok(())
}

/// Circuit breaking: at most maxConnections + http1MaxPendingRequests (2)
/// requests in flight; the rest get 503 at once, flagged UO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaking_refuses_requests_past_the_pool_and_its_queue() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let parallel: Vec<_> = (0..6)
        .map(|_| {
            let u = lb.upstream();
            std::thread::spawn(move || status(&["-H", "x-echo-delay-ms: 700", &u]))
        })
        .collect();
    let codes: Vec<u16> = parallel.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 2,
        "{codes:?}"
    );
    assert!(codes.contains(&503), "overflow is refused: {codes:?}");
    let metrics = curl(&[&format!("http://{}:15020/stats/prometheus", lb.client_ip())]);
    assert!(metrics.contains(r#"response_flags="UO""#));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoints_dump_the_config_set_the_log_level_and_report_ready(
) -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let admin = lb.client_admin();
    let dump = curl(&[&format!("http://{admin}/config_dump")]);
    assert!(
        dump.contains("echo.default.svc.cluster.local") && dump.contains("spiffe://"),
        "{dump}"
    );
    assert_eq!(
        status(&["-X", "POST", &format!("http://{admin}/logging?level=debug")]),
        200
    );
    assert_eq!(
        status(&[
            "-g",
            "-X",
            "POST",
            &format!("http://{admin}/logging?level=[[bad")
        ]),
        400
    );
    assert_eq!(
        status(&[&format!("http://{}:15020/healthz/ready", lb.client_ip())]),
        200
    );
    Ok(())
}

/// An HTTP/1.1 upgrade through both agents: 101, then bytes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_upgrade_carries_bytes_both_ways_through_both_agents() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let mut s = upgrade::open(&format!("{}:19080", lb.client_ip()), "echo")?;
    upgrade::ping(&mut s, b"ping through the mesh")?;
    Ok(())
}

/// A live update of the config file applies, and a connection opened
/// before it is still served; a bad update is refused and the previous
/// config stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_config_update_applies_and_a_bad_one_leaves_the_previous_in_force(
) -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let upstream = lb.upstream();
    let mut s = upgrade::open(&format!("{}:19080", lb.client_ip()), "echo")?;
    upgrade::ping(&mut s, b"before the update")?;

    let abort = MESH.replace(
        "  - route: [{destination: {host: echo}}]",
        "  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: echo}}]",
    );
    lb.write_config(&abort)?;
    wait_for(Duration::from_secs(3), "update applied", || async {
        (status(&[&upstream]) == 418).then_some(())
    })
    .await?;
    // The connection opened before the update is still served.
    upgrade::ping(&mut s, b"still here after the update")?;

    lb.write_config(&abort.replace("httpStatus: 418", "httpStatus: 418\n      bogus: 1"))?;
    wait_for(
        Duration::from_secs(3),
        "the bad update read and refused",
        || async {
            lb.client
                .output()
                .contains("config update refused")
                .then_some(())
        },
    )
    .await?;
    assert_eq!(
        status(&[&upstream]),
        418,
        "the bad update left the previous config in force"
    );

    lb.write_config(MESH)?;
    wait_for(Duration::from_secs(3), "good config back", || async {
        (status(&[&upstream]) == 200).then_some(())
    })
    .await?;
    Ok(())
}

/// Certificates (16 s here) are renewed before they expire, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_before_they_expire_without_a_restart() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let admin = lb.client_admin();
    let first = cert_sha(&admin);
    wait_for(Duration::from_secs(20), "renewed certificate", || async {
        (cert_sha(&admin) != first).then_some(())
    })
    .await?;
    assert_eq!(status(&[&lb.upstream()]), 200);
    Ok(())
}

/// With the control plane gone, the agents serve on; a restarted agent
/// resumes from its data directory (its token was single-use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_serve_on_with_the_control_plane_down_also_after_a_restart() -> anyhow::Result<()> {
    let mut lb = Loopback::start().await?;
    let upstream = lb.upstream();
    lb.cp.kill(1);
    assert_eq!(status(&[&upstream]), 200);
    lb.restart_client().await?;
    assert_eq!(
        status(&[&upstream]),
        200,
        "serves on its stored (still valid) certificate"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_then_the_agent_exits() -> anyhow::Result<()> {
    let mut lb = Loopback::start().await?;
    let upstream = lb.upstream();
    // A request the application holds for 1.5 s, sent before the SIGTERM.
    let echo_requests = |stats: &str| -> u64 {
        serde_json::from_str::<trellis_echo::Stats>(&curl(&[stats]))
            .map(|s| s.requests)
            .unwrap_or(0)
    };
    let stats = format!("http://{}:9080/echo/stats", lb.server_ip());
    let before = echo_requests(&stats);
    let in_flight = std::thread::spawn({
        let upstream = upstream.clone();
        move || {
            curl(&[
                "-w",
                "\n%{http_code}",
                "-H",
                "x-echo-delay-ms: 1500",
                &upstream,
            ])
        }
    });
    // The echo server counts a request as it arrives (its delay comes
    // after): then the request is in flight through both agents.
    wait_for(
        Duration::from_secs(5),
        "the request to reach the echo server",
        || {
            let stats = stats.clone();
            async move { (echo_requests(&stats) > before).then_some(()) }
        },
    )
    .await?;
    let started = Instant::now();
    let exit = lb.client.terminate()?;
    let took = started.elapsed();
    let answered = in_flight.join().expect("curl thread");
    assert!(answered.ends_with("\n200"), "{answered}");
    assert!(exit.success(), "{exit:?}");
    assert!(
        took >= Duration::from_millis(800),
        "the agent exited after {took:?}, before the request was done"
    );
    assert!(
        took < Duration::from_secs(5),
        "the drain ended at the request, not at --drain-timeout ({took:?})"
    );
    // Drained: nothing listens on the upstream port any more.
    assert_eq!(status(&["--max-time", "2", &upstream]), 0);
    Ok(())
}
