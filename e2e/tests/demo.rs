//! `trellis demo` as a user runs it: the real binaries of this build (a
//! 3-node control plane, a second cluster's learner on another network, an
//! east-west gateway per network, bookinfo's echo servers behind agents —
//! reviews v3 on the second network — and a client agent) on loopback,
//! without root. `--once` runs must route reviews as
//! `--split` says, exit 0 and leave no process behind; a run without
//! `--once` serves `curl` at its entry point, takes a new split applied
//! with `trellis apply`, and stops everything on Ctrl-C (SIGINT).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use trellis_e2e::{bin, remove_env_prefixed, wait_for_blocking};

/// A demo takes the first free loopback block and port 19080 if free; two
/// starting at once could pick the same, so the tests take turns.
static ONE_DEMO_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Longest a demo may take to start (a debug build on 2 cores takes a few seconds).
const START: Duration = Duration::from_secs(120);

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_DEMO_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `trellis demo` process with its output in files.
struct Demo {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
}

impl Demo {
    fn start(args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        let (stdout, stderr) = (tmp.path().join("stdout"), tmp.path().join("stderr"));
        let mut cmd = Command::new(bin("trellis"));
        cmd.arg("demo")
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        remove_env_prefixed(&mut cmd, "TRELLIS_");
        let child = cmd.spawn().expect("starting trellis demo");
        Self {
            _tmp: tmp,
            dir,
            stdout,
            stderr,
            child: Some(child),
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn output(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{err}", self.stdout())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Waits for the demo to exit; past `timeout` it is sent SIGTERM
    /// (it then stops its children) and the test fails.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let exited = wait_for_blocking(timeout, "trellis demo to exit", || {
            child.try_wait().unwrap()
        });
        match exited {
            Ok(st) => {
                self.child = None;
                st
            }
            Err(e) => {
                self.signal("-TERM");
                panic!("{e}:\n{}", self.output());
            }
        }
    }

    /// Waits until stdout has `text`, failing if the demo exits first.
    fn wait_for_output(&mut self, text: &str, timeout: Duration) {
        let child = self.child.as_mut().expect("running");
        let stdout = &self.stdout;
        let seen = wait_for_blocking(timeout, &format!("`{text}` on stdout"), || {
            if std::fs::read_to_string(stdout)
                .unwrap_or_default()
                .contains(text)
            {
                return Some(Ok(()));
            }
            child.try_wait().unwrap().map(Err)
        });
        match seen {
            Ok(Ok(())) => {}
            Ok(Err(st)) => {
                self.child = None;
                panic!(
                    "trellis demo exited ({st}) before `{text}`:\n{}",
                    self.output()
                );
            }
            Err(e) => panic!("{e}:\n{}", self.output()),
        }
    }

    fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("report.json"))
            .unwrap_or_else(|e| panic!("report.json: {e}\n{}", self.output()));
        serde_json::from_str(&text).unwrap()
    }

    /// The processes the demo started (`DIR/pids`: `PID NAME` lines).
    fn pids(&self) -> Vec<(u32, String)> {
        let text = std::fs::read_to_string(self.dir.join("pids")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (pid, name) = l.split_once(' ')?;
                Some((pid.parse().ok()?, name.to_string()))
            })
            .collect()
    }

    /// Fails if a process the demo started still runs; `restarts`: how
    /// many it started again.
    fn assert_all_stopped(&self, restarts: usize) {
        let pids = self.pids();
        assert_eq!(
            pids.len(),
            23 + restarts,
            "4 nodes, 2 gateways, 8 echo servers, 9 agents, {restarts} restarts: {pids:?}"
        );
        let alive: Vec<&(u32, String)> = pids
            .iter()
            .filter(|(pid, _)| Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        assert!(alive.is_empty(), "still running after the demo: {alive:?}");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed assertion while it runs: let it stop its children.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

fn counts(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

#[test]
fn once_routes_reviews_by_the_split_and_stops_everything() {
    let _turn = one_at_a_time();
    let mut demo = Demo::start(&["--once", "--split", "70,30,0", "--requests", "60"]);
    let st = demo.wait(START);
    let out = demo.stdout();
    assert!(st.success(), "{st}:\n{}", demo.output());
    assert!(out.contains("3 nodes on 127.0.0.1:"), "{out}");
    assert!(
        out.contains("proxy-status: 11 agents and gateways on 4 nodes, all SYNCED"),
        "{out}"
    );
    assert!(
        out.contains("productpage answered 60 of 60; it called details (60 answered) and reviews (60 answered)"),
        "{out}"
    );
    assert!(out.contains("reviews v3     0    0%"), "{out}");
    assert!(
        out.contains("second cluster cluster-2 on network-2: a node on 127.20."),
        "{out}"
    );
    assert!(
        out.contains("0 answered calls to reviews v3 went through network-2's gateway"),
        "{out}"
    );
    // reviews v1 and v2 run in both clusters: locality keeps productpage
    // (cluster-1) on cluster-1's.
    assert!(
        out.contains("0 answered calls to reviews v1 went through network-2's gateway"),
        "{out}"
    );
    assert!(out.contains("stopped 23 processes"), "{out}");

    let r = demo.report();
    assert_eq!(r["split"], serde_json::json!([70, 30, 0]));
    assert_eq!(r["problems"], serde_json::json!([]));
    let t = &r["tally"];
    assert_eq!(
        (t["sent"].as_u64(), t["answered"].as_u64()),
        (Some(60), Some(60))
    );
    assert_eq!(t["details"].as_u64(), Some(60));
    assert_eq!(t["failures"], serde_json::json!({}));
    let reviews = counts(&t["reviews"]);
    let (v1, v2) = (reviews.get("v1").copied(), reviews.get("v2").copied());
    assert_eq!(reviews.len(), 2, "only v1 and v2 have weight: {reviews:?}");
    // Binomial(60, 0.3) gives no v2 once in 2 billion runs.
    assert!(v1 > Some(0) && v2 > Some(0), "{reviews:?}");
    // reviews v2 calls ratings, v1 does not.
    assert_eq!(counts(&t["ratings"]), map(&[("v2", v2.unwrap())]));
    assert_eq!(r["expected"]["v3"], serde_json::json!([0, 0]));

    let by_cluster = &t["reviews_by_cluster"];
    assert_eq!(
        counts(&by_cluster["cluster-1"]),
        map(&[("v1", v1.unwrap()), ("v2", v2.unwrap())])
    );
    assert!(by_cluster.get("cluster-2").is_none(), "{by_cluster}");

    let proxies = r["proxies"].as_object().unwrap();
    assert_eq!(proxies.len(), 11, "{proxies:?}");
    assert!(proxies.values().all(|s| s == "SYNCED"), "{proxies:?}");
    for (w, block) in [
        ("productpage-v1", 10),
        ("details-v1", 10),
        ("reviews-v1", 10),
        ("reviews-v2", 10),
        ("reviews-v1", 20),
        ("reviews-v2", 20),
        ("reviews-v3", 20),
        ("ratings-v1", 10),
        ("demo-client", 10),
    ] {
        assert!(
            proxies
                .keys()
                .any(|p| p.starts_with(&format!("{w}-127-{block}-"))),
            "{w} not in {proxies:?}"
        );
    }
    for n in ["network-1", "network-2"] {
        assert!(
            proxies
                .keys()
                .any(|p| p.starts_with(&format!("eastwest-{n}"))),
            "{n}'s gateway not in {proxies:?}"
        );
    }
    demo.assert_all_stopped(0);
}

#[test]
fn once_with_all_weight_on_v3_is_answered_by_v3_alone() {
    let _turn = one_at_a_time();
    let mut demo = Demo::start(&["--once", "--split", "0,0,100", "--requests", "40"]);
    let st = demo.wait(START);
    assert!(st.success(), "{st}:\n{}", demo.output());
    let r = demo.report();
    let t = &r["tally"];
    assert_eq!(counts(&t["reviews"]), map(&[("v3", 40)]));
    assert_eq!(counts(&t["ratings"]), map(&[("v3", 40)]));
    assert_eq!(r["problems"], serde_json::json!([]));
    let out = demo.stdout();
    assert!(out.contains("reviews v3    40  100%"), "{out}");
    // v3 is only on network-2, productpage and ratings only on network-1:
    // every call to v3 and every call v3 made crossed a gateway, which
    // shows it in its metrics.
    assert!(
        out.contains("40 answered calls to reviews v3 went through network-2's gateway"),
        "{out}"
    );
    assert!(
        out.contains("40 answered calls to ratings v1 went through network-1's gateway"),
        "{out}"
    );
    let opened = |network: &str, dest: &str| {
        r["gateways"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["network"] == network)
            .and_then(|g| g["opened"][dest].as_u64())
            .unwrap_or(0)
    };
    assert!(opened("network-2", "reviews v3") >= 1, "{r}");
    assert!(opened("network-1", "ratings v1") >= 1, "{r}");
    assert_eq!(opened("network-1", "reviews v3"), 0, "{r}");
    demo.assert_all_stopped(0);
}

#[test]
fn failover_moves_reviews_to_cluster_2_through_its_gateway_and_back() {
    let _turn = one_at_a_time();
    let mut demo = Demo::start(&["--once", "--failover", "--requests", "20"]);
    // Start, then up to 30 s to switch and 60 s to recover.
    let st = demo.wait(START + Duration::from_secs(90));
    let out = demo.stdout();
    assert!(st.success(), "{st}:\n{}", demo.output());
    for want in [
        "failover       cluster-1's reviews v1 and v2 go down (SIGKILL to echo-reviews-v1-cluster-1, agent-reviews-v1-cluster-1, echo-reviews-v2-cluster-1, agent-reviews-v2-cluster-1)",
        "s from the kill until cluster-2 answered, and every answer since;",
        "network-2's gateway opened reviews v1 ",
        "until cluster-1 answered again",
        "stopped 23 processes",
    ] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    let r = demo.report();
    assert_eq!(r["problems"], serde_json::json!([]));
    let f = &r["failover"];
    assert_eq!(f["versions"], serde_json::json!(["v1", "v2"]));
    let from = |phase: &str, cluster: &str| counts(&f[phase]["reviews_by_cluster"][cluster]);
    let has = |m: &BTreeMap<String, u64>, v: &str| m.get(v).copied().unwrap_or(0) > 0;
    // Before: productpage in cluster-1 uses cluster-1's v1 and v2.
    let before = from("before", "cluster-1");
    assert!(has(&before, "v1") || has(&before, "v2"), "{f}");
    let away = from("before", "cluster-2");
    assert!(!has(&away, "v1") && !has(&away, "v2"), "{f}");
    // The switch: within its time, then every answer from cluster-2.
    let switch = f["switch"]["secs"].as_f64().expect("switched");
    assert!(switch < 30.0, "{f}");
    // Lossless: requests go one at a time, so none is in flight on the
    // killed agents, and the first to find one dead is retried (Istio's
    // default retry on connect failures) on cluster-2's endpoint.
    assert_eq!(f["switch"]["failed"], 0, "{f}");
    assert!(
        f["after"]["reviews_by_cluster"].get("cluster-1").is_none(),
        "{f}"
    );
    let after = from("after", "cluster-2");
    assert!(has(&after, "v1") && has(&after, "v2"), "{f}");
    assert_eq!(f["after"]["failures"], serde_json::json!({}));
    // Through network-2's gateway, which opened connections to them.
    let opened = counts(&f["gateway_opened"]);
    assert!(
        has(&opened, "reviews v1") && has(&opened, "reviews v2"),
        "{f}"
    );
    assert!(
        f["after"]["crossed"]["cluster-2"]["reviews v1"].as_u64() > Some(0),
        "{f}"
    );
    // Restarted: cluster-1 answers again, cluster-2 no longer for v1, v2.
    assert!(f["recovery"]["secs"].as_f64().is_some(), "{f}");
    let back = from("recovered", "cluster-1");
    assert!(has(&back, "v1") && has(&back, "v2"), "{f}");
    let still = from("recovered", "cluster-2");
    assert!(!has(&still, "v1") && !has(&still, "v2"), "{f}");
    // 4 processes restarted, and stopped at the end like the rest.
    demo.assert_all_stopped(4);
}

/// GETs `url` with curl: the reviews version in productpage's report, or
/// what went wrong.
fn reviews_version(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    if code.trim() != "200" {
        return format!("status {}", code.trim());
    }
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let reviews = v["calls"].as_array().and_then(|calls| {
        calls
            .iter()
            .find(|c| c["url"].as_str().is_some_and(|u| u.contains("/reviews/")))
    });
    match reviews {
        Some(c) => c["report"]["version"]
            .as_str()
            .unwrap_or("no report")
            .to_string(),
        None => "no call to reviews".into(),
    }
}

#[test]
fn runs_until_interrupted_serving_curl_and_a_new_split() {
    let _turn = one_at_a_time();
    let mut demo = Demo::start(&["--split", "100,0,0", "--requests", "10", "--rate", "5"]);
    demo.wait_for_output("Ctrl-C to stop", START);
    let out = demo.stdout();
    let entry = demo.report()["entry"].as_str().unwrap().to_string();
    assert!(out.contains(&format!("curl -s {entry}")), "{out}");
    for _ in 0..5 {
        assert_eq!(reviews_version(&entry), "v1");
    }

    // As the demo tells its user: edit the split's file and apply it.
    let vs = demo.dir.join("mesh/4-reviews-virtualservice.yaml");
    let yaml = std::fs::read_to_string(&vs).unwrap();
    let weights: Vec<&str> = yaml.lines().filter(|l| l.contains("weight:")).collect();
    assert_eq!(
        weights,
        ["      weight: 100", "      weight: 0", "      weight: 0"]
    );
    let yaml = yaml
        .replace("weight: 100", "weight: X")
        .replacen("weight: 0", "weight: 100", 1)
        .replace("weight: X", "weight: 0");
    std::fs::write(&vs, yaml).unwrap();
    let mut apply = Command::new(bin("trellis"));
    remove_env_prefixed(&mut apply, "TRELLIS_");
    let applied = apply
        .arg("apply")
        .arg("-f")
        .arg(&vs)
        .env("TRELLIS_CONFIG", demo.dir.join("admin.yaml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(
        said.contains("virtualservice.networking.istio.io/reviews configured"),
        "{said}"
    );
    // Pushed to productpage's agent within seconds: then only v2.
    let mut seen = Vec::new();
    let only_v2 = wait_for_blocking(Duration::from_secs(10), "five v2 answers in a row", || {
        seen.push(reviews_version(&entry));
        (seen.len() >= 5 && seen[seen.len() - 5..].iter().all(|v| v == "v2")).then_some(())
    });
    assert!(only_v2.is_ok(), "still not only v2: {seen:?}");
    assert!(seen.iter().all(|v| v == "v1" || v == "v2"), "{seen:?}");

    // The light traffic's lines every 10 s, then Ctrl-C.
    demo.wait_for_output("requests, ", Duration::from_secs(20));
    demo.signal("-INT");
    let st = demo.wait(Duration::from_secs(30));
    let out = demo.stdout();
    assert!(st.success(), "{st}:\n{}", demo.output());
    let line = out.lines().find(|l| l.starts_with("[  ")).unwrap();
    assert!(line.contains("answered; reviews v1 "), "{line}");
    assert!(!line.contains("failed"), "{line}");
    assert!(out.contains("stopped 23 processes"), "{out}");
    demo.assert_all_stopped(0);
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    for (args, says) in [
        (&["--split", "50,50"][..], "summing to 100"),
        (&["--split", "50,30,30"][..], "summing to 100"),
        (&["--requests", "0"][..], "--requests"),
        (
            &["--failover", "--split", "0,0,100"][..],
            "give v1 or v2 a weight",
        ),
    ] {
        let mut demo = Demo::start(args);
        let st = demo.wait(Duration::from_secs(10));
        assert!(!st.success(), "{args:?}");
        assert!(demo.output().contains(says), "{args:?}: {}", demo.output());
        assert!(demo.pids().is_empty(), "{args:?} started {:?}", demo.pids());
    }
    // A directory with something in it is not the demo's to fill.
    let full = tempfile::tempdir().unwrap();
    std::fs::write(full.path().join("notes"), "mine").unwrap();
    let out = Command::new(bin("trellis"))
        .args(["demo", "--once", "--dir"])
        .arg(full.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not empty"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(full.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
