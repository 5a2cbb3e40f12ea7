//! The data plane end to end: workloads in network namespaces, each behind
//! a `trellis-agent` that captures its traffic with iptables and got its
//! certificate from a real control plane with a VM token. Every check goes
//! through real sockets, real mTLS and the real binaries. A workload
//! without an agent (the outsider) is reached in plaintext. Capture covers
//! IPv6 as well: the hosts have both families.
use std::time::Duration;

use anyhow::Context as _;
use trellis_e2e::mesh::MeshEnv;
use trellis_e2e::netns::{self, Host};
use trellis_e2e::wait_for;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [240.240.0.1, "fd00:f0::1"]
  resolution: STATIC
  ports:
  - {number: 9080, name: http}
  - {number: 9000, name: tcp-echo}
  - {number: 9090, name: grpc}
  endpoints:
  - {address: R1, labels: {app: reviews, version: v1}, serviceAccount: reviews}
  - {address: R2, labels: {app: reviews, version: v2}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: [240.240.0.4]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: R1, labels: {app: reviews, version: v1}, serviceAccount: reviews}
  - {address: R2, labels: {app: reviews, version: v2}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: shadow, namespace: default}
spec:
  hosts: [shadow.default.svc.cluster.local]
  addresses: [240.240.0.2]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: R3, labels: {app: shadow}, serviceAccount: shadow}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: impostor, namespace: default}
spec:
  hosts: [impostor.default.svc.cluster.local]
  addresses: [240.240.0.3]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: R1, serviceAccount: someone-else}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.default.svc.cluster.local]
  addresses: [240.240.0.5]
  resolution: STATIC
  ports: [{number: 9080, name: http}, {number: 9081, name: http-idle}, {number: 9082, name: http-upgraded}, {number: 9999, name: http-dropped}]
  endpoints: [{address: OUTSIDER, labels: {security.istio.io/tlsMode: disabled}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: legacy, namespace: default}
spec:
  host: legacy
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 300ms}, http: {maxRequestsPerConnection: 2}}
    portLevelSettings:
    - port: {number: 9081}
      connectionPool: {http: {idleTimeout: 3s}}
    - port: {number: 9082}
      connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 1m, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-fault: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-retry: {exact: "yes"}}}]
    retries: {attempts: 10, retryOn: 5xx}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-retry: {exact: "no"}}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{uri: {prefix: /mirror}}]
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: reviews, subset: v1}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: shadow, namespace: default}
spec:
  selector: {matchLabels: {app: shadow}}
  mtls: {mode: PERMISSIVE}
"#;

/// `curl` in `host`; the output, whatever the exit status.
async fn curl(host: &Host, args: &str) -> String {
    let h = host.clone();
    let script = format!("curl -s {args} || true");
    tokio::task::spawn_blocking(move || h.sh(&script).unwrap_or_default())
        .await
        .unwrap()
}

/// The stats of the echo server on `port` of `host`, asked from `host`
/// itself (the query's own connection is one of those counted).
async fn echo_stats(host: &Host, port: u16) -> anyhow::Result<trellis_echo::Stats> {
    let body = curl(host, &format!("http://127.0.0.1:{port}/echo/stats")).await;
    serde_json::from_str(&body).with_context(|| format!("echo stats: {body:?}"))
}

async fn sh(host: &Host, script: &str) -> anyhow::Result<String> {
    let h = host.clone();
    let script = script.to_string();
    tokio::task::spawn_blocking(move || h.sh(&script)).await?
}

