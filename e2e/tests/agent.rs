//! The agent on loopback, without root: HTTP proxy mode and explicit
//! upstreams, config refused whole at start, live config updates (a bad one
//! leaves the previous in force), timeouts and delay faults, DestinationRule
//! `maxRequestsPerConnection`, `maxRetries`, `maxConcurrentStreams` and
//! `connectTimeout`, more concurrent streams between agents than hyper
//! allows by default, HTTP upgrades
//! through the mesh, certificate renewal, and serving on while the control
//! plane is down, also across an agent restart.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use trellis_e2e::{bin, upgrade, wait_for, Cluster, Proc};

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.12, labels: {app: echo, version: v1}, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {x-slow: {exact: "1"}}}]
    timeout: 300ms
    route: [{destination: {host: echo}}]
  - match: [{headers: {x-delay: {exact: "1"}}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 3}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: flaky, namespace: default}
spec:
  hosts: [flaky.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.12, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: default}
spec:
  hosts: [flaky]
  http: [{retries: {attempts: 2, retryOn: 5xx}, route: [{destination: {host: flaky}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: flaky, namespace: default}
spec:
  host: flaky
  trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: narrow, namespace: default}
spec:
  hosts: [narrow.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.12, serviceAccount: echo}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: narrow, namespace: default}
spec:
  host: narrow
  trafficPolicy: {connectionPool: {http: {maxConcurrentStreams: 100}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: blackhole, namespace: default}
spec:
  hosts: [blackhole.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.0.14, serviceAccount: blackhole}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: blackhole, namespace: default}
spec:
  host: blackhole
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 250ms}}
"#;

const CLIENT: &str = "127.0.0.11";
const SERVER: &str = "127.0.0.12";
/// Takes TCP connections on the inbound port and never answers.
const BLACKHOLE: &str = "127.0.0.14";

fn agent_args(ip: &str, data: &Path, config: &Path) -> Vec<String> {
    [
        "--data-dir",
        &data.display().to_string(),
        "--config-file",
        &config.display().to_string(),
        "--inbound",
        &format!("{ip}:15006"),
        "--outbound",
        &format!("{ip}:15001"),
        "--admin",
        &format!("{ip}:15000"),
        "--metrics",
        &format!("{ip}:15020"),
        "--dns",
        &format!("{ip}:15053"),
        "--app-host",
        ip,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-s")
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(args: &[&str]) -> u16 {
    let mut a = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    a.extend(args);
    curl(&a).trim().parse().unwrap_or(0)
}

async fn ready(admin: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/ready");
    wait_for(Duration::from_secs(20), &url, || async {
        (status(&[&url]) == 200).then_some(())
    })
    .await
}

/// `n` requests at once through the client agent's proxy port, each to
/// `url/I` and held `delay_ms` by the echo server; whether each got a 200.
fn concurrent(
    url: &str,
    delay_ms: u32,
    n: u64,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<bool>>> {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    (0..n)
        .map(|i| {
            let req = format!(
                "GET {url}/{i} HTTP/1.1\r\nHost: {host}\r\n\
                 x-echo-delay-ms: {delay_ms}\r\nConnection: close\r\n\r\n"
            );
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(format!("{CLIENT}:15001")).await?;
                s.write_all(req.as_bytes()).await?;
                let mut resp = Vec::new();
                s.read_to_end(&mut resp).await?;
                anyhow::Ok(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200"))
            })
        })
        .collect()
}

/// Of the requests in an agent's inbound access log (`log`) whose path
/// starts with `prefix`, how many came over each connection that carried
/// any.
fn logged_by_connection(log: &Path, prefix: &str) -> Vec<usize> {
    inbound_requests_by_connection(log)
        .values()
        .map(|paths| paths.iter().filter(|p| p.starts_with(prefix)).count())
        .filter(|&n| n > 0)
        .collect()
}

/// The requests in an agent's inbound access log (`log`), by the
/// connection they came over (its downstream address): their paths.
fn inbound_requests_by_connection(log: &Path) -> BTreeMap<String, Vec<String>> {
    let mut by_conn: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reporter"] != "destination" || v["protocol"] == "tcp" {
            continue;
        }
        let conn = v["downstream_remote_address"].as_str().unwrap_or_default();
        let path = v["path"].as_str().unwrap_or_default();
        by_conn
            .entry(conn.to_string())
            .or_default()
            .push(path.to_string());
    }
    by_conn
}

