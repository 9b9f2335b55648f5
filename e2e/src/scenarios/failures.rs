//! Build failures: what one failed platform does to its run, and what it does when the
//! platform may fail.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge_e2e::cluster::wait_for;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::kubelet::Outcome;
use serde_json::json;

use crate::case::{AMD64, ARM64, Case, condition, describe};

/// One platform's build fails while the other still runs: the run fails, `Ready` names
/// the platform and why, and the unfinished Job and its pod are deleted.
pub async fn one_failed_platform_fails_the_run(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    case.policy(vec![
        (JobFilter::any().platform(AMD64), Outcome::Hold),
        (
            JobFilter::any().platform(ARM64),
            Outcome::Fail("RUN make: /bin/sh: make: not found".into()),
        ),
    ]);
    case.apply(&case.manifest("app", &[AMD64, ARM64])).await?;
    let status = case
        .wait_phase("app", Phase::Failed, suite.run_timeout())
        .await?;
    // Ready is what `kubectl wait`, Argo CD and dashboards show: it must say which
    // platform failed and why, not only that no index was pushed.
    let ready = condition(&status, "Ready")?;
    ensure!(ready.status == "False", "{}", describe(&status));
    ensure!(
        ready.message.contains(ARM64) && ready.message.contains("make: not found"),
        "Ready's message does not name the failed platform ({ARM64}) and why (make: not found): {}",
        ready.message
    );
    let arm = status
        .platforms
        .iter()
        .find(|p| p.platform == ARM64)
        .context("no arm64 status")?;
    ensure!(
        arm.message
            .as_deref()
            .is_some_and(|m| m.contains("make: not found")),
        "arm64's message: {:?}",
        arm.message
    );
    let amd = JobFilter::of("app").platform(AMD64);
    case.wait_jobs(&amd, 0, Duration::from_secs(60)).await?;
    case.wait_no_pods(&amd, Duration::from_secs(60)).await?;
    case.expect_event("app", "PlatformFailed", "Warning").await
}

/// A platform that may fail (`platformSettings: [{platform: linux/arm64, allowFailure:
/// true}]`) fails: the other platform's build goes on, and the run succeeds with an index of
/// it alone; `Ready=True` names what is missing, Warning Events say so, and status and
/// history keep the failure.
pub async fn allowed_failure_publishes_the_rest(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    const FAILURE: &str = "RUN make: /bin/sh: make: not found";
    // amd64 is held until arm64 has failed: the failure must not stop it.
    case.policy(vec![
        (JobFilter::any().platform(AMD64), Outcome::Hold),
        (
            JobFilter::any().platform(ARM64),
            Outcome::Fail(FAILURE.into()),
        ),
    ]);
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    manifest["spec"]["platformSettings"] = json!([{"platform": ARM64, "allowFailure": true}]);
    case.apply(&manifest).await?;

    let failed = wait_for(&format!("{ARM64} to fail"), suite.run_timeout(), || async {
        let (_, status) = case.status("app").await?;
        let arm_failed = status
            .platforms
            .iter()
            .any(|p| p.platform == ARM64 && p.phase == Phase::Failed);
        Ok(arm_failed.then_some(status))
    })
    .await?;
    ensure!(
        failed.phase != Some(Phase::Failed),
        "an optional platform's failure failed the run: {}",
        describe(&failed)
    );
    case.expect_event("app", "OptionalPlatformFailed", "Warning")
        .await?;
    // Time for a wrong reaction (the non-optional one deletes the other Jobs at once).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let amd = JobFilter::of("app").platform(AMD64);
    let (_, still) = case.status("app").await?;
    ensure!(
        still.phase != Some(Phase::Failed),
        "the run failed after its optional platform did: {}",
        describe(&still)
    );
    ensure!(
        case.jobs_of(&amd).await?.len() == 1,
        "the {AMD64} Job should keep building after {ARM64}, which may fail, failed"
    );

    case.policy(vec![(
        JobFilter::any().platform(ARM64),
        Outcome::Fail(FAILURE.into()),
    )]);
    let status = case
        .wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;
    let ready = condition(&status, "Ready")?;
    ensure!(
        ready.status == "True"
            && ready.reason == "IndexPushedWithoutOptionalPlatforms"
            && ready.message.contains(ARM64),
        "Ready should be True/IndexPushedWithoutOptionalPlatforms naming {ARM64}: {}",
        describe(&status)
    );
    case.expect_event("app", "PlatformsMissing", "Warning")
        .await?;

    let arm = status
        .platforms
        .iter()
        .find(|p| p.platform == ARM64)
        .context("status.platforms lost arm64")?;
    ensure!(
        arm.phase == Phase::Failed
            && arm
                .message
                .as_deref()
                .is_some_and(|m| m.contains("make: not found")),
        "status.platforms[{ARM64}] should stay Failed with why (make: not found): {arm:?}"
    );
    let amd_digest = status
        .platforms
        .iter()
        .find(|p| p.platform == AMD64 && p.phase == Phase::Succeeded)
        .and_then(|p| p.digest.clone())
        .with_context(|| format!("no Succeeded {AMD64} with a digest: {:?}", status.platforms))?;

    let run = status.history.first().context("no status.history")?;
    ensure!(
        run.result == Phase::Succeeded && run.message.as_deref().is_some_and(|m| !m.is_empty()),
        "status.history[0] should be Succeeded with a message about what is missing: {run:?}"
    );

    let entries = super::pushed_index(&suite.registry, &status).await?;
    ensure!(
        entries == [(AMD64.to_string(), amd_digest.clone())],
        "the index should hold exactly {AMD64} ({amd_digest}): {entries:?}"
    );
    case.ensure_one_job_per_platform("app", 2)
}
