//! Creating and deleting a run's Jobs.

use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};

use super::Context;
use super::copies;
use super::error::{ReconcileError, Result};
use super::observe::owns;
use crate::api::ImageBuild;
use crate::plan::{BuildPlan, Placement, PlatformPlan, isolated};
use crate::queue::seen::job_finished as is_finished;
use crate::render::{MANAGER, render_job};

/// Deletes `names` (background propagation: their pods go with them); gone already is fine.
pub async fn delete_jobs(ctx: &Context, build: &ImageBuild, names: &[String]) -> Result<()> {
    let namespace = ctx.jobs_namespace(build);
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in names {
        ctx.stores.deleted(&namespace, name);
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::DeleteJob {
                    name: name.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

pub fn unfinished(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .filter(|j| !is_finished(j))
        .map(|j| j.name_any())
        .collect()
}

/// Stops the Jobs of earlier runs that are still running.
pub async fn stop_earlier_runs(ctx: &Context, build: &ImageBuild, stale: &[Job]) -> Result<()> {
    delete_jobs(ctx, build, &unfinished(stale)).await
}

/// Whether the API server's refusal of a Job is final for this spec: a 4xx other than a
/// conflict (409, a taken name), throttling (429) or a timeout (408).
fn is_rejection(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 404 | 408 | 409 | 429)
}

/// Creates one Job of the run: the Job as created (with its UID), and whether it is new. It
/// never changes an existing object: a taken name is this ImageBuild's own Job (created by
/// an earlier reconcile the watch has not shown yet) or someone else's, which is a conflict.
async fn create_job(
    ctx: &Context,
    build: &ImageBuild,
    job: &Job,
    platform: &str,
) -> Result<(Job, bool)> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.jobs_namespace(build));
    let name = job.name_any();
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, job).await {
        Ok(created) => {
            ctx.stores.created(super::trim_job(created.clone()));
            Ok((created, true))
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api
                .get(&name)
                .await
                .map_err(|source| ReconcileError::ReadJob {
                    name: name.clone(),
                    source,
                })?;
            match owns(ctx, &existing, build) {
                true => {
                    ctx.stores.created(super::trim_job(existing.clone()));
                    Ok((existing, false))
                }
                false => Err(ReconcileError::JobNameConflict { name }),
            }
        }
        Err(kube::Error::Api(s)) if is_rejection(s.code) => Err(ReconcileError::JobRejected {
            platform: platform.to_string(),
            message: s.message,
        }),
        Err(source) => Err(ReconcileError::CreateJob {
            platform: platform.to_string(),
            source,
        }),
    }
}

/// The Job of one platform, as it is created here: in the build namespace, it mounts the
/// run's Secret copies and names its ImageBuild by labels instead of an owner reference.
fn job_for(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    platform: &PlatformPlan,
    placement: &Placement,
) -> Job {
    let settings = &ctx.config.builder;
    let version = ctx.config.version;
    let Some(namespace) = &ctx.config.build_namespace else {
        return render_job(build, plan, platform, placement, settings, version);
    };
    let mut own = plan.clone();
    own.secrets = isolated::copies_for(&plan.secrets, &platform.job_name);
    let job = render_job(build, &own, platform, placement, settings, version);
    isolated::isolate_job(job, build, namespace)
}

/// Creates the Jobs of `platforms`, each first checked against the Pod Security level:
/// admission refuses pods, not Jobs, and a Job whose pods are refused only says so in the
/// Job controller's Events. In the build namespace, the tenant's Secrets are read first
/// and each Job's copies written once it exists. Returns how many were created; on an
/// error, also the names of this run's Jobs that exist, so that a run that cannot start
/// can be taken down.
pub async fn create_jobs(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    platforms: &[(String, Placement)],
) -> std::result::Result<usize, (ReconcileError, Vec<String>)> {
    let settings = &ctx.config.builder;
    let jobs: Vec<(String, Job)> = plan
        .platforms
        .iter()
        .filter_map(|p| {
            let (name, placement) = platforms
                .iter()
                .find(|(n, _)| n == &p.platform.to_string())?;
            Some((name.clone(), job_for(ctx, build, plan, p, placement)))
        })
        .collect();
    for (_, job) in &jobs {
        // At the server's own policy version: what baseline admits changes between releases.
        crate::podsecurity::check_job_at(job, settings.pod_security_level, ctx.config.version)
            .map_err(|v| (v.into(), vec![]))?;
    }
    let sources = match ctx.isolated() {
        true => Some(
            copies::read(ctx, build, &plan.secrets)
                .await
                .map_err(|e| (e, vec![]))?,
        ),
        false => None,
    };
    let mut created = 0;
    let mut exist = Vec::new();
    for (platform, job) in &jobs {
        let made = create_job(ctx, build, job, platform).await;
        let made = match (made, &sources) {
            (Ok((job, new)), Some(sources)) => {
                copies::write(ctx, build, &job, sources).await.map(|()| new)
            }
            (made, _) => made.map(|(_, new)| new),
        };
        match made {
            Ok(new) => {
                created += usize::from(new);
                exist.push(job.name_any());
            }
            Err(e) => return Err((e, exist)),
        }
    }
    Ok(created)
}
