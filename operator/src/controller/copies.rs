//! The per-run copies of an ImageBuild's Secrets in the isolated build namespace. The
//! operator reads the tenant's Secrets only in the ImageBuild's own namespace, and writes
//! into the build namespace only what each builder pod mounts, owned by its Job (so the
//! garbage collector deletes them with it). No Secret content is ever logged or reported.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use super::Context;
use super::error::{ReconcileError, Result};
use super::observe::read_secret;
use crate::api::{ImageBuild, PlatformStatus};
use crate::plan::isolated::{GIT, PULL, PUSH, secret_copy};
use crate::plan::{BuildPlan, SecretNames};
use crate::render::{MANAGER, is_ssh_url};

/// The tenant's Secrets a run copies, read before any Job is created: a missing one fails
/// the run at once (status and a Warning Event), not a builder pod at its grace period.
pub struct Sources {
    secrets: Vec<(&'static str, Secret)>,
    ssh: bool,
}

/// Reads the Secrets `names` names from the ImageBuild's own namespace.
pub async fn read(ctx: &Context, build: &ImageBuild, names: &SecretNames) -> Result<Sources> {
    let mut secrets = Vec::new();
    for (kind, name) in [(GIT, &names.git), (PUSH, &names.push), (PULL, &names.pull)] {
        if let Some(name) = name {
            secrets.push((kind, read_secret(ctx, build, name).await?));
        }
    }
    Ok(Sources {
        secrets,
        ssh: is_ssh_url(&build.spec.source.git.url),
    })
}

/// Writes the copies `job` (as created, with its UID) mounts; a copy that exists already
/// (an earlier reconcile wrote it) is left as it is.
pub async fn write(ctx: &Context, build: &ImageBuild, job: &Job, sources: &Sources) -> Result<()> {
    let namespace = job.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    for (kind, source) in &sources.secrets {
        let copy = secret_copy(source, kind, sources.ssh, job, build);
        match api.create(&params, &copy).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(source) => {
                return Err(ReconcileError::CopySecret {
                    name: copy.name_any(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Whether a builder pod of the run says a Secret it uses is missing: the copies of a Job
/// whose operator stopped between creating it and writing them.
pub fn mounts_missing(platforms: &[PlatformStatus]) -> bool {
    platforms.iter().any(|p| {
        matches!(
            p.reason.as_deref(),
            Some("FailedMount" | "CreateContainerConfigError")
        )
    })
}

/// Writes again the copies of the run's unfinished Jobs `current` (those that exist are
/// left as they are).
pub async fn restore(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    current: &[Job],
) -> Result<()> {
    let sources = read(ctx, build, &plan.secrets).await?;
    let unfinished = super::jobs::unfinished(current);
    for job in current
        .iter()
        .filter(|j| unfinished.contains(&j.name_any()))
    {
        write(ctx, build, job, &sources).await?;
    }
    Ok(())
}
