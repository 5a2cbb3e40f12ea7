//! The agents between third-party clients and servers, as issue 22 tried
//! them: curl, nghttp, socat and grpcio in front, nginx (as `web`, port
//! 9081) and a grpcio server (`grpc`, 9082) behind, with what a new user
//! sends, hostile input included. Each test skips when its tools are
//! missing (`.ci/run` installs them).
use std::time::Duration;

use trellis_e2e::third_party::{
    nginx_big_headers, python, python_has, python_server, python_with, self_signed, tool,
    wait_listening, Nginx, GRPC_CLIENT_PY, GRPC_SERVER_PY, WS_CLIENT_PY, WS_SERVER_PY,
};
use trellis_e2e::wait_for;

use crate::fixture::{curl, series, status, Loopback};

/// nginx as `web`, with `locations`.
fn nginx(lb: &Loopback, locations: &str) -> anyhow::Result<Option<Nginx>> {
    let Some(bin) = tool("nginx") else {
        return Ok(None);
    };
    Ok(Some(Nginx::start(
        &bin,
        &lb.dir,
        lb.web_addr(),
        None,
        locations,
    )?))
}

/// A response with 20 KB of headers reaches curl; one with 70 KB, past
/// the 60 KiB limit, is a 502 from the server's agent (`UPE`), and the
/// POST reached nginx once: an answer that has begun to arrive is not
/// sent for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_headers_pass_and_too_large_ones_are_a_502_not_a_retry() -> anyhow::Result<()>
{
    let lb = Loopback::start().await?;
    let locations = format!(
        "    location /big20 {{\n{}      return 200 \"ok\";\n    }}\n    location /big70 {{\n{}      return 200 \"ok\";\n    }}\n",
        nginx_big_headers(20_000),
        nginx_big_headers(70_000)
    );
    let Some(web) = nginx(&lb, &locations)? else {
        return Ok(());
    };
    let proxy = lb.proxy();
    let post = |path: &str| status(&["-x", &proxy, "-d", "x", &format!("http://web:9081{path}")]);
    assert_eq!(post("/big20"), 200);
    assert_eq!(post("/big70"), 502);
    let posts = web.requests();
    let huge: Vec<_> = posts
        .iter()
        .filter(|l| l.starts_with("POST /big70"))
        .collect();
    assert_eq!(huge.len(), 1, "{posts:?}");
    let log = std::fs::read_to_string(lb.dir.join("server-agent.log"))?;
    assert!(
        log.lines()
            .any(|l| l.contains(r#""path":"/big70""#) && l.contains(r#""response_flags":"UPE""#)),
        "the server's agent logs UPE"
    );
    Ok(())
}

/// Request headers: 20 KB reach nginx; past 60 KiB they get 431 once
/// from the calling agent, over HTTP/1.1 (curl) and HTTP/2 (nghttp),
/// never a refusal a client would retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_headers_pass_and_too_large_ones_get_431_once() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let Some(web) = nginx(&lb, "    location / { return 200 \"ok\"; }\n")? else {
        return Ok(());
    };
    let proxy = lb.proxy();
    let big = |n: usize| format!("x-big: {}", "a".repeat(n));
    // From a file: a command-line argument is at most 128 KiB.
    let get = |n: usize, path: &str| -> anyhow::Result<u16> {
        let file = lb.dir.join(format!("header-{n}"));
        std::fs::write(&file, big(n))?;
        let header = format!("@{}", file.display());
        Ok(status(&[
            "-x",
            &proxy,
            "-H",
            &header,
            &format!("http://web:9081{path}"),
        ]))
    };
    assert_eq!(get(20_000, "/h1-20k")?, 200);
    assert_eq!(get(70_000, "/h1-70k")?, 431);
    assert_eq!(get(300_000, "/h1-300k")?, 431);
    let seen = web.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let Some(nghttp) = tool("nghttp") else {
        return Ok(());
    };
    // HTTP/2 with prior knowledge, to the client's explicit upstream:
    // the status or the stream's or connection's error, as nghttp tells.
    let h2 = |n: usize| -> anyhow::Result<Vec<String>> {
        let out = std::process::Command::new(&nghttp)
            .args(["-v", "-H", &big(n), &lb.web_upstream()])
            .output()?;
        let out = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        Ok(out
            .lines()
            .filter(|l| l.len() < 300)
            .map(str::to_string)
            .collect())
    };
    let ok = h2(20_000)?;
    assert!(ok.iter().any(|l| l.ends_with(":status: 200")), "{ok:?}");
    // nghttp sends no header block past 64 KiB itself.
    let refused = h2(62_000)?;
    assert!(
        refused.iter().any(|l| l.ends_with(":status: 431")),
        "{refused:?}"
    );
    assert!(
        !refused.iter().any(|l| l.contains("REFUSED_STREAM")),
        "{refused:?}"
    );
    let seen = web.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    Ok(())
}

