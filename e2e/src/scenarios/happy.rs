//! The happy path: a two-platform ImageBuild builds, each platform on a node of its
//! architecture, with the pod settings the operator promises, and pushes an index of both.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge::render::BUILDER_CONTAINER;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::nodes;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::Api;

use crate::case::{AMD64, ARM64, Case, condition, describe};

/// Admitted at the namespace's enforced Pod Security level, bound to nodes of their
/// architectures, with the fuse limit and AppArmor profile; the index holds the digests in
/// status; `Succeeded`, `Ready=True` and the Events of a run.
pub async fn happy_path_two_platforms(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    // The builder pods below are admitted at this level, with the default settings.
    case.ensure_pod_security_enforced().await?;
    case.apply(&case.manifest("app", &[AMD64, ARM64])).await?;
    let status = case
        .wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;
    ensure!(
        condition(&status, "Ready")?.status == "True",
        "{}",
        describe(&status)
    );

    let digests: BTreeMap<String, String> = status
        .platforms
        .iter()
        .map(|p| (p.platform.clone(), p.digest.clone().unwrap_or_default()))
        .collect();
    ensure!(
        digests.keys().map(String::as_str).collect::<Vec<_>>() == [AMD64, ARM64]
            && digests.values().all(|d| d.starts_with("sha256:")),
        "per-platform digests: {digests:?}"
    );

    let nodes: Api<Node> = Api::all(suite.client.clone());
    for platform in [AMD64, ARM64] {
        let arch = platform.rsplit('/').next().unwrap();
        let pods = case
            .pods_of(&JobFilter::of("app").platform(platform))
            .await?;
        ensure!(!pods.is_empty(), "no builder pod for {platform}");
        for pod in pods {
            let spec = pod.spec.clone().unwrap_or_default();
            let node_name = spec
                .node_name
                .clone()
                .context("an unscheduled builder pod")?;
            let node = nodes.get(&node_name).await?;
            ensure!(
                node.labels().get(nodes::ARCH_LABEL).map(String::as_str) == Some(arch),
                "{platform} pod {} ran on {node_name}, not an {arch} node",
                pod.name_any()
            );
            let builder = spec
                .containers
                .iter()
                .find(|c| c.name == BUILDER_CONTAINER)
                .context("no builder container")?;
            let fuse = builder
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(&suite.builder.fuse_resource));
            ensure!(
                fuse.map(|q| q.0.as_str()) == Some(suite.builder.fuse_quantity.as_str()),
                "fuse limit on the admitted pod: {fuse:?}"
            );
            let profile = format!("localhost/{}", suite.builder.apparmor_profile);
            let annotation =
                format!("container.apparmor.security.beta.kubernetes.io/{BUILDER_CONTAINER}");
            ensure!(
                pod.annotations().get(&annotation) == Some(&profile),
                "AppArmor annotation on the admitted pod: {:?}",
                pod.annotations().get(&annotation)
            );
            if suite.version.has_apparmor_field() {
                let field = builder
                    .security_context
                    .as_ref()
                    .and_then(|s| s.app_armor_profile.as_ref())
                    .or(spec
                        .security_context
                        .as_ref()
                        .and_then(|s| s.app_armor_profile.as_ref()));
                ensure!(
                    field.and_then(|p| p.localhost_profile.as_deref())
                        == Some(suite.builder.apparmor_profile.as_str()),
                    "appArmorProfile on a {} server: {field:?}",
                    suite.version
                );
            }
        }
    }

    let entries = super::pushed_index(&suite.registry, &status).await?;
    let pushed: BTreeMap<String, String> = entries.into_iter().collect();
    ensure!(
        pushed == digests,
        "the index holds {pushed:?}, status says {digests:?}"
    );

    for reason in ["RunStarted", "PlatformSucceeded", "IndexPushed"] {
        case.expect_event("app", reason, "Normal").await?;
    }
    Ok(())
}