/// `n` requests on one keep-alive connection, with `headers`; the status codes.
async fn statuses(host: &Host, url: &str, headers: &str, n: usize) -> Vec<u16> {
    let urls = vec![format!("-o /dev/null {url}"); n].join(" ");
    let out = curl(host, &format!("{headers} -w '%{{http_code}}\\n' {urls}")).await;
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_management_through_captured_mtls() -> anyhow::Result<()> {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let mut env = MeshEnv::new("dp").await?;
    let client = env.host("client")?;
    let r1 = env.host("r1")?;
    let r2 = env.host("r2")?;
    let r3 = env.host("r3")?;
    let outsider = env.host("out")?;
    let mesh = MESH
        .replace("R1", &r1.addr.to_string())
        .replace("R2", &r2.addr.to_string())
        .replace("R3", &r3.addr.to_string())
        .replace("OUTSIDER", &outsider.addr.to_string());
    let config = env.write("mesh.yaml", &mesh)?;

    // A mixed fleet: r1 captures with iptables, r2 and the client with
    // nftables. The HTTP port listens on IPv6 too (dual stack), so that
    // only capture keeps IPv6 callers from reaching it in plaintext.
    for (h, v, capture) in [(&r1, "v1", "iptables"), (&r2, "v2", "nftables")] {
        env.echo(
            h,
            &[
                "--http",
                "[::]:9080",
                "--tcp",
                "0.0.0.0:9000",
                "--grpc",
                "0.0.0.0:9090",
                "--name",
                "reviews",
                "--version",
                v,
            ],
        )?;
        env.agent(
            h,
            "default/reviews",
            Some(&config),
            &[
                "--label",
                "app=reviews",
                "--label",
                &format!("version={v}"),
                "--capture",
                capture,
            ],
        )
        .await?;
    }
    env.echo(&r3, &["--http", "0.0.0.0:9080", "--name", "shadow"])?;
    env.agent(
        &r3,
        "default/shadow",
        Some(&config),
        &["--label", "app=shadow"],
    )
    .await?;
    env.agent(
        &client,
        "default/productpage",
        Some(&config),
        &[
            "--label",
            "app=productpage",
            "--upstream",
            "0.0.0.0:19090=reviews.default.svc.cluster.local:9090",
            "--capture-exclude",
            "22,19090",
            "--capture",
            "nftables",
        ],
    )
    .await?;
    let table = sh(&client, "nft list table inet trellis").await?;
    assert!(table.contains("redirect to :15001"), "{table}");

    // An 80/20 split over 1,000 requests from an unmodified client.
    let urls = vec!["http://240.240.0.1:9080/"; 1000].join(" ");
    let out = curl(&client, &urls).await;
    let v1 = out.matches(r#""version":"v1""#).count();
    let v2 = out.matches(r#""version":"v2""#).count();
    assert_eq!(
        v1 + v2,
        1000,
        "every request answered: {}",
        &out[..out.len().min(500)]
    );
    assert!((740..=860).contains(&v1), "80/20 split: v1={v1} v2={v2}");

    // The workload sees the caller's verified identity.
    let one: serde_json::Value =
        serde_json::from_str(&curl(&client, "http://240.240.0.1:9080/").await)?;
    let xfcc = one["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://e2e.trellis.test/ns/default/sa/productpage"),
        "{one}"
    );
    assert!(one["headers"]["x-request-id"].is_string(), "{one}");
    // Trace context passes through both agents unchanged (they report no
    // spans, so they make none), and the agents start no trace of their own.
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
        serde_json::from_str(&curl(&client, &format!("{sent}http://240.240.0.1:9080/")).await)?;
    for (k, v) in trace {
        assert_eq!(traced["headers"][k], v, "{k}: {traced}");
    }

    // Abort fault.
    assert_eq!(
        statuses(
            &client,
            "http://240.240.0.1:9080/",
            "-H 'x-fault: abort'",
            3
        )
        .await,
        [418; 3]
    );

    // Retries hide a flaky upstream; without them its failures show.
    let flaky = "-H 'x-echo-fail-rate: 0.3'";
    let with = statuses(
        &client,
        "http://240.240.0.1:9080/",
        &format!("{flaky} -H 'x-retry: yes'"),
        40,
    )
    .await;
    assert_eq!(with, [200; 40], "retries hide a 30% failure rate");
    let without = statuses(
        &client,
        "http://240.240.0.1:9080/",
        &format!("{flaky} -H 'x-retry: no'"),
        40,
    )
    .await;
    assert!(
        without.contains(&503),
        "without retries some fail: {without:?}"
    );

    // Mirroring: the shadow service gets copies; the caller sees only v1's answers.
    let mirrored: serde_json::Value =
        serde_json::from_str(&curl(&client, "http://240.240.0.1:9080/mirror").await)?;
    assert_eq!(mirrored["service"], "reviews");
    for _ in 0..4 {
        curl(&client, "http://240.240.0.1:9080/mirror").await;
    }
    wait_for(Duration::from_secs(5), "mirrored copies", || async {
        let s = curl(&outsider, &format!("http://{}:9080/echo/stats", r3.addr)).await;
        let n = serde_json::from_str::<serde_json::Value>(&s).ok()?["requests"].as_u64()?;
        (n >= 5).then_some(())
    })
    .await?;

    // STRICT refuses plaintext, over IPv6 too, whichever front end
    // captures (r1 iptables and ip6tables, r2 nftables): the agent takes
    // the connection and closes it (curl: 52 empty reply, 56 reset), which
    // neither a missing listener (7) nor a lost packet (28) would give.
    for url in [
        format!("http://{}:9080/", r1.addr),
        format!("http://[{}]:9080/", r1.addr6),
        format!("http://[{}]:9080/", r2.addr6),
    ] {
        let strict = sh(&outsider, &format!("curl -sg -m 3 '{url}' ; echo exit=$?")).await?;
        assert!(
            !strict.contains("reviews")
                && (strict.ends_with("exit=52\n") || strict.ends_with("exit=56\n")),
            "{url}: {strict}"
        );
    }
    // The PERMISSIVE workload takes it; over IPv6 only through its agent,
    // as its server listens on IPv4 alone.
    let permissive = curl(&outsider, &format!("http://{}:9080/", r3.addr)).await;
    assert!(permissive.contains(r#""service":"shadow""#), "{permissive}");
    let permissive6 = curl(&outsider, &format!("-g 'http://[{}]:9080/'", r3.addr6)).await;
    assert!(
        permissive6.contains(r#""service":"shadow""#),
        "{permissive6}"
    );

    // An IPv6 service address, from nftables (client) and iptables (r1)
    // capture: captured, routed and sent over mTLS as the IPv4 one
    // (nothing listens at it, or routes it, but capture).
    for (h, sa) in [(&client, "productpage"), (&r1, "reviews")] {
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

    // A peer with the wrong identity is refused: 503 UF.
    let wrong = statuses(&client, "http://240.240.0.3:9080/", "", 1).await;
    assert_eq!(wrong, [503]);

    // Opaque TCP through captured mTLS.
    let tcp = sh(
        &client,
        r#"bash -c 'exec 3<>/dev/tcp/240.240.0.1/9000; printf "hello mesh\n" >&3; read -t 5 l <&3; echo "$l"'"#,
    )
    .await?;
    assert_eq!(tcp.trim(), "hello mesh");

    // gRPC, unary and bidirectional streaming, via an explicit upstream port.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}:19090", client.addr))?
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

    // Outlier detection ejects the endpoint whose application died.
    env.kill(&r2, "echo");
    statuses(&client, "http://240.240.0.4:9080/", "", 10).await;
    let clusters = curl(&client, "127.0.0.1:15000/clusters").await;
    let r2_line = format!("outbound|9080||ratings.default.svc.cluster.local::{}:15006::health_flags::/failed_outlier_check", r2.addr);
    assert!(clusters.contains(&r2_line), "{clusters}");
    assert_eq!(
        statuses(&client, "http://240.240.0.4:9080/", "", 10).await,
        [200; 10]
    );

    // A plaintext endpoint without an agent (the outsider): the client's
    // agent reaches it on a marked connection, which capture lets out
    // rather than passing it through the agent a second time; and a port
    // whose SYNs are dropped fails after the DestinationRule's
    // connectTimeout (300ms a try), not --connect-timeout (10s).
    env.echo(&outsider, &["--http", "0.0.0.0:9080", "--name", "legacy"])?;
    env.spawn(
        &outsider,
        "echo-idle",
        "trellis-echo",
        &["--http", "0.0.0.0:9081", "--name", "legacy-idle"],
    )?;
    env.spawn(
        &outsider,
        "echo-upgraded",
        "trellis-echo",
        &["--http", "0.0.0.0:9082", "--name", "legacy-upgraded"],
    )?;
    sh(&outsider, "iptables -A INPUT -p tcp --dport 9999 -j DROP").await?;
    wait_for(
        Duration::from_secs(10),
        "the outsider through the mesh",
        || async {
            curl(&client, "http://240.240.0.5:9080/")
                .await
                .contains(r#""service":"legacy""#)
                .then_some(())
        },
    )
    .await?;
    // The HTTP version to a plaintext endpoint is Istio's choice, not the
    // client's: an `http` port gets HTTP/1.1 even from an HTTP/2 client,
    // one with h2UpgradePolicy UPGRADE HTTP/2 even from an HTTP/1.1 one.
    let proto = |args: &'static str| {
        let client = client.clone();
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

    // Captured again, it would be passed through as a TCP connection to
    // the outsider's address (its access-log line comes only at close).
    let metrics = reqwest_metrics(&client).await?;
    let passthrough = format!(r#"destination_service="{}""#, outsider.addr);
    assert!(
        metrics.contains(r#"destination_service="legacy.default.svc.cluster.local""#)
            && !metrics.contains(&passthrough),
        "the agent's own connection was captured again: {:?}",
        metrics
            .lines()
            .filter(|l| l.contains(&passthrough))
            .collect::<Vec<_>>()
    );

    // maxRequestsPerConnection (2) on plaintext HTTP/1.1: 6 requests in a
    // row open at least 3 connections to the outsider (a connection opened
    // before them has carried a request already, so takes at most one).
    let before = echo_stats(&outsider, 9080).await?.http_connections;
    assert_eq!(
        statuses(&client, "http://240.240.0.5:9080/", "", 6).await,
        [200; 6]
    );
    // Less the second query's own connection.
    let opened = echo_stats(&outsider, 9080).await?.http_connections - before - 1;
    assert!(
        opened >= 3,
        "6 requests, 2 a connection: {opened} connections"
    );

    // idleTimeout (3s on 9081): the agent's pooled connection is closed
    // once idle that long (Istio's default, 1h, would keep it open).
    assert_eq!(
        statuses(&client, "http://240.240.0.5:9081/", "", 1).await,
        [200]
    );
    let open = echo_stats(&outsider, 9081).await?.open_http_connections;
    assert_eq!(open, 2, "the agent's pooled connection, and the query's");
    wait_for(
        Duration::from_secs(20),
        "the idle connection to the outsider closed",
        || async {
            let open = echo_stats(&outsider, 9081)
                .await
                .ok()?
                .open_http_connections;
            (open == 1).then_some(())
        },
    )
    .await?;

    let t = std::time::Instant::now();
    let codes = statuses(&client, "http://240.240.0.5:9999/", "--max-time 8", 1).await;
    let took = t.elapsed();
    assert_eq!(codes, [503], "connect timeout: UF (took {took:?})");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "tries of 300ms each: {took:?}"
    );

    // Istio's metrics, from the caller's agent.
    let metrics = reqwest_metrics(&client).await?;
    for want in [
        r#"reporter="source""#,
        r#"destination_service="reviews.default.svc.cluster.local""#,
        r#"response_code="418""#,
        r#"response_flags="FI""#,
        r#"response_flags="UF""#,
        r#"connection_security_policy="mutual_tls""#,
    ] {
        assert!(metrics.contains(want), "{want} missing from metrics");
    }
    assert!(metrics.contains("istio_tcp_connections_opened_total{"));

    // A clean shutdown removes the agent's nftables table.
    let status = env.terminate(&client, "agent")?;
    assert!(status.success(), "{status}: {}", env.log(&client, "agent"));
    let gone = sh(&client, "nft list table inet trellis").await;
    assert!(gone.is_err(), "the table outlived the agent: {gone:?}");
    Ok(())
}

async fn reqwest_metrics(client: &Host) -> anyhow::Result<String> {
    sh(client, "curl -sf 127.0.0.1:15020/stats/prometheus").await
}