/// Malformed requests are the client's fault: curl without `Host`
/// (HTTP/1.0 and 1.1) and a bad chunk size sent with socat get 400 from
/// the calling agent, counted and logged with `DPE`, and nothing reaches
/// nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_host_or_with_a_bad_chunk_get_400_dpe() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let Some(web) = nginx(&lb, "    location / { return 200 \"ok\"; }\n")? else {
        return Ok(());
    };
    let Some(socat) = tool("socat") else {
        return Ok(());
    };
    let upstream = lb.web_upstream();
    for version in ["--http1.0", "--http1.1"] {
        // `-H Host:` sends none.
        assert_eq!(
            status(&[version, "-H", "Host:", &upstream]),
            400,
            "{version}"
        );
    }
    let chunked = "POST / HTTP/1.1\r\nHost: web:9081\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let addr = upstream.trim_start_matches("http://").trim_end_matches('/');
    let mut child = std::process::Command::new(socat)
        .args(["-t", "5", "-", &format!("TCP:{addr}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), chunked.as_bytes())?;
    let out = child.wait_with_output()?;
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let dpe = [
        "reporter=\"source\"",
        "response_code=\"400\"",
        "response_flags=\"DPE\"",
    ];
    assert_eq!(
        series(&lb.client_metrics(), "istio_requests_total", &dpe),
        3
    );
    let upstream_failures = ["response_code=\"503\""];
    assert_eq!(
        series(
            &lb.client_metrics(),
            "istio_requests_total",
            &upstream_failures
        ),
        0
    );
    assert!(web.requests().is_empty(), "{:?}", web.requests());
    Ok(())
}

/// A grpcio client gets the agent's local replies as gRPC statuses with
/// Envoy's messages: the route's timeout is UNAVAILABLE "upstream request
/// timeout", a method no route takes UNIMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_local_replies_as_grpc_statuses() -> anyhow::Result<()> {
    if !python_has(&["grpc"]) {
        return Ok(());
    }
    let lb = Loopback::start().await?;
    let listen = lb.grpc_addr().to_string();
    let _server = python_server(&lb.dir, "grpc_server.py", GRPC_SERVER_PY, &[&listen])?;
    wait_listening(lb.grpc_addr(), "the gRPC server")?;
    let upstream = lb.grpc_upstream();
    let call = |method: &str, delay: &str| {
        python(
            &lb.dir,
            "grpc_client.py",
            GRPC_CLIENT_PY,
            &[&upstream, method, delay],
        )
    };
    assert_eq!(call("/echo.Echo/Call", "0")?, "OK|");
    assert_eq!(
        call("/echo.Echo/Call", "2")?,
        "UNAVAILABLE|upstream request timeout"
    );
    assert_eq!(call("/echo.Echo/Other", "0")?, "UNIMPLEMENTED|");
    Ok(())
}

/// Plaintext straight to the inbound port (curl, no capture): the
/// connection is closed, and the agent says why and what to do, once at
/// warn level however many come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_inbound_port_without_capture_is_explained_once() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let inbound = format!("http://{}:15006/", lb.server_ip());
    for _ in 0..3 {
        assert_eq!(status(&[&inbound]), 0, "closed unanswered");
    }
    let log = lb.server_log();
    let warned = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("straight to the inbound port"))
            .count()
    };
    wait_for(Duration::from_secs(5), "the warning", || async {
        (warned() > 0).then_some(())
    })
    .await?;
    assert_eq!(warned(), 1);
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("--capture iptables"), "says what to do");
    Ok(())
}

/// curl through the proxy port to a host the mesh does not know: 404
/// (`NR`), and the metrics name the host without its port and no
/// namespace, as Istio names a destination outside the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_in_proxy_mode_is_labelled_without_port_or_namespace() -> anyhow::Result<()>
{
    let lb = Loopback::start().await?;
    let proxy = lb.proxy();
    assert_eq!(status(&["-x", &proxy, "http://nothere.default:8000/"]), 404);
    let labels = [
        "destination_service=\"nothere.default\"",
        "destination_service_name=\"nothere.default\"",
        "destination_service_namespace=\"unknown\"",
        "response_flags=\"NR\"",
    ];
    assert_eq!(
        series(&lb.client_metrics(), "istio_requests_total", &labels),
        1
    );
    Ok(())
}

