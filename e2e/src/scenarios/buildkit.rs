//! The happy path with `spec.strategy: buildkit`: the same run as buildah's, with rootless
//! BuildKit builder pods, confined by the BuildKit profiles, admitted at the namespace's
//! Pod Security level, each platform with its own registry cache ref.

use anyhow::{Context as _, ensure};
use archforge::plan::Platform;
use archforge::registry::parse_reference;
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

use crate::case::{AMD64, ARM64, Case};
use crate::scenarios::checks::{
    Builder, BuilderPod, ensure_pushed, placed_builders, wait_succeeded,
};

/// Values of every `flag value` pair of an argv.
fn values_of<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    argv.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// The slug of `platform` that names its cache ref.
fn slug(platform: &str) -> anyhow::Result<String> {
    Ok(platform
        .parse::<Platform>()
        .map_err(anyhow::Error::msg)?
        .slug())
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
    let (status, digests) = wait_succeeded(case, "app-bk", &[AMD64, ARM64]).await?;
    let buildkit = Builder {
        image: &suite.builder.buildkit_image,
        apparmor_profile: &suite.builder.buildkit_apparmor_profile,
    };
    for placed in placed_builders(case, "app-bk", &[AMD64, ARM64], &buildkit).await? {
        let BuilderPod { platform, builder } = &placed;
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
        // The shared check also takes a pod-level field; BuildKit's is on the container.
        ensure!(
            !suite.version.has_apparmor_field() || security.app_armor_profile.is_some(),
            "no appArmorProfile on the builder container on a {} server",
            suite.version
        );
        let seccomp = security.seccomp_profile.clone().context("no seccomp")?;
        ensure!(
            format!(
                "localhost/{}",
                seccomp.localhost_profile.as_deref().unwrap_or_default()
            ) == suite.builder.buildkit_seccomp_profile.to_string(),
            "seccomp {seccomp:?}"
        );
        // No process sandbox; the operator's snapshotter; and, as the suite's operators are
        // told of the plain-HTTP registry, the buildkitd.toml that trusts it.
        let mut flags = archforge::render::BUILDKITD_FLAGS.to_string();
        if let Some(snapshotter) = suite.builder.buildkit_snapshotter.flag() {
            flags.push_str(&format!(" {snapshotter}"));
        }
        if suite.settings.insecure_registry {
            flags.push_str(&format!(
                " --config {}",
                archforge::render::buildkitd_config_file()
            ));
        }
        ensure!(
            env_of(builder, "BUILDKITD_FLAGS") == Some(flags),
            "BUILDKITD_FLAGS {:?}",
            env_of(builder, "BUILDKITD_FLAGS")
        );
        let argv = builder.command.clone().unwrap_or_default();
        let own = format!("{cache}:{}", slug(platform)?);
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
        for platform in [AMD64, ARM64] {
            let own = format!("{cache}:{}", slug(platform)?);
            let reference = parse_reference(&own)?;
            let auth = suite.registry.auth_for(&reference)?;
            suite
                .registry
                .client()
                .fetch_manifest_digest(&reference, &auth)
                .await
                .with_context(|| format!("the cache ref {own} of {platform}"))?;
        }
    }
    ensure_pushed(case, "app-bk", &status, &digests).await
}
