//! A booted Debian 12 in the mesh (root; skipped where namespaces or
//! systemd-nspawn are missing): the installed trellis-agent package, with
//! iptables capture, makes the VM a workload of WorkloadGroup `reviews`
//! (a real server in the VM), beside `ratings`, a workload in a network
//! namespace with its own agent and capture, with PeerAuthentication
//! STRICT (see [`trellis_e2e::vm_mesh`]). Traffic both ways, by mesh name,
//! over mTLS, the VM's resolver answering mesh names through its agent;
//! then a reboot of the container without the control plane: the agent
//! is back from its kept certificate and cached config, with the same
//! identity and its capture, traffic flows both ways; and once the
//! control plane is back, the agent reconnects. One container for all
//! the steps (a boot takes seconds).
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use trellis_e2e::vm::{self, Vm};
use trellis_e2e::vm_mesh::{VmMesh, RATINGS_URL, REVIEWS_URL};
use trellis_e2e::wait_for_blocking;

/// How long config may take to reach the agents (a WorkloadEntry
/// registered, pushed to the other agent).
const PROPAGATION: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_serves_and_calls_the_mesh_over_mtls_and_survives_a_reboot() -> anyhow::Result<()> {
    if let Some(why) = vm::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let name = format!("trellis-vmmesh-{}", std::process::id());
    let mut m = VmMesh::start("vmmesh", &name).await?;
    m.install_agent(vm::debs()?)?;
    m.join(&m.token()?)?;
    let td = m.env.cp.trust_domain.clone();
    let principal = |sa: &str| format!("spiffe://{td}/ns/default/sa/{sa}");

    both_ways(&m, &principal)?;
    // Plaintext to the VM's server, which listens on every address, from
    // the root namespace: captured, and refused (STRICT).
    let plain = Command::new("curl")
        .args([
            "-sf",
            "-m",
            "3",
            &format!("http://{}:9080/", m.vm_host.addr),
        ])
        .output()?;
    assert!(
        !plain.status.success(),
        "plaintext reached the VM's server: {}",
        String::from_utf8_lossy(&plain.stdout)
    );
    // Both agents' metrics: the requests went over mTLS between the two
    // workloads' identities, seen from both sides.
    let ratings_metrics = || m.ratings.sh(METRICS);
    let (reviews, ratings) = (principal("reviews"), principal("ratings"));
    for (metrics, reporter, from, to) in [
        (m.vm.sh(METRICS)?, "source", &reviews, &ratings),
        (m.vm.sh(METRICS)?, "destination", &ratings, &reviews),
        (ratings_metrics()?, "source", &ratings, &reviews),
        (ratings_metrics()?, "destination", &reviews, &ratings),
    ] {
        assert!(
            mtls_request(&metrics, reporter, from, to),
            "no {reporter} request {from} -> {to} over mTLS:\n{metrics}"
        );
    }

    // The reboot, without the control plane.
    let (cert, key) = (kept(&m.vm, "cert-chain.pem")?, kept(&m.vm, "key.pem")?);
    assert!(m.vm.path(&format!("{STATE}/config-cache.json")).exists());
    m.env.cp.stop(1)?;
    let vm_host = m.vm_host.clone();
    m.vm.reboot(|| {
        // The agent stopped with the container: its rules went with it
        // (the network namespace outlives the container).
        let left = trellis_rules(&vm_host.sh("iptables -t nat -S")?);
        anyhow::ensure!(left.is_empty(), "capture left while down: {left}");
        Ok(())
    })?;
    // Enabled: started at boot; READY (Type=notify) from what it kept.
    wait_for_blocking(
        Duration::from_secs(30),
        "the agent active after the reboot",
        || {
            show(&m.vm)
                .ok()?
                .contains("ActiveState=active")
                .then_some(())
        },
    )
    .with_context(|| m.journal())?;
    let props = show(&m.vm)?;
    for want in ["Type=notify", "SubState=running", "NRestarts=0"] {
        assert!(props.contains(want), "{want}: {props}\n{}", m.journal());
    }
    let boot = m.vm.sh("journalctl -b -u trellis-agent --no-pager")?;
    assert!(boot.contains("serving the cached config"), "{boot}");
    // Same key; the same certificate (still valid: no renewal was due).
    assert_eq!(
        kept(&m.vm, "key.pem")?,
        key,
        "the key changed across the reboot"
    );
    assert_eq!(
        kept(&m.vm, "cert-chain.pem")?,
        cert,
        "the certificate changed"
    );
    let rules = trellis_rules(&m.vm.sh("iptables -t nat -S")?);
    assert!(
        rules.contains("-A OUTPUT -p tcp -j TRELLIS_OUTPUT"),
        "capture back after the reboot: {rules}"
    );
    both_ways(&m, &principal)?;
    // The restarted agent's counters: the same identity, over mTLS.
    assert!(
        mtls_request(&m.vm.sh(METRICS)?, "source", &reviews, &ratings),
        "after the reboot"
    );

    // The control plane back: the agent reconnects and is in sync.
    m.env.cp.restart(1).await?;
    let vm_addr = m.vm_host.addr.to_string();
    let cp = &m.env.cp;
    wait_for_blocking(PROPAGATION, "the VM's agent back in proxy-status", || {
        let status = cp.cli(&["proxy-status"]).ok()?;
        status
            .lines()
            .any(|l| l.contains(&vm_addr) && l.contains("SYNCED"))
            .then_some(())
    })
    .with_context(|| format!("{:?}\n{}", cp.cli(&["proxy-status"]), m.journal()))?;
    Ok(())
}

