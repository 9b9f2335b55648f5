//! The queue under a small limit: runs of two namespaces start in turn, not in the order
//! they were applied.

use std::sync::Arc;

use anyhow::ensure;
use archforge::api::{ImageBuild, Phase};
use archforge_e2e::cluster::{
    FIELD_MANAGER, create_namespace, delete_namespace, namespace_name, wait_for,
};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::case::{AMD64, Case, condition, release_imagebuilds, with_operator_args};
use crate::suite::Suite;

/// A second tenant namespace beside the Case's, watched by the same operator, which runs one
/// builder Job at a time (`--max-running-builds=1`). Team a applies three builds, team b
/// three after them: they start a1, b1, a2, b2, a3, b3, and each waits Queued meanwhile.
pub async fn fair_order_across_two_namespaces(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos()
        ^ std::process::id();
    let second = namespace_name(&format!("{test}-b"), nonce & 0xfffff);
    create_namespace(&suite.client, &second).await?;
    let args = [
        "--max-running-builds=1".to_string(),
        format!("--namespace={second}"),
    ];
    let other: Api<ImageBuild> = Api::namespaced(suite.client.clone(), &second);
    let outcome = with_operator_args(&suite, test, &args, async |case| {
        let order = in_turn(case, &other).await;
        // While the operator runs: it removes the finalizers.
        release_imagebuilds(&other).await?;
        order
    })
    .await;
    delete_namespace(&suite.client, &second).await?;
    outcome
}

/// Applies `name` in the namespace of `builds`.
async fn apply(case: &Case, builds: &Api<ImageBuild>, name: &str) -> anyhow::Result<()> {
    let namespace = builds.namespace().unwrap_or_default();
    let mut manifest = case.manifest(name, &[AMD64]);
    manifest["metadata"]["namespace"] = namespace.into();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    builds
        .patch(name, &params, &Patch::Apply(&manifest))
        .await?;
    Ok(())
}

async fn phase(builds: &Api<ImageBuild>, name: &str) -> anyhow::Result<Option<Phase>> {
    Ok(builds.get(name).await?.status.and_then(|s| s.phase))
}

async fn in_turn(case: &Case, other: &Api<ImageBuild>) -> anyhow::Result<()> {
    let timeout = case.suite.run_timeout();
    apply(case, &case.builds, "a1").await?;
    wait_for("a1 to start", timeout, || async {
        Ok(phase(&case.builds, "a1")
            .await?
            .filter(|p| *p != Phase::Queued && *p != Phase::Pending))
    })
    .await?;
    for name in ["a2", "a3"] {
        apply(case, &case.builds, name).await?;
    }
    for name in ["b1", "b2", "b3"] {
        apply(case, other, name).await?;
    }
    let queued = case.builds.get("a3").await?.status.unwrap_or_default();
    let builds = [
        (&case.builds, "a1"),
        (other, "b1"),
        (&case.builds, "a2"),
        (other, "b2"),
        (&case.builds, "a3"),
        (other, "b3"),
    ];
    let started: std::cell::RefCell<Vec<&str>> = Default::default();
    wait_for("every build to start, in turn", timeout * 6, || async {
        for (api, name) in builds {
            let going = !matches!(
                phase(api, name).await?,
                None | Some(Phase::Queued | Phase::Pending)
            );
            let mut started = started.borrow_mut();
            if going && !started.contains(&name) {
                started.push(name);
            }
        }
        Ok((started.borrow().len() == builds.len()).then_some(()))
    })
    .await?;
    let started = started.into_inner();
    ensure!(
        started == ["a1", "b1", "a2", "b2", "a3", "b3"],
        "runs started in the order {started:?}"
    );
    if queued.phase == Some(Phase::Queued) {
        let why = condition(&queued, "Reconciling")?;
        ensure!(
            why.reason == "Queued"
                && why
                    .message
                    .contains("waiting for a running build to finish (limit 1 at once)"),
            "a queued run says why: {why:?}"
        );
    }
    case.wait_phase("a3", Phase::Succeeded, timeout).await?;
    Ok(())
}
