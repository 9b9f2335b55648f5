//! Build failures: what one failed platform does to its run.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::kubelet::Outcome;

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