/// (a) VM → mesh: the VM's resolver answers ratings' mesh name (its
/// agent's DNS, through capture), and curl in the VM gets ratings'
/// answer, which saw the VM's identity (XFCC). (b) mesh → VM: curl in
/// ratings gets the VM's server's answer, which saw ratings' identity.
/// Each waits for the config to reach the agents.
fn both_ways(m: &VmMesh, principal: &dyn Fn(&str) -> String) -> anyhow::Result<()> {
    let vip = wait_for_blocking(PROPAGATION, "the VM resolving ratings", || {
        let out =
            m.vm.sh("getent hosts ratings.default.svc.cluster.local")
                .ok()?;
        out.split_whitespace().next().map(str::to_string)
    })
    .with_context(|| m.journal())?;
    assert!(vip.starts_with("240.240."), "a mesh VIP: {vip}");
    let answer = wait_for_blocking(PROPAGATION, "the VM calling ratings", || {
        m.call_from_vm(RATINGS_URL).ok()
    })
    .with_context(|| m.journal())?;
    check_answer(&answer, "ratings", &principal("reviews"))?;
    let answer = wait_for_blocking(PROPAGATION, "ratings calling the VM", || {
        m.call_from_ratings(REVIEWS_URL).ok()
    })
    .with_context(|| m.journal())?;
    check_answer(&answer, "reviews", &principal("ratings"))
}

/// `answer` is `service`'s echo report of a request that came over mTLS
/// from `client` (the client certificate's URI in XFCC).
fn check_answer(answer: &str, service: &str, client: &str) -> anyhow::Result<()> {
    let report: Value = serde_json::from_str(answer).with_context(|| answer.to_string())?;
    assert_eq!(report["service"], service, "{answer}");
    let xfcc = report["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(xfcc.contains(&format!("URI={client}")), "{answer}");
    Ok(())
}

/// Whether `metrics` count a 200 that `reporter` saw from `from` to `to`
/// over mTLS.
fn mtls_request(metrics: &str, reporter: &str, from: &str, to: &str) -> bool {
    metrics.lines().any(|l| {
        l.starts_with("istio_requests_total{")
            && l.contains(&format!("reporter=\"{reporter}\""))
            && l.contains(&format!("source_principal=\"{from}\""))
            && l.contains(&format!("destination_principal=\"{to}\""))
            && l.contains("connection_security_policy=\"mutual_tls\"")
            && l.contains("response_code=\"200\"")
    })
}

/// The agent's metrics, asked from where it runs.
const METRICS: &str = "curl -sf 127.0.0.1:15020/stats/prometheus";

/// The agent's state directory in the VM.
const STATE: &str = "/var/lib/trellis/agent";

/// A file of the agent's state.
fn kept(vm: &Vm, file: &str) -> std::io::Result<Vec<u8>> {
    std::fs::read(vm.path(&format!("{STATE}/{file}")))
}

/// The unit's properties.
fn show(vm: &Vm) -> anyhow::Result<String> {
    vm.sh("systemctl show -p ActiveState,SubState,NRestarts,Type trellis-agent")
}

/// The lines of `iptables -S` output that name trellis.
fn trellis_rules(all: &str) -> String {
    all.lines()
        .filter(|l| l.contains("TRELLIS"))
        .collect::<Vec<_>>()
        .join("\n")
}