/// Hostile clients: connections that send their head a byte at a time,
/// or nothing, are closed at the request-headers timeout, and past
/// `--max-downstream-connections` new ones are closed at once, so a
/// flood of them neither piles up nor keeps the agent's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_capped() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut lb = Loopback::start().await?;
    lb.restart_client_with(&[
        "--request-headers-timeout",
        "3s",
        "--max-downstream-connections",
        "50",
    ])
    .await?;
    let rss = || -> u64 {
        let pid = lb.client.pid().unwrap_or_default();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before = rss();
    let addr = lb
        .upstream()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    // 300 idle connections at once: 50 held, the rest closed at once. The
    // timeout leaves the checks below (300 reads of 1 ms, on a busy
    // machine) well inside it: at 1 s some held ones were closed first.
    let conns: Vec<_> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    // Whether `s` was closed by the agent, waiting up to `within`.
    let closed = |mut s: &std::net::TcpStream, within: Duration| {
        s.set_read_timeout(Some(within)).unwrap();
        match s.read(&mut [0u8; 64]) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let tiny = Duration::from_millis(1);
    let at_once = conns.iter().filter(|s| closed(s, tiny)).count();
    assert!((240..=250).contains(&at_once), "closed at once: {at_once}");
    // The held ones, which sent nothing: closed at the timeout.
    std::thread::sleep(Duration::from_millis(3200));
    let open = conns.iter().filter(|s| !closed(s, tiny)).count();
    assert_eq!(open, 0);
    // A head a byte at a time: cut off too.
    let mut slow = std::net::TcpStream::connect(&addr)?;
    let t = std::time::Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: echo\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if slow.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Cut at the 3 s timeout, long before the 7 s the head takes.
    assert!(closed(&slow, Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // And the agent serves on, its memory back where it was (within 8 MB).
    assert_eq!(status(&[&lb.upstream()]), 200);
    let after = rss();
    assert!(after < before + 8 * 1024, "{before} kB, then {after} kB");
    Ok(())
}

/// HTTP proxy mode tunnels `CONNECT`: curl's `https://` URLs through the
/// proxy reach a TLS server outside the mesh (passed through) and one
/// inside it (its bytes carried over mTLS), and `--proxytunnel` carries
/// plain HTTP through the mesh to nginx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_tunnels_https_and_http_through_the_proxy_port() -> anyhow::Result<()> {
    let lb = Loopback::start().await?;
    let (Some(nginx), Some(openssl)) = (tool("nginx"), tool("openssl")) else {
        return Ok(());
    };
    let (cert, key) = self_signed(&openssl, &lb.dir)?;
    let tls = Some((cert.as_path(), key.as_path()));
    let page = "    location / { return 200 \"tls ok\"; }\n";
    let _outside = Nginx::start(&nginx, &lb.dir, lb.outside_addr(8443), tls, page)?;
    let _secure = Nginx::start(&nginx, &lb.dir, lb.server_addr(9443), tls, page)?;
    let Some(web) = self::nginx(&lb, "    location / { return 200 \"web ok\"; }\n")? else {
        return Ok(());
    };
    let proxy = lb.proxy();
    let outside = format!("https://{}/", lb.outside_addr(8443));
    assert_eq!(curl(&["-k", "-x", &proxy, &outside]), "tls ok");
    let inside = "https://secure.default.svc.cluster.local:9443/";
    assert_eq!(curl(&["-k", "-x", &proxy, inside]), "tls ok");
    assert_eq!(
        curl(&["-p", "-x", &proxy, "http://web:9081/tunnelled"]),
        "web ok"
    );
    let seen = web.requests();
    assert_eq!(seen, ["GET /tunnelled 200"], "through the mesh, once");
    // The server's agent carried the TLS bytes, as opaque TCP over mTLS.
    let log = std::fs::read_to_string(lb.server_log())?;
    assert!(
        log.lines()
            .any(|l| l.contains(r#""protocol":"tcp""#) && l.contains("inbound|9443||")),
        "no TCP connection to 9443 in the server's log"
    );
    Ok(())
}

/// A grpcio client with `http_proxy` tunnels to the service through the
/// mesh, and the calls inside are routed as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_with_http_proxy_reach_the_service() -> anyhow::Result<()> {
    if !python_has(&["grpc"]) {
        return Ok(());
    }
    let lb = Loopback::start().await?;
    let listen = lb.grpc_addr().to_string();
    let _server = python_server(&lb.dir, "grpc_server.py", GRPC_SERVER_PY, &[&listen])?;
    wait_listening(lb.grpc_addr(), "the gRPC server")?;
    let proxy = lb.proxy();
    let env = [("http_proxy", proxy.as_str()), ("no_proxy", "")];
    let call = |method: &str, delay: &str| {
        let target = "grpc.default.svc.cluster.local:9082";
        python_with(
            &lb.dir,
            "grpc_client.py",
            GRPC_CLIENT_PY,
            &[target, method, delay],
            &env,
        )
    };
    assert_eq!(call("/echo.Echo/Call", "0")?, "OK|");
    // The route's timeout applies inside the tunnel too.
    assert_eq!(
        call("/echo.Echo/Call", "2")?,
        "UNAVAILABLE|upstream request timeout"
    );
    Ok(())
}

/// A websockets client that goes through the proxy reaches a websockets
/// server behind the server's agent: CONNECT, then the upgrade inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_through_the_proxy_reach_the_server() -> anyhow::Result<()> {
    if !python_has(&["websockets.asyncio.client"]) {
        return Ok(());
    }
    let lb = Loopback::start().await?;
    let listen = lb.server_addr(9083).to_string();
    let _server = python_server(&lb.dir, "ws_server.py", WS_SERVER_PY, &[&listen])?;
    wait_listening(lb.server_addr(9083), "the WebSocket server")?;
    let got = python(
        &lb.dir,
        "ws_client.py",
        WS_CLIENT_PY,
        &["ws://ws.default.svc.cluster.local:9083/", &lb.proxy()],
    )?;
    assert_eq!(got, "ping");
    Ok(())
}
