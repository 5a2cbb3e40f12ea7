//! Hosts in network namespaces: one host reaches a workload on another
//! over the bridge, and dropping the net leaves nothing behind. Skipped
//! where namespaces cannot be made (not root, say).
use std::process::Command;
use std::time::Duration;

use trellis_e2e::netns::{self, Net};
use trellis_e2e::{bin, wait_for, Proc};

#[tokio::test]
async fn a_host_reaches_another_and_the_net_cleans_up() -> anyhow::Result<()> {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut net = Net::new("netns-test")?;
    let a = net.host("a")?;
    let b = net.host("b")?;
    assert_ne!(a.addr, b.addr);
    let bridge = net.bridge().to_string();

    let listen = format!("{}:8080", a.addr);
    let mut cmd = a.command(bin("trellis-echo"));
    cmd.args(["--http", &listen, "--name", "reviews"]);
    let mut echo = Proc::spawn("trellis-echo", &mut cmd, &dir.path().join("echo.log"))?;

    let curl = format!("curl -sf --max-time 2 http://{listen}/hello");
    let fetched = wait_for(
        Duration::from_secs(10),
        "host b to reach echo on host a",
        || {
            let body = b.sh(&curl).ok();
            async { body }
        },
    )
    .await;
    let body = match fetched {
        Ok(body) => body,
        Err(e) => {
            echo.check_running()?;
            return Err(e.context(echo.output()));
        }
    };
    let report: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(report["service"], "reviews");
    assert_eq!(report["host"], listen);

    // Each host has its own stack: the workload is not on b's loopback.
    assert!(b
        .sh("curl -sf --max-time 2 http://127.0.0.1:8080/")
        .is_err());
    let routes = b.sh("ip route")?;
    assert!(
        routes.contains(&format!("default via {}", net.gateway())),
        "{routes}"
    );

    let namespaces = [a.netns.clone(), b.netns.clone()];
    // Still running: dropping the net ends what runs in its hosts too.
    drop(net);
    wait_for(Duration::from_secs(5), "echo to be killed", || {
        let exited = echo.check_running().is_err().then_some(());
        async move { exited }
    })
    .await?;
    let list = Command::new("ip").args(["netns", "list"]).output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in &namespaces {
        assert!(!list.contains(ns.as_str()), "{ns} is left: {list}");
    }
    let link = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()?;
    assert!(!link.status.success(), "bridge {bridge} is left");
    Ok(())
}
