//! `trellis validate` as an operator runs it: the real binary, no control
//! plane anywhere.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const GOOD: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    connectionPool:
      http:
        http2KeepAlive: {interval: 10s}
";

const BAD: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: prod
spec:
  hosts: [reviews]
  http:
  - timout: 5s
    route:
    - {destination: {host: a}, weight: 50}
    - {destination: {host: b}, weight: 10}
";

fn trellis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trellis"))
        .args(args)
        // Nothing to connect to: validate must not need it.
        .env("TRELLIS_CONFIG", "/nonexistent/trellis-config.yaml")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trellis runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn valid_files_pass_offline_and_warnings_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dr.yaml"), GOOD).unwrap();
    let out = trellis(&["validate", "-f", dir.path().to_str().unwrap()], None);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 resource valid"), "{stdout}");
    assert!(
        stderr.contains("Warning: ")
            && stderr.contains("dr.yaml: document 1 (DestinationRule default/reviews): warning: spec.trafficPolicy.connectionPool.http.http2KeepAlive: accepted, not acted on"),
        "{stderr}"
    );
}

#[test]
fn every_error_is_printed_and_the_exit_code_says_so() {
    let out = trellis(&["validate", "-f", "-"], Some(BAD));
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for line in [
        "<stdin>: document 1 (VirtualService prod/reviews): spec.http[0].timout: unknown field `timout`",
        "<stdin>: document 1 (VirtualService prod/reviews): spec.http[0].route: destination weights sum to 60, they must sum to 100",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(line)), "{line}\n{stdout}");
    }
    assert!(text(&out.stderr).contains("2 errors found; nothing would be applied"));
}

#[test]
fn apply_refuses_a_bad_file_before_it_looks_for_a_control_plane() {
    let out = trellis(&["apply", "-f", "-"], Some(BAD));
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("<stdin>: document 1 (VirtualService prod/reviews): spec.http[0].timout: unknown field `timout`"),
        "{stderr}"
    );
    // Refused here: the admin config (which does not exist) was not read.
    assert!(!stderr.contains("trellis-config.yaml"), "{stderr}");
}
