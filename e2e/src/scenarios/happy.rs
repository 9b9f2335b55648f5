//! The happy path: a two-platform ImageBuild builds, each platform on a node of its
//! architecture, with the pod settings the operator promises, and pushes an index of both.

use crate::case::{AMD64, ARM64, Case};
use crate::scenarios::checks::{Builder, ensure_pushed, placed_builders, wait_succeeded};

/// Admitted at the namespace's enforced Pod Security level, bound to nodes of their
/// architectures, with the fuse limit and AppArmor profile; the index holds the digests in
/// status; `Succeeded`, `Ready=True` and the Events of a run.
pub async fn happy_path_two_platforms(case: &Case) -> anyhow::Result<()> {
    let suite = &case.suite;
    // The builder pods below are admitted at this level, with the default settings.
    case.ensure_pod_security_enforced().await?;
    case.apply(&case.manifest("app", &[AMD64, ARM64])).await?;
    let (status, digests) = wait_succeeded(case, "app", &[AMD64, ARM64]).await?;
    let buildah = Builder {
        image: &suite.builder.builder_image,
        apparmor_profile: &suite.builder.apparmor_profile,
    };
    placed_builders(case, "app", &[AMD64, ARM64], &buildah).await?;
    ensure_pushed(case, "app", &status, &digests).await
}
