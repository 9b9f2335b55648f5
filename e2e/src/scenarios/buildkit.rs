//! The happy path with `spec.strategy: buildkit`: the same run as buildah's, with rootless
//! BuildKit builder pods, confined by the BuildKit profiles, admitted at the namespace's
//! Pod Security level, each platform with its own registry cache ref.

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge::plan::Platform;
use archforge::registry::parse_reference;
use archforge::render::BUILDER_CONTAINER;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::nodes;
use k8s_openapi::api::core::v1::{Container, Node};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

use crate::case::{AMD64, ARM64, Case, condition, describe};

/// Values of every `flag value` pair of an argv.
fn values_of<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    argv.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

fn env_of(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// A two-platform BuildKit ImageBuild with a registry cache succeeds: pods bound to nodes
/// of their architectures, run by the BuildKit image under the archforge-buildkit AppArmor
/// and seccomp profiles, never privileged, with the fuse limit, buildkitd without a process
/// sandbox, and a cache ref per platform; the index holds the digests in status. On real
/// nodes, each platform's cache ref exists in the registry afterwards.
pub async fn happy_path_buildkit(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    case.ensure_pod_security_enforced().await?;
    let mut manifest = case.manifest("app-bk", &[AMD64, ARM64]);
    let image = manifest["spec"]["output"]["image"]
        .as_str()
        .context("output image")?
        .to_string();
    let cache = format!("{}-cache", image.rsplit_once(':').context("a tag")?.0);
    manifest["spec"]["strategy"] = json!("buildkit");
    manifest["spec"]["cache"] = json!({"image": cache});
    case.apply(&manifest).await?;
    let status = case
        .wait_phase("app-bk", Phase::Succeeded, suite.run_timeout())
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
        let slug = platform
            .parse::<Platform>()
            .map_err(anyhow::Error::msg)?
            .slug();
        let arch = platform.rsplit('/').next().unwrap();
        let pods = case
            .pods_of(&JobFilter::of("app-bk").platform(platform))
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
            ensure!(
                builder.image.as_deref() == Some(suite.builder.buildkit_image.as_str()),
                "builder image {:?}",
                builder.image
            );
            let security = builder
                .security_context
                .clone()
                .context("no security context")?;
            ensure!(
                security.privileged == Some(false) && security.proc_mount.is_none(),
                "privileged {:?}, procMount {:?}",
                security.privileged,
                security.proc_mount
            );
            let seccomp = security.seccomp_profile.clone().context("no seccomp")?;
            ensure!(
                format!(
                    "localhost/{}",
                    seccomp.localhost_profile.as_deref().unwrap_or_default()
                ) == suite.builder.buildkit_seccomp_profile.to_string(),
                "seccomp {seccomp:?}"
            );
            let profile = format!("localhost/{}", suite.builder.buildkit_apparmor_profile);
            let annotation =
                format!("container.apparmor.security.beta.kubernetes.io/{BUILDER_CONTAINER}");
            ensure!(
                pod.annotations().get(&annotation) == Some(&profile),
                "AppArmor annotation on the admitted pod: {:?}",
                pod.annotations().get(&annotation)
            );
            if suite.version.has_apparmor_field() {
                let field = security.app_armor_profile.as_ref();
                ensure!(
                    field.and_then(|p| p.localhost_profile.as_deref())
                        == Some(suite.builder.buildkit_apparmor_profile.as_str()),
                    "appArmorProfile on a {} server: {field:?}",
                    suite.version
                );
            }
            let fuse = builder
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(&suite.builder.fuse_resource));
            ensure!(
                fuse.map(|q| q.0.as_str()) == Some(suite.builder.fuse_quantity.as_str()),
                "fuse limit on the admitted pod: {fuse:?}"
            );
            ensure!(
                env_of(builder, "BUILDKITD_FLAGS").as_deref()
                    == Some("--oci-worker-no-process-sandbox"),
                "BUILDKITD_FLAGS {:?}",
                env_of(builder, "BUILDKITD_FLAGS")
            );
            let argv = builder.command.clone().unwrap_or_default();
            let own = format!("{cache}:{slug}");
            ensure!(
                values_of(&argv, "--import-cache") == [format!("type=registry,ref={own}")]
                    && values_of(&argv, "--export-cache")
                        == [format!("type=registry,ref={own},mode=max")],
                "{platform} cache: {:?} / {:?}",
                values_of(&argv, "--import-cache"),
                values_of(&argv, "--export-cache")
            );
            ensure!(
                values_of(&argv, "--opt").contains(&format!("platform={platform}").as_str()),
                "{platform} pod builds for {:?}",
                values_of(&argv, "--opt")
            );
        }
        // Real BuildKit wrote the cache; a simulated builder only pushes the image.
        if !suite.settings.simulate_nodes {
            let reference = parse_reference(&format!("{cache}:{slug}"))?;
            let auth = suite.registry.auth_for(&reference)?;
            suite
                .registry
                .client()
                .fetch_manifest_digest(&reference, &auth)
                .await
                .with_context(|| format!("the cache ref {cache}:{slug} of {platform}"))?;
        }
    }

    let entries = super::pushed_index(&suite.registry, &status).await?;
    let pushed: BTreeMap<String, String> = entries.into_iter().collect();
    ensure!(
        pushed == digests,
        "the index holds {pushed:?}, status says {digests:?}"
    );
    for reason in ["RunStarted", "PlatformSucceeded", "IndexPushed"] {
        case.expect_event("app-bk", reason, "Normal").await?;
    }
    Ok(())
}
