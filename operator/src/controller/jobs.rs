//! Creating and deleting a run's Jobs.

use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams, PropagationPolicy};
use kube::{Api, ResourceExt};

use super::Context;
use super::error::{ReconcileError, Result};
use super::observe::owned_by;
use crate::api::ImageBuild;
use crate::plan::{BuildPlan, Placement};
use crate::render::{MANAGER, render_job};

/// Deletes `names` (background propagation: their pods go with them); gone already is fine.
pub async fn delete_jobs(ctx: &Context, build: &ImageBuild, names: &[String]) -> Result<()> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let namespace = build.namespace().unwrap_or_default();
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

fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
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

/// Creates one Job of the run; `Ok(false)` when it exists already. It never changes an
/// existing object: a taken name is this ImageBuild's own Job (created by an earlier
/// reconcile the watch has not shown yet) or someone else's, which is a conflict.
async fn create_job(ctx: &Context, build: &ImageBuild, job: &Job, platform: &str) -> Result<bool> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let name = job.name_any();
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, job).await {
        Ok(created) => {
            ctx.stores.created(super::trim_job(created));
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = api
                .get(&name)
                .await
                .map_err(|source| ReconcileError::ReadJob {
                    name: name.clone(),
                    source,
                })?;
            match owned_by(&existing, build) {
                true => {
                    ctx.stores.created(super::trim_job(existing));
                    Ok(false)
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

/// Creates the Jobs of `platforms`, each first checked against the Pod Security level:
/// admission refuses pods, not Jobs, and a Job whose pods are refused only says so in the
/// Job controller's Events. Returns how many were created; on an error, also the names of
/// this run's Jobs that exist, so that a run that cannot start can be taken down.
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
            let job = render_job(build, plan, p, placement, settings, ctx.config.version);
            Some((name.clone(), job))
        })
        .collect();
    for (_, job) in &jobs {
        // At the server's own policy version: what baseline admits changes between releases.
        crate::podsecurity::check_job_at(job, settings.pod_security_level, ctx.config.version)
            .map_err(|v| (v.into(), vec![]))?;
    }
    let mut created = 0;
    let mut exist = Vec::new();
    for (platform, job) in &jobs {
        match create_job(ctx, build, job, platform).await {
            Ok(new) => {
                created += usize::from(new);
                exist.push(job.name_any());
            }
            Err(e) => return Err((e, exist)),
        }
    }
    Ok(created)
}
