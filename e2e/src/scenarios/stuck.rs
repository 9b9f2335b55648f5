//! Builder pods that do not start: the ImageBuild names the cause within seconds of the
//! scheduler, the kubelet or the Job controller saying it, in `status.platforms[].reason`
//! and `message` and in a Warning Event, and what will not clear by itself fails the
//! platform after the operator's grace period (10 s here). Written for a real cluster: on
//! real nodes the real scheduler and kubelet speak; with simulated nodes the scheduler is
//! still the cluster's, and the simulated kubelet writes what a real one writes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::api::{Phase, PlatformStatus};
use archforge_e2e::cluster::wait_for;
use serde_json::json;

use crate::case::{AMD64, Case, condition, describe, with_operator_args};
use crate::suite::Suite;

/// How soon the cause must be named: generous, this is not a timing test (the operator
/// reacts to the pod's or the Event's watch event; the kubelet, not the operator, is slow).
const SAYS_WITHIN: Duration = Duration::from_secs(60);

/// The grace period the scenarios' operators run with, so a permanent cause fails soon.
const GRACE: &str = "--stuck-grace=10s";

/// Waits until `platform` of ImageBuild `app` is held up (or failed) with one of `reasons`.
async fn says(case: &Case, platform: &str, reasons: &[&str]) -> anyhow::Result<PlatformStatus> {
    wait_for(
        &format!("ImageBuild app to name why {platform} does not start ({reasons:?})"),
        SAYS_WITHIN,
        || async {
            case.operator.lock().unwrap().check_alive()?;
            let (_, status) = case.status("app").await?;
            Ok(status.platforms.into_iter().find(|p| {
                p.platform == platform && p.reason.as_deref().is_some_and(|r| reasons.contains(&r))
            }))
        },
    )
    .await
}

/// Waits until the run failed of `platform`'s `reason` (its grace period over).
async fn fails_of(case: &Case, platform: &str, reason: &str) -> anyhow::Result<()> {
    let status = case.wait_phase("app", Phase::Failed, SAYS_WITHIN).await?;
    let failed = status
        .platforms
        .iter()
        .find(|p| p.platform == platform)
        .context("no status.platforms entry")?;
    ensure!(
        failed.phase == Phase::Failed && failed.reason.as_deref() == Some(reason),
        "{platform} should have failed with reason {reason}: {failed:?}"
    );
    let ready = condition(&status, "Ready")?;
    ensure!(
        ready.message.contains(platform) && ready.message.contains("grace period"),
        "Ready should say {platform} failed after the grace period: {}",
        describe(&status)
    );
    Ok(())
}

fn message(p: &PlatformStatus) -> &str {
    p.message.as_deref().unwrap_or_default()
}

/// A builder pod no node can take (it asks for more CPU than any node has: a reason that
/// placement, which looks at labels, taints and readiness, cannot see): `Unschedulable` with
/// the scheduler's own message, a Warning Event, the `Reconciling` message says it, and the
/// run is not failed early (a node may still come).
pub async fn unschedulable_pod_says_why(case: &Case) -> anyhow::Result<()> {
    let mut manifest = case.manifest("app", &[AMD64]);
    manifest["spec"]["resources"] = json!({"requests": {"cpu": "100000"}});
    case.apply(&manifest).await?;
    let amd = says(case, AMD64, &["Unschedulable"]).await?;
    ensure!(
        message(&amd).contains("nodes are available") && message(&amd).contains("cpu"),
        "the scheduler's message should be in status: {amd:?}"
    );
    case.expect_event("app", "Unschedulable", "Warning").await?;
    let (_, status) = case.status("app").await?;
    let reconciling = condition(&status, "Reconciling")?;
    ensure!(
        status.phase != Some(Phase::Failed)
            && reconciling.message.contains(&format!("{AMD64} is held up")),
        "Unschedulable is reported, not failed early: {}",
        describe(&status)
    );
    // Said once: a later look at the same pod repeats nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let told = case.event_notes("app", "Unschedulable").await?;
    ensure!(told.len() == 1, "one Unschedulable Event, got {told:?}");
    Ok(())
}