fn cert_sha(admin: &str) -> String {
    let certs: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("http://{admin}/certs")])).unwrap_or_default();
    certs["cert_chain"][0]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_features_on_loopback() -> anyhow::Result<()> {
    let mut cp = Cluster::init(&["--cert-ttl-secs", "16"]).await?;
    let dir = cp.root.path().to_path_buf();
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, MESH)?;

    // A bad config file is refused at start, with the field path.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        MESH.replace(
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
        .args(agent_args("127.0.0.13", &dir.join("bad-data"), &bad))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("spec.http[0].retries.retryOn"), "{err}");

    let echo = Proc::spawn(
        "echo",
        Command::new(bin("trellis-echo")).args([
            "--http",
            &format!("{SERVER}:9080"),
            "--name",
            "echo",
        ]),
        &dir.join("echo.log"),
    )?;
    let token = cp.token(&["--kind", "vm", "--identity", "default/echo"])?;
    let mut server_cmd = Command::new(bin("trellis-agent"));
    // Its access log shows which connection each request came over.
    server_cmd
        .args(["--token", &token])
        .args(agent_args(SERVER, &dir.join("server"), &config));
    let _server = Proc::spawn(
        "server-agent",
        &mut server_cmd,
        &dir.join("server-agent.log"),
    )?;
    let token = cp.token(&[
        "--kind",
        "vm",
        "--identity",
        "default/client",
        "--uses",
        "1",
    ])?;
    let client_args = {
        let mut a = agent_args(CLIENT, &dir.join("client"), &config);
        a.extend([
            "--upstream".into(),
            format!("{CLIENT}:19080=echo.default.svc.cluster.local:9080"),
        ]);
        a
    };
    let mut client_cmd = Command::new(bin("trellis-agent"));
    client_cmd.args(["--token", &token]).args(&client_args);
    let mut client = Proc::spawn(
        "client-agent",
        &mut client_cmd,
        &dir.join("client-agent.log"),
    )?;
    ready(&format!("{SERVER}:15000")).await?;
    ready(&format!("{CLIENT}:15000")).await?;
    let upstream = format!("http://{CLIENT}:19080/");
    let proxy = format!("http://{CLIENT}:15001");

    // HTTP proxy mode, by full and short name; explicit upstream.
    for url in [
        "http://echo.default.svc.cluster.local:9080/a",
        "http://echo:9080/b",
    ] {
        let r = curl(&["-x", &proxy, url]);
        assert!(r.contains(r#""service":"echo""#), "{url}: {r}");
    }
    assert!(curl(&[&upstream]).contains(r#""service":"echo""#));
    assert_eq!(
        status(&["-x", &proxy, "http://unknown.example:80/"]),
        404,
        "no route: NR"
    );

    // maxRequestsPerConnection (3): the client agent retires its pooled
    // connection to the server's after 3 requests, so the server's agent
    // sees no connection carry more, and 9 requests in a row arrive over
    // at least 3 connections.
    for i in 0..9 {
        assert_eq!(status(&[&format!("{upstream}per-connection/{i}")]), 200);
    }
    let server_log = dir.join("server-agent.log");
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

    // maxRetries (1): three requests fail at once (after 300ms, each
    // route allowing two retries); one of them gets the cluster's one
    // outstanding retry, the others give up at once with their 503. So the
    // server sees 3 + 2 tries, where the retry budget alone (3 retries
    // outstanding at least) would let all 9 through.
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
    let tried = || -> usize {
        logged_by_connection(&server_log, "/max-retries/")
            .iter()
            .sum()
    };
    wait_for(Duration::from_secs(5), "5 tries logged", || async {
        (tried() >= 5).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tried(), 5, "maxRetries 1 lets one retry out at a time");

    // More concurrent requests than hyper's default HTTP/2 stream limit
    // (200) all reach the server at once over the one pooled connection
    // between the agents: none waits for another to end.
    let echo_requests = || {
        let body = curl(&[&format!("http://{SERVER}:9080/echo/stats")]);
        serde_json::from_str::<trellis_echo::Stats>(&body).map_or(0, |s| s.requests)
    };
    let before = echo_requests();
    const CONCURRENT: u64 = 250;
    let held = concurrent("http://flaky:9080/concurrent", 6000, CONCURRENT);
    wait_for(
        Duration::from_secs(5),
        "all concurrent requests at the server",
        || async { (echo_requests() >= before + CONCURRENT).then_some(()) },
    )
    .await?;
    for h in held {
        assert!(h.await??, "a held request failed");
    }

    // maxConcurrentStreams (100): the same burst goes over 3 connections
    // between the agents, none carrying more than 100 of it.
    for h in concurrent("http://narrow:9080/narrow", 2000, CONCURRENT) {
        assert!(h.await??, "a request failed");
    }
    let by_conn = wait_for(Duration::from_secs(5), "the burst logged", || async {
        let by_conn = logged_by_connection(&server_log, "/narrow/");
        (by_conn.iter().sum::<usize>() == CONCURRENT as usize).then_some(by_conn)
    })
    .await?;
    assert!(
        by_conn.len() >= 3 && by_conn.iter().all(|&n| n <= 100),
        "requests per connection: {by_conn:?}"
    );

    // connectTimeout (250ms) instead of the agent's --connect-timeout
    // (10s): a peer that takes the TCP connection but never answers the
    // mTLS handshake fails the request in well under a second (503 UF
    // after Istio's default two retries), not in 3 × 10s.
    let _blackhole = std::net::TcpListener::bind(format!("{BLACKHOLE}:15006"))?;
    let t = Instant::now();
    let code = status(&["--max-time", "8", "-x", &proxy, "http://blackhole:9080/"]);
    let took = t.elapsed();
    eprintln!("connectTimeout 250ms to an unanswered peer: {code} after {took:?}");
    assert_eq!(code, 503, "connect timeout: UF (took {took:?})");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "tries of 250ms each: {took:?}"
    );

    // Route timeout (504) and delay fault.
    assert_eq!(
        status(&["-H", "x-slow: 1", "-H", "x-echo-delay-ms: 2000", &upstream]),
        504
    );
    let t = Instant::now();
    assert_eq!(status(&["-H", "x-delay: 1", &upstream]), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "delayed {:?}",
        t.elapsed()
    );

    // Chunked and 100-continue request bodies stream through.
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

    // Malformed requests get 400, oversized headers 431, and the connection closes.
    let raw = |req: &[u8]| -> String {
        let mut s = TcpStream::connect(format!("{CLIENT}:19080")).unwrap();
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

    // Circuit breaking: at most maxConnections + http1MaxPendingRequests (2)
    // requests in flight; the rest get 503 at once.
    let parallel: Vec<_> = (0..6)
        .map(|_| {
            let u = upstream.clone();
            std::thread::spawn(move || status(&["-H", "x-echo-delay-ms: 700", &u]))
        })
        .collect();
    let codes: Vec<u16> = parallel.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 2,
        "{codes:?}"
    );
    assert!(codes.contains(&503), "overflow is refused: {codes:?}");
    let metrics = curl(&[&format!("http://{CLIENT}:15020/stats/prometheus")]);
    assert!(metrics.contains(r#"response_flags="UO""#));

    // Admin endpoints.
    let dump = curl(&[&format!("http://{CLIENT}:15000/config_dump")]);
    assert!(
        dump.contains("echo.default.svc.cluster.local") && dump.contains("spiffe://"),
        "{dump}"
    );
    assert_eq!(
        status(&[
            "-X",
            "POST",
            &format!("http://{CLIENT}:15000/logging?level=debug")
        ]),
        200
    );
    assert_eq!(
        status(&[
            "-g",
            "-X",
            "POST",
            &format!("http://{CLIENT}:15000/logging?level=[[bad")
        ]),
        400
    );
    assert_eq!(
        status(&[&format!("http://{CLIENT}:15020/healthz/ready")]),
        200
    );

    // An HTTP/1.1 upgrade through both agents: 101, then bytes both ways.
    let mut s = upgrade::open(&format!("{CLIENT}:19080"), "echo")?;
    upgrade::ping(&mut s, b"ping through the mesh")?;

    // A live update applies; a bad one is refused and the previous stays.
    let abort = MESH.replace(
        "  - route: [{destination: {host: echo}}]",
        "  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: echo}}]",
    );
    std::fs::write(&config, &abort)?;
    wait_for(Duration::from_secs(3), "update applied", || async {
        (status(&[&upstream]) == 418).then_some(())
    })
    .await?;
    // The connection opened before the update is still served.
    upgrade::ping(&mut s, b"still here after the update")?;
    std::fs::write(
        &config,
        abort.replace("httpStatus: 418", "httpStatus: 418\n      bogus: 1"),
    )?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        status(&[&upstream]),
        418,
        "the bad update left the previous config in force"
    );
    assert!(
        client.output().contains("config update refused"),
        "{}",
        client.output()
    );
    std::fs::write(&config, MESH)?;
    wait_for(Duration::from_secs(3), "good config back", || async {
        (status(&[&upstream]) == 200).then_some(())
    })
    .await?;

    // Certificates (16 s here) are renewed before they expire, without a restart.
    let first = cert_sha(&format!("{CLIENT}:15000"));
    wait_for(Duration::from_secs(20), "renewed certificate", || async {
        (cert_sha(&format!("{CLIENT}:15000")) != first).then_some(())
    })
    .await?;
    assert_eq!(status(&[&upstream]), 200);

    // With the control plane gone, the agents serve on; a restarted agent
    // resumes from its data directory (its token was single-use).
    cp.kill(1);
    assert_eq!(status(&[&upstream]), 200);
    client.kill();
    drop(client);
    let mut client_cmd = Command::new(bin("trellis-agent"));
    client_cmd.args(&client_args);
    let _client = Proc::spawn(
        "client-agent-2",
        &mut client_cmd,
        &dir.join("client-agent-2.log"),
    )?;
    ready(&format!("{CLIENT}:15000")).await?;
    assert_eq!(
        status(&[&upstream]),
        200,
        "serves on its stored (still valid) certificate"
    );
    drop(echo);
    Ok(())
}
