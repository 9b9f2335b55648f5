//! A run's life under change: the operator restarted, the spec changed, the ImageBuild
//! deleted, each in the middle of a run.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::ensure;
use archforge::api::Phase;
use archforge_e2e::cluster::wait_for;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::kubelet::Outcome;
use kube::api::DeleteParams;
use serde_json::json;

use crate::case::{AMD64, ARM64, Case};

/// The operator is killed mid-run and the builds finish while none runs: restarted, it
/// completes the run without rebuilding (one Job per platform ever).
pub async fn operator_restart_mid_run_completes_once(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    case.start_held_run("app").await?;
    case.operator.lock().unwrap().kill();
    // The builds finish while no operator runs.
    case.policy(vec![]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    case.operator.lock().unwrap().restart()?;
    case.wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;
    case.ensure_one_job_per_platform("app", 2)
}

/// A spec change mid-run starts a new run: the old generation's Jobs go, the new run
/// succeeds, and the history holds both.
pub async fn spec_change_mid_run_starts_a_new_run(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    case.policy(vec![(JobFilter::any().generation(1), Outcome::Hold)]);
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    case.apply(&manifest).await?;
    let first_run = JobFilter::of("app").generation(1);
    case.wait_jobs(&first_run, 2, Duration::from_secs(60))
        .await?;
    manifest["spec"]["buildArgs"] = json!([{"name": "VERSION", "value": "2"}]);
    let changed = case.apply(&manifest).await?;
    ensure!(
        changed.metadata.generation == Some(2),
        "generation {:?}",
        changed.metadata.generation
    );
    let status = case
        .wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;
    if suite.settings.simulate_nodes {
        case.wait_jobs(&first_run, 0, Duration::from_secs(60))
            .await?;
    }
    let runs: BTreeSet<i64> = status.history.iter().map(|r| r.generation).collect();
    ensure!(
        runs.contains(&1) && runs.contains(&2),
        "history should hold both runs: {:?}",
        status.history
    );
    Ok(())
}

/// Deleting an ImageBuild mid-run: the garbage collector removes its Jobs and pods.
pub async fn deleting_an_imagebuild_collects_its_jobs(case: &Case) -> anyhow::Result<()> {
    case.start_held_run("app").await?;
    wait_for("builder pods", Duration::from_secs(60), || async {
        Ok((case.pods_of(&JobFilter::of("app")).await?.len() >= 2).then_some(()))
    })
    .await?;
    case.builds.delete("app", &DeleteParams::default()).await?;
    let app = JobFilter::of("app");
    case.wait_jobs(&app, 0, Duration::from_secs(120)).await?;
    case.wait_no_pods(&app, Duration::from_secs(120)).await
}
