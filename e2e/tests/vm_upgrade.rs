//! Upgrading the agent's package without a failed request, on a booted
//! Debian 12 ([`trellis_e2e::vm_upgrade`]): a client on the host sends 200
//! requests a second over keep-alive through the VM's agent (iptables
//! capture) to a server in the VM while `apt install ./newer.deb` runs,
//! which reloads the unit: a hot restart. No request fails, the unit stays
//! active without a restart, its main process is a new one, and the
//! capture rules stay as they were throughout (sampled, and their packet
//! counters never reset). Then `systemctl restart`
//! under the same load, whose failures are printed (a restart stops the
//! agent, and removes capture, before it starts again). Skipped where
//! namespaces or systemd-nspawn are missing.
use trellis_e2e::vm_upgrade::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_install_of_a_newer_agent_fails_no_request() -> anyhow::Result<()> {
    let Some(s) = Scenario::start("vmup").await? else {
        return Ok(());
    };
    let up = s.upgrade().await?;
    eprintln!("during apt install ./newer.deb: {up:?}");
    assert_eq!(up.counts.failed, 0, "{up:?}\n{}", s.journal());
    assert!(up.counts.total >= 400, "{up:?}");
    assert!(up.active_after, "{}", s.journal());
    assert_eq!(up.restarts.0, up.restarts.1, "NRestarts changed: {up:?}");
    assert_ne!(up.main_pid.0, up.main_pid.1, "MainPID unchanged: {up:?}");
    assert!(up.rules_changed.is_empty(), "capture changed: {up:?}");
    // Not flushed and filled again, even between two samples.
    assert!(
        up.redirected.1 > up.redirected.0,
        "capture replaced: {up:?}"
    );
    let journal = s.journal();
    assert!(
        journal.contains("took over from the agent that ran before"),
        "{journal}"
    );

    let restart = s.restart().await?;
    eprintln!(
        "during systemctl restart: {} of {} requests failed; capture missing in {} samples of 100 ms",
        restart.counts.failed,
        restart.counts.total,
        restart.rules_changed.len()
    );
    assert!(restart.active_after, "{}", s.journal());
    Ok(())
}
