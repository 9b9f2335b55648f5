//! The registry failing under the operator: an outage during assembly.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use archforge::api::{ImageBuildStatus, Phase};
use archforge_e2e::cluster::{imagebuild, read_index, wait_for};
use archforge_e2e::proxy::Proxy;

use crate::case::{AMD64, ARM64, describe, with_case};
use crate::suite::Suite;

/// The registry (behind a proxy the suite takes down) is unreachable during assembly: the
/// run waits in `Assembling` (`RegistryUnreachable`) without rebuilding, and once it is back
/// succeeds with the same digests.
pub async fn registry_outage_during_assembly(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    let proxy = Proxy::start(&suite.settings.registry).await?;
    proxy.down().await;
    with_case(&suite, test, Some(&proxy), async |case| {
        let manifest = imagebuild(
            &suite.settings,
            &case.namespace,
            "app",
            &[AMD64, ARM64],
            Some(&proxy.host()),
        );
        case.apply(&manifest).await?;
        let during = wait_for(
            "the assembly to find the registry unreachable",
            suite.run_timeout(),
            || async {
                let (_, status) = case.status("app").await?;
                let unreachable = status.phase == Some(Phase::Assembling)
                    && status
                        .conditions
                        .iter()
                        .any(|c| c.reason == "RegistryUnreachable");
                Ok(unreachable.then_some(status))
            },
        )
        .await?;
        // Down for a while: the operator retries and must not rebuild anything.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (_, still) = case.status("app").await?;
        ensure!(
            still.phase == Some(Phase::Assembling),
            "{:?}: {}",
            still.phase,
            describe(&still)
        );
        proxy.up().await?;
        let status = case
            .wait_phase("app", Phase::Succeeded, Duration::from_secs(180))
            .await?;
        let digests = |s: &ImageBuildStatus| {
            s.platforms
                .iter()
                .map(|p| (p.platform.clone(), p.digest.clone()))
                .collect::<Vec<_>>()
        };
        ensure!(
            digests(&during) == digests(&status),
            "digests changed: {:?} -> {:?}",
            digests(&during),
            digests(&status)
        );
        case.ensure_one_job_per_platform("app", 2)?;
        let (_, entries) = read_index(
            &suite.registry,
            &format!("{}/e2e/{}/app:v1", suite.settings.registry, case.namespace),
        )
        .await?;
        ensure!(entries.len() == 2, "index entries {entries:?}");
        Ok(())
    })
    .await
}
