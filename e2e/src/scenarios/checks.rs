//! What the happy paths of every strategy check alike: a successful run's status, where its
//! builder pods ran and what they run, and the index it pushed.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use archforge::api::{ImageBuildStatus, Phase};
use archforge::render::BUILDER_CONTAINER;
use archforge::settings::AppArmorMode;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::nodes;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::ResourceExt;
use kube::api::Api;

use crate::case::{Case, condition, describe};
use crate::suite::Suite;

/// What the builder container of every pod of a strategy must carry.
pub struct Builder<'a> {
    /// The builder container's image.
    pub image: &'a str,
    /// The AppArmor profile the builder container is confined by.
    pub apparmor_profile: &'a str,
}

/// One builder pod that passed [`placed_builders`], for a strategy's own checks.
pub struct BuilderPod {
    /// The platform the pod builds.
    pub platform: &'static str,
    /// Its builder container.
    pub builder: Container,
}

/// Waits for `name` to succeed with `Ready=True` and a `sha256:` digest for each of
/// `platforms` (and no other) in status; returns the status and the digests by platform.
pub async fn wait_succeeded(
    case: &Case,
    name: &str,
    platforms: &[&str],
) -> anyhow::Result<(ImageBuildStatus, BTreeMap<String, String>)> {
    let status = case
        .wait_phase(name, Phase::Succeeded, case.suite.run_timeout())
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
        digests.keys().map(String::as_str).collect::<Vec<_>>() == platforms
            && digests.values().all(|d| d.starts_with("sha256:")),
        "per-platform digests: {digests:?}"
    );
    Ok((status, digests))
}

/// The builder pods of `name`, each platform's at least one: bound to a node of the
/// platform's architecture, with a builder container of `expect.image` under the fuse limit
/// and the AppArmor profile `expect.apparmor_profile` as the operator's AppArmor mode asks
/// for it (annotation, and the field on servers that have it).
pub async fn placed_builders(
    case: &Case,
    name: &str,
    platforms: &[&'static str],
    expect: &Builder<'_>,
) -> anyhow::Result<Vec<BuilderPod>> {
    let suite = &case.suite;
    let nodes: Api<Node> = Api::all(suite.client.clone());
    let mut placed = Vec::new();
    for &platform in platforms {
        let arch = platform.rsplit('/').next().unwrap();
        let pods = case
            .pods_of(&JobFilter::of(name).platform(platform))
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
                .init_containers
                .iter()
                .flatten()
                .find(|c| c.name == BUILDER_CONTAINER)
                .context("no builder container")?
                .clone();
            ensure!(
                builder.image.as_deref() == Some(expect.image),
                "builder image {:?}",
                builder.image
            );
            let fuse = builder
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(&suite.builder.fuse_resource));
            ensure!(
                fuse.map(|q| q.0.as_str()) == Some(suite.builder.fuse_quantity.as_str()),
                "fuse limit on the admitted pod: {fuse:?}"
            );
            check_apparmor(suite, &pod, &spec, &builder, expect.apparmor_profile)?;
            placed.push(BuilderPod { platform, builder });
        }
    }
    Ok(placed)
}

/// The index the registry holds for `status` has exactly `digests`, and `name` recorded the
/// Events of a successful run.
pub async fn ensure_pushed(
    case: &Case,
    name: &str,
    status: &ImageBuildStatus,
    digests: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let entries = super::pushed_index(&case.suite.registry, status).await?;
    let pushed: BTreeMap<String, String> = entries.into_iter().collect();
    ensure!(
        &pushed == digests,
        "the index holds {pushed:?}, status says {digests:?}"
    );
    for reason in ["RunStarted", "PlatformSucceeded", "IndexPushed"] {
        case.expect_event(name, reason, "Normal").await?;
    }
    Ok(())
}

/// The builder's AppArmor request, as the operator's `--apparmor` mode (read by the suite
/// from the same environment as its operators) makes it: `localhost/<profile>`,
/// `runtime/default`, or nothing at all (nodes without AppArmor refuse any profile).
fn check_apparmor(
    suite: &Suite,
    pod: &Pod,
    spec: &PodSpec,
    builder: &Container,
    profile: &str,
) -> anyhow::Result<()> {
    let (annotation_value, field_type, field_profile) = match suite.builder.apparmor {
        AppArmorMode::Localhost => (
            Some(format!("localhost/{profile}")),
            Some("Localhost"),
            Some(profile),
        ),
        AppArmorMode::RuntimeDefault => (
            Some("runtime/default".to_string()),
            Some("RuntimeDefault"),
            None,
        ),
        AppArmorMode::None => (None, None, None),
    };
    let annotation = format!("container.apparmor.security.beta.kubernetes.io/{BUILDER_CONTAINER}");
    ensure!(
        pod.annotations().get(&annotation) == annotation_value.as_ref(),
        "AppArmor annotation on the admitted pod ({:?} mode): {:?}",
        suite.builder.apparmor,
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
            field.map(|p| p.type_.as_str()) == field_type
                && field.and_then(|p| p.localhost_profile.as_deref()) == field_profile,
            "appArmorProfile on a {} server ({:?} mode): {field:?}",
            suite.version,
            suite.builder.apparmor
        );
    }
    Ok(())
}
