//! The scale benchmark (`archforge-e2e scale`, `make e2e-scale`): N two-platform
//! ImageBuilds in one namespace with one operator, timed until all succeed, with the
//! operator's peak RSS and its Kubernetes API requests per ImageBuild.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge_e2e::cluster::wait_for;
use archforge_e2e::operator::sum_samples;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::ListParams;

use crate::case::{AMD64, ARM64, describe, with_case};
use crate::suite::Suite;

/// `archforge-e2e scale`'s arguments.
#[derive(clap::Parser, Debug)]
pub struct ScaleArgs {
    /// Numbers of ImageBuilds (two platforms each) to run, one round each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    builds: Vec<usize>,
    /// ImageBuilds created at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
}

struct ScaleRow {
    builds: usize,
    seconds: f64,
    peak_rss_mib: f64,
    requests_per_build: f64,
}

/// Runs one round per `--builds` count and prints the table of figures.
pub async fn scale(suite: Arc<Suite>, args: ScaleArgs) -> anyhow::Result<()> {
    ensure!(
        suite.settings.simulate_nodes,
        "the scale benchmark needs ARCHFORGE_E2E_SIMULATE_NODES=1 (thousands of real builds are a different benchmark)"
    );
    let mut rows = Vec::new();
    for &count in &args.builds {
        let row = with_scale_case(&suite, count, args.parallel).await?;
        eprintln!("{count} ImageBuilds: {:.1} s", row.seconds);
        rows.push(row);
    }
    println!(
        "| ImageBuilds | platforms each | time to all Succeeded | ImageBuilds/s | operator peak RSS | Kubernetes API requests per ImageBuild |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | 2 | {:.1} s | {:.1} | {:.1} MiB | {:.1} |",
            r.builds,
            r.seconds,
            r.builds as f64 / r.seconds,
            r.peak_rss_mib,
            r.requests_per_build
        );
    }
    Ok(())
}

async fn with_scale_case(
    suite: &Arc<Suite>,
    count: usize,
    parallel: usize,
) -> anyhow::Result<ScaleRow> {
    let mut row = None;
    with_case(suite, &format!("scale-{count}"), None, async |case| {
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|i| async move {
                case.apply(&case.manifest(&format!("app-{i:04}"), &[AMD64, ARM64]))
                    .await
            })
            .buffer_unordered(parallel)
            .try_collect::<Vec<_>>()
            .await?;
        wait_for(
            &format!("{count} ImageBuilds to succeed"),
            Duration::from_secs(3600),
            || async {
                case.operator.lock().unwrap().check_alive()?;
                let builds = case.builds.list(&ListParams::default()).await?.items;
                let failed: Vec<String> = builds
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed))
                    .map(|b| format!("{}: {}", b.name_any(), describe(b.status.as_ref().unwrap())))
                    .collect();
                ensure!(failed.is_empty(), "failed: {failed:?}");
                let done = builds
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
                    .count();
                Ok((done == count).then_some(()))
            },
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let (metrics_address, peak) = {
            let operator = case.operator.lock().unwrap();
            (operator.metrics_address.clone(), operator.peak_rss_kib())
        };
        let text = reqwest::get(format!("http://{metrics_address}/metrics"))
            .await?
            .text()
            .await?;
        let requests = sum_samples(&text, "archforge_kubernetes_requests_total");
        ensure!(
            requests > 0.0,
            "no Kubernetes requests counted; metrics:\n{text}"
        );
        row = Some(ScaleRow {
            builds: count,
            seconds,
            peak_rss_mib: peak.context("operator peak RSS")? as f64 / 1024.0,
            requests_per_build: requests / count as f64,
        });
        Ok(())
    })
    .await?;
    row.context("no figures")
}
