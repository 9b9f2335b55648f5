//! Where builds run: a platform without a node waits for one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge_e2e::cluster::wait_for;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::nodes;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};

use crate::case::{AMD64, with_case};
use crate::suite::Suite;

/// A platform no node has: the run waits (`NoNodeForPlatform`, naming it) without Jobs,
/// and a node of that architecture, registered, starts it.
pub async fn no_node_for_a_platform_waits_for_one(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    let all_nodes: Api<Node> = Api::all(suite.client.clone());
    let mut missing = None;
    for arch in ["riscv64", "s390x", "ppc64le", "mips64le"] {
        let found = all_nodes.list(&nodes::of_arch(arch)).await?;
        if found.items.is_empty() {
            missing = Some(arch);
            break;
        }
    }
    let arch = missing.context("every candidate architecture has a node in this cluster")?;
    let platform = format!("linux/{arch}");
    let outcome = with_case(&suite, test, None, async |case| {
        case.apply(&case.manifest("app", &[AMD64, &platform]))
            .await?;
        let status = wait_for("NoNodeForPlatform", Duration::from_secs(60), || async {
            let (_, status) = case.status("app").await?;
            let waiting = status
                .conditions
                .iter()
                .any(|c| c.reason == "NoNodeForPlatform" && c.message.contains(&platform));
            Ok(waiting.then_some(status))
        })
        .await?;
        ensure!(status.phase == Some(Phase::Pending), "{:?}", status.phase);
        ensure!(
            case.jobs_of(&JobFilter::of("app")).await?.is_empty(),
            "Jobs started without a node"
        );
        case.expect_event("app", "NoNodeForPlatform", "Warning")
            .await?;

        nodes::ensure(&suite.client, arch, &suite.builder.fuse_resource).await?;
        let heartbeat = tokio::spawn(nodes::keep_ready(
            suite.client.clone(),
            vec![arch.to_string()],
            suite.builder.fuse_resource.clone(),
        ));
        // The operator looks again within 30 s.
        let started = case
            .wait_jobs(&JobFilter::of("app"), 2, Duration::from_secs(90))
            .await;
        let finished = match (&started, suite.settings.simulate_nodes) {
            (Ok(_), true) => case
                .wait_phase("app", Phase::Succeeded, suite.run_timeout())
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
        heartbeat.abort();
        started.and(finished)
    })
    .await;
    let removed = all_nodes
        .delete(&nodes::node_name(arch), &DeleteParams::default())
        .await;
    if let Err(e) = removed
        && !archforge_e2e::cluster::is_not_found(&e)
    {
        eprintln!("{test}: could not remove the {arch} node: {e}");
    }
    outcome
}