/// An operator whose builder image does not exist on the suite's registry: the builder's
/// pull fails (`ErrImagePull`, or `ImagePullBackOff` while the kubelet backs off), naming
/// the image; when the runtime says the image is not found, the platform fails after the
/// grace period.
pub async fn missing_builder_image_says_why(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    let image = format!(
        "{}/e2e/archforge-missing/buildah:never-pushed",
        suite.settings.registry
    );
    let args = [format!("--builder-image={image}"), GRACE.to_string()];
    with_operator_args(&suite, test, &args, async |case| {
        case.apply(&case.manifest("app", &[AMD64])).await?;
        let amd = says(case, AMD64, &["ErrImagePull", "ImagePullBackOff"]).await?;
        ensure!(
            message(&amd).contains("archforge-missing/buildah"),
            "the pull error should name the image: {amd:?}"
        );
        let reason = amd.reason.clone().unwrap_or_default();
        case.expect_event("app", &reason, "Warning").await?;
        // A registry this cluster's runtime cannot reach (plain HTTP without runtime
        // configuration) is a cause that may clear: only a missing image fails early.
        if message(&amd).contains("not found") {
            fails_of(case, AMD64, "ErrImagePull").await?;
        }
        Ok(())
    })
    .await
}

/// An ImageBuild whose pushSecret does not exist. The operator copies it into the build
/// namespace before it creates any Job, so it says so at once: the run fails with reason
/// `Secret` and one Warning Event, within seconds rather than at the stuck grace period,
/// and no Job is ever created.
pub async fn missing_push_secret_says_why(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    with_operator_args(&suite, test, &[GRACE.to_string()], async |case| {
        let mut manifest = case.manifest("app", &[AMD64]);
        manifest["spec"]["output"]["pushSecret"] = json!("archforge-e2e-missing");
        case.apply(&manifest).await?;
        let status = case
            .wait_phase("app", Phase::Failed, Duration::from_secs(30))
            .await?;
        let stalled = condition(&status, "Stalled")?;
        let missing = format!(
            "secret {}/archforge-e2e-missing does not exist",
            case.namespace
        );
        ensure!(
            stalled.reason == "Secret" && stalled.message.contains(&missing),
            "the run should say the Secret is missing: {}",
            describe(&status)
        );
        case.expect_event("app", "Secret", "Warning").await?;
        ensure!(
            case.jobs_ever("app").is_empty(),
            "no Job should exist: {:?}",
            case.jobs_ever("app")
        );
        Ok(())
    })
    .await
}

/// An operator whose AppArmor profile no node has loaded: the kubelet refuses the pod
/// (`Cannot enforce AppArmor: profile ... is not loaded`, or `AppArmor is not enabled on the
/// host` on a node without AppArmor), which stays `Pending` for ever; the platform fails
/// with reason `AppArmor` after the grace period.
pub async fn kubelet_refusal_says_why(suite: Arc<Suite>, test: &'static str) -> anyhow::Result<()> {
    let args = [
        // Whatever mode the suite's environment gives its operators (none, on nodes without
        // AppArmor): this one asks for a profile.
        "--apparmor=localhost".to_string(),
        "--apparmor-profile=archforge-e2e-not-loaded".to_string(),
        GRACE.to_string(),
    ];
    with_operator_args(&suite, test, &args, async |case| {
        case.apply(&case.manifest("app", &[AMD64])).await?;
        let amd = says(case, AMD64, &["AppArmor"]).await?;
        ensure!(
            message(&amd).contains("Cannot enforce AppArmor"),
            "the kubelet's refusal should be in status: {amd:?}"
        );
        case.expect_event("app", "AppArmor", "Warning").await?;
        fails_of(case, AMD64, "AppArmor").await
    })
    .await
}
