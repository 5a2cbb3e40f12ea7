//! `trellis-bench inject`: the sidecar injector under a steady creation of
//! pods (`--rate`, default 50 per second) in a namespace labelled for
//! injection, against a real `kube-apiserver` v1.20 that calls the
//! control-plane node's webhook over TLS ([`WebhookBed`], as
//! `tests/kube_webhook.rs` runs it). Root, etcd and openssl, as those
//! tests.
//!
//! Three figures: the webhook's own time per review, from the request's
//! head to its answer (the node's `review answered` debug lines, exact
//! percentiles; the goal is p99 under 5 ms); the API server's view of the
//! same calls, TLS and connection included (its
//! `apiserver_admission_webhook_admission_duration_seconds` histogram,
//! whose first bucket is 5 ms: the share of calls within it); and the
//! whole pod creation as the client sees it.
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use trellis_e2e::kube_webhook::WebhookBed;
use trellis_kubernetes::client::{client, Source};

use crate::report::percentile;
use crate::table::render;

/// The webhook's entry in the bed's MutatingWebhookConfiguration.
const WEBHOOK: &str = "inject.trellis.io";
const NAMESPACE: &str = "bench";

#[derive(clap::Args)]
pub struct Args {
    /// Pods created per second (open loop: on schedule, whatever the
    /// answers' pace).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Seconds of creation.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(why) = trellis_e2e::kube::unavailable() {
        bail!("cannot run an API server here: {why}");
    }
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let bed = WebhookBed::start(
        "bench-inject",
        &[("TRELLIS_LOG", "warn,trellis_kubernetes::webhook=debug")],
    )
    .await?;
    bed.patched().await?;
    bed.namespace(NAMESPACE, true)?;
    let kube = client(&Source::Kubeconfig(bed.kube.kubeconfig.clone())).await?;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), NAMESPACE);
    // Until the API server has seen the caBundle, creations fail.
    trellis_e2e::wait_for(Duration::from_secs(30), "a first injected pod", || {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod("warm-up"))
                .await
                .ok()
        }
    })
    .await?;
    let log = &bed.node.node(1).log;
    let before = std::fs::read_to_string(log)?.len();
    let before_metrics = webhook_histogram(&kube).await?;

    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rate);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let pods = pods.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let created = pods
                .create(&PostParams::default(), &pod(&format!("p-{i}")))
                .await;
            let injected = created.is_ok_and(|p| {
                p.spec
                    .is_some_and(|s| s.containers.iter().any(|c| c.name == "trellis-agent"))
            });
            (t.elapsed(), injected)
        }));
    }
    let mut client_side = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (took, injected) = t.await?;
        client_side.push(took);
        failed += usize::from(!injected);
    }
    let sent_in = started.elapsed();
    let text = std::fs::read_to_string(log)?;
    let mut webhook: Vec<Duration> = text[before..]
        .lines()
        .filter(|l| l.contains("review answered") && l.contains("/inject"))
        .filter_map(elapsed)
        .collect();
    webhook.sort();
    client_side.sort();
    let after_metrics = webhook_histogram(&kube).await?;

    println!(
        "trellis-bench inject: {total} pods at {}/s in {:.1} s, {failed} not created or not injected \
         (kube-apiserver v1.20, node built {})",
        args.rate,
        sent_in.as_secs_f64(),
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    let ms = |d: Option<Duration>| {
        d.map_or("-".into(), |d| {
            format!("{:.2} ms", d.as_secs_f64() * 1000.0)
        })
    };
    let mut rows = vec![[
        "measured".to_string(),
        "n".into(),
        "p50".into(),
        "p99".into(),
        "max".into(),
        "goal".into(),
    ]];
    rows.push([
        "webhook: review to answer".into(),
        webhook.len().to_string(),
        ms(percentile(&webhook, 50.0)),
        ms(percentile(&webhook, 99.0)),
        ms(webhook.last().copied()),
        "p99 < 5 ms".into(),
    ]);
    rows.push([
        "client: pod create".into(),
        client_side.len().to_string(),
        ms(percentile(&client_side, 50.0)),
        ms(percentile(&client_side, 99.0)),
        ms(client_side.last().copied()),
        "".into(),
    ]);
    print!("{}", render(&rows));
    match (before_metrics, after_metrics) {
        (Some((in_5ms_0, count_0)), Some((in_5ms, count))) if count > count_0 => println!(
            "API server's view (TLS and connection included): {} of {} calls within 5 ms ({:.1} %)",
            in_5ms - in_5ms_0,
            count - count_0,
            100.0 * (in_5ms - in_5ms_0) as f64 / (count - count_0) as f64
        ),
        _ => println!("API server's view: not reported by its /metrics"),
    }
    if webhook.len() < total as usize {
        bail!(
            "{} reviews logged for {total} pods: is the node logging at debug?",
            webhook.len()
        );
    }
    Ok(())
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "app:1"}]
        }
    }))
    .expect("a pod")
}

/// `elapsed_us=N` of a `review answered` line.
fn elapsed(line: &str) -> Option<Duration> {
    let us = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_us="))?;
    us.parse().ok().map(Duration::from_micros)
}

/// The API server's calls of [`WEBHOOK`] so far: those within 5 ms and
/// all, summed over operations and outcomes; `None` if it reports none.
async fn webhook_histogram(kube: &kube::Client) -> anyhow::Result<Option<(u64, u64)>> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .context("a request")?;
    let text = kube
        .request_text(req)
        .await
        .context("the API server's /metrics")?;
    Ok(histogram(&text, WEBHOOK))
}

/// From Prometheus text: the `le="0.005"` bucket and the count of the
/// webhook `name`'s admission durations.
fn histogram(text: &str, name: &str) -> Option<(u64, u64)> {
    const METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";
    let label = format!("name=\"{name}\"");
    let mut sums = (0u64, 0u64);
    let mut seen = false;
    for line in text.lines().filter(|l| l.contains(&label)) {
        let value = || line.rsplit(' ').next()?.parse::<f64>().ok();
        if line.starts_with(&format!("{METRIC}_bucket")) && line.contains("le=\"0.005\"") {
            sums.0 += value()? as u64;
        } else if line.starts_with(&format!("{METRIC}_count")) {
            sums.1 += value()? as u64;
            seen = true;
        }
    }
    seen.then_some(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_elapsed_time_of_a_log_line() {
        let line = "2026-12-07T21:00:00.123Z DEBUG trellis_kubernetes::webhook: review answered path=\"/inject\" status=200 elapsed_us=1234";
        assert_eq!(elapsed(line), Some(Duration::from_micros(1234)));
        assert_eq!(elapsed("review answered"), None);
    }

    #[test]
    fn the_first_bucket_and_the_count_of_one_webhook() {
        let text = r#"
apiserver_admission_webhook_admission_duration_seconds_bucket{name="inject.trellis.io",operation="CREATE",rejected="false",type="admit",le="0.005"} 97
apiserver_admission_webhook_admission_duration_seconds_bucket{name="inject.trellis.io",operation="CREATE",rejected="false",type="admit",le="0.025"} 100
apiserver_admission_webhook_admission_duration_seconds_count{name="inject.trellis.io",operation="CREATE",rejected="false",type="admit"} 100
apiserver_admission_webhook_admission_duration_seconds_count{name="other.io",operation="CREATE",rejected="false",type="admit"} 7
"#;
        assert_eq!(histogram(text, "inject.trellis.io"), Some((97, 100)));
        assert_eq!(histogram(text, "nobody"), None);
    }
}
