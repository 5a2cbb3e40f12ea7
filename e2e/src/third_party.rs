//! Third-party servers and clients, run as a new user would run them in
//! front of and behind the agents: nginx, curl, nghttp, and Python's
//! grpcio and websockets. `.ci/run` installs them; a test that needs one
//! that is missing says so and skips ([`tool`]).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::{wait_for_blocking, Proc};

/// Where `program` is installed (`PATH`, then the sbin directories a
/// user's `PATH` may lack), or `None` after telling why the test skips.
pub fn tool(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipping: `{program}` is not installed (.ci/run installs it)");
    }
    found
}

/// Whether Python 3 can import every module of `modules`; if not, tells
/// why the test skips.
pub fn python_has(modules: &[&str]) -> bool {
    let imports = modules.join(", ");
    let ok = Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: python3 cannot import {imports} (.ci/run installs them)");
    }
    ok
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    Ok(wait_for_blocking(Duration::from_secs(10), what, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(drop)
    })?)
}

/// nginx, as the application, on one address, in a directory of its own.
pub struct Nginx {
    _proc: Proc,
    /// One line per request: `METHOD PATH STATUS`.
    pub access_log: PathBuf,
}

impl Nginx {
    /// Starts `nginx` (the path [`tool`] found) on `listen`, over TLS
    /// with `tls` (certificate and key) if given, serving `locations`
    /// (nginx `location` blocks) in a `server` block whose client header
    /// buffers take heads of up to 512 KiB, from `dir`.
    pub fn start(
        nginx: &Path,
        dir: &Path,
        listen: SocketAddr,
        tls: Option<(&Path, &Path)>,
        locations: &str,
    ) -> anyhow::Result<Nginx> {
        let dir = dir.join(format!("nginx-{}-{}", listen.ip(), listen.port()));
        std::fs::create_dir_all(&dir)?;
        let access_log = dir.join("access.log");
        let d = dir.display();
        let tls = match tls {
            Some((cert, key)) => format!(
                " ssl;\n    ssl_certificate {};\n    ssl_certificate_key {}",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let conf = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
  log_format short '$request_method $request_uri $status';
  access_log {log} short;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  large_client_header_buffers 4 512k;
  server {{
    listen {listen}{tls};
{locations}
  }}
}}
"#,
            log = access_log.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let proc = Proc::spawn(
            "nginx",
            Command::new(nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf_path),
            &dir.join("nginx.log"),
        )
        .context("starting nginx")?;
        wait_listening(listen, "nginx listening")?;
        Ok(Nginx {
            _proc: proc,
            access_log,
        })
    }

    /// The requests nginx logged, `METHOD PATH STATUS` each.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A self-signed certificate and its key for `localhost`, made with
/// openssl in `dir`: their paths.
pub fn self_signed(openssl: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((cert, key))
}

/// nginx `add_header` lines that make a response head of about `bytes`
/// bytes (nginx takes a configuration token of at most 4 KiB).
pub fn nginx_big_headers(bytes: usize) -> String {
    let chunk = 4000;
    (0..bytes.div_ceil(chunk))
        .map(|i| format!("      add_header x-big-{i} \"{}\";\n", "a".repeat(chunk)))
        .collect()
}

/// A gRPC server (grpcio) on the address in its first argument: method
/// `/echo.Echo/Call` answers the request's bytes after the delay in
/// seconds its `x-delay` metadata asks.
pub const GRPC_SERVER_PY: &str = r#"
import sys, time
from concurrent import futures
import grpc

def call(request, context):
    delay = dict(context.invocation_metadata()).get("x-delay", "0")
    time.sleep(float(delay))
    return request

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
handler = grpc.method_handlers_generic_handler(
    "echo.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)})
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(sys.argv[1])
server.start()
server.wait_for_termination()
"#;

/// A gRPC client (grpcio): calls method `argv[2]` of `argv[1]` once with
/// `x-delay: argv[3]`, and prints `OK` or the status code's name and
/// details, `CODE|DETAILS`.
pub const GRPC_CLIENT_PY: &str = r#"
import sys
import grpc

target, method, delay = sys.argv[1], sys.argv[2], sys.argv[3]
with grpc.insecure_channel(target) as channel:
    call = channel.unary_unary(method)
    try:
        call(b"ping", metadata=[("x-delay", delay)], timeout=10)
        print("OK|")
    except grpc.RpcError as e:
        print(f"{e.code().name}|{e.details()}")
"#;

/// Writes `source` to `dir/name` and runs it with python3 and `args`:
/// what it printed on stdout, trimmed.
pub fn python(dir: &Path, name: &str, source: &str, args: &[&str]) -> anyhow::Result<String> {
    python_with(dir, name, source, args, &[])
}

/// [`python`] with environment variables `env` set.
pub fn python_with(
    dir: &Path,
    name: &str,
    source: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<String> {
    let script = dir.join(name);
    std::fs::write(&script, source)?;
    let mut cmd = Command::new("python3");
    cmd.arg(&script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A WebSocket server (websockets) on `argv[1]` (`HOST:PORT`) that sends
/// back each message it gets.
pub const WS_SERVER_PY: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    async with serve(echo, host, int(port)):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"#;

/// A WebSocket client (websockets): connects to `argv[1]` through the
/// HTTP proxy `argv[2]`, sends `ping` and prints what comes back.
pub const WS_CLIENT_PY: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect

async def main():
    async with connect(sys.argv[1], proxy=sys.argv[2], open_timeout=10) as ws:
        await ws.send("ping")
        print(await ws.recv())

asyncio.run(main())
"#;

/// Starts `source` with python3 and `args` in the background, its output
/// in `dir/NAME.log`.
pub fn python_server(dir: &Path, name: &str, source: &str, args: &[&str]) -> anyhow::Result<Proc> {
    let script = dir.join(name);
    std::fs::write(&script, source)?;
    Proc::spawn(
        name,
        Command::new("python3").arg(&script).args(args),
        &dir.join(format!("{name}.log")),
    )
}
