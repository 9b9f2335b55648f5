//! ImageBuilds that cannot run: refused by the API server at apply time, stalled by the
//! operator, or stalled because the API server refuses their Jobs.

use std::time::Duration;

use anyhow::{bail, ensure};
use archforge::api::Phase;
use archforge::plan::REBUILD_ANNOTATION;
use archforge_e2e::admission::{JOB_COUNT, job_admitted, job_quota, quota_enforces};
use archforge_e2e::cluster::wait_for;
use archforge_e2e::filter::JobFilter;
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::case::{AMD64, ARM64, Case, condition, describe};

/// A schema violation is refused at apply time, naming the field; a CEL-only violation is
/// refused where the cluster enforces CEL, otherwise the operator stalls the ImageBuild
/// (`InvalidSpec`) and starts no Job.
pub async fn invalid_imagebuilds_are_refused(case: &Case) -> anyhow::Result<()> {
    // The structural schema is enforced by every supported version.
    let mut bad = case.manifest("too-many-retries", &[AMD64]);
    bad["spec"]["retries"] = json!(11);
    match case.apply(&bad).await {
        Err(kube::Error::Api(e)) if e.code == 422 => {
            ensure!(e.message.contains("spec.retries"), "message: {}", e.message)
        }
        other => bail!("retries: 11 was not refused at apply time: {other:?}"),
    }

    // A CEL-only rule: refused where the cluster enforces CEL, Stalled otherwise.
    let mut bad = case.manifest("arch-in-selector", &[AMD64]);
    bad["spec"]["nodeSelector"]["kubernetes.io/arch"] = json!("arm64");
    match case.apply(&bad).await {
        Err(kube::Error::Api(e)) if e.code == 422 => ensure!(
            e.message.contains(
                "spec.nodeSelector: kubernetes.io/arch and kubernetes.io/os are set by archforge"
            ),
            "message: {}",
            e.message
        ),
        Ok(_) => {
            eprintln!(
                "{}: this cluster does not enforce CEL; checking the operator refuses it",
                case.test
            );
            let status = case
                .wait_phase("arch-in-selector", Phase::Failed, Duration::from_secs(60))
                .await?;
            let stalled = condition(&status, "Stalled")?;
            ensure!(
                stalled.status == "True" && stalled.reason == "InvalidSpec",
                "{}",
                describe(&status)
            );
            ensure!(
                stalled.message.contains("spec.nodeSelector"),
                "{}",
                stalled.message
            );
            case.expect_event("arch-in-selector", "InvalidSpec", "Warning")
                .await?;
            // Give a wrongly started run time to show its Jobs.
            tokio::time::sleep(Duration::from_secs(5)).await;
            ensure!(
                case.jobs_of(&JobFilter::of("arch-in-selector"))
                    .await?
                    .is_empty(),
                "an invalid ImageBuild got Jobs"
            );
        }
        Err(e) => bail!("unexpected error: {e}"),
    }
    Ok(())
}

/// Jobs the API server refuses (a ResourceQuota of no Jobs) fail the run with the server's
/// reason, once: no retry loop, no repeated Event; with the cause gone, a rebuild succeeds.
pub async fn invalid_job_fields_stall_with_a_reason(case: &Case) -> anyhow::Result<()> {
    const QUOTA: &str = "no-jobs";
    let suite = &case.suite;
    // An admission rule every API server has refuses the Job the operator creates; the
    // refusal must stall the run with the server's reason instead of a retry loop.
    // Where the operator creates the Jobs: the build namespace.
    let quotas: Api<ResourceQuota> = Api::namespaced(suite.client.clone(), &case.build_namespace);
    quotas
        .create(&PostParams::default(), &job_quota(QUOTA, 0))
        .await?;
    wait_for(
        &format!("the quota controller to compute the status of ResourceQuota {QUOTA}"),
        Duration::from_secs(60),
        || async { Ok(quota_enforces(&quotas.get(QUOTA).await?, JOB_COUNT).then_some(())) },
    )
    .await?;
    // The API server's admission reads quotas from its own cache; ask it directly.
    wait_for(
        &format!("the API server to refuse Jobs with {QUOTA}"),
        Duration::from_secs(60),
        || async { Ok((!job_admitted(&case.jobs, QUOTA).await?).then_some(())) },
    )
    .await?;

    case.apply(&case.manifest("app", &[AMD64, ARM64])).await?;
    let status = case
        .wait_phase("app", Phase::Failed, Duration::from_secs(120))
        .await?;
    let says_why = |message: &str| message.contains("exceeded quota") || message.contains(QUOTA);
    let stalled = condition(&status, "Stalled")?;
    ensure!(
        stalled.status == "True" && stalled.reason == "JobRejected" && says_why(&stalled.message),
        "Stalled should be True/JobRejected with the server's message (exceeded quota: {QUOTA}): {}",
        describe(&status)
    );
    let ready = condition(&status, "Ready")?;
    ensure!(
        ready.status == "False" && says_why(&ready.message),
        "Ready should be False and say why (exceeded quota: {QUOTA}): {}",
        describe(&status)
    );
    case.expect_event("app", "JobRejected", "Warning").await?;
    let jobs = case.jobs.list(&ListParams::default()).await?.items;
    ensure!(
        jobs.is_empty() && case.jobs_ever("app").is_empty(),
        "no Job may exist: now {:?}, ever {:?}",
        jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>(),
        case.jobs_ever("app")
    );

    // Nothing changes until the ImageBuild does: no further creates (the old behaviour
    // retried every 15 s) across a resync (20 s), and no repeated Event.
    let creates = case.job_creates().await?;
    ensure!(
        creates >= 1.0,
        "the operator's metrics count no Job create (archforge_kubernetes_requests_total{{verb=\"create\",resource=\"jobs\"}}), so retries cannot be counted"
    );
    let reported = case.occurrences("app", "JobRejected").await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let creates_after = case.job_creates().await?;
    ensure!(
        creates_after == creates,
        "the operator kept creating the refused Jobs: {creates} creates, {creates_after} 30 s later"
    );
    let reported_after = case.occurrences("app", "JobRejected").await?;
    ensure!(
        reported_after == reported,
        "JobRejected reported {reported} times, {reported_after} 30 s later"
    );
    let (_, still) = case.status("app").await?;
    ensure!(
        still.phase == Some(Phase::Failed) && condition(&still, "Stalled")?.reason == "JobRejected",
        "{:?}: {}",
        still.phase,
        describe(&still)
    );

    // Once the cause is gone, a change to the ImageBuild starts a run that succeeds.
    quotas.delete(QUOTA, &DeleteParams::default()).await?;
    wait_for(
        &format!("the API server to admit Jobs without {QUOTA}"),
        Duration::from_secs(60),
        || async {
            job_admitted(&case.jobs, QUOTA)
                .await
                .map(|ok| ok.then_some(()))
        },
    )
    .await?;
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    manifest["metadata"]["annotations"] = json!({REBUILD_ANNOTATION: "after-quota"});
    case.apply(&manifest).await?;
    let status = case
        .wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;
    ensure!(
        status.rebuild.as_deref() == Some("after-quota")
            && condition(&status, "Ready")?.status == "True",
        "{:?}: {}",
        status.rebuild,
        describe(&status)
    );
    case.ensure_one_job_per_platform("app", 2)
}
