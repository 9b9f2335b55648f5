//! Reading what the cluster (and the git server) says about one ImageBuild's run.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use super::decide::Nodes;
use super::error::{ReconcileError, Result};
use crate::api::{ImageBuild, ImageBuildStatus};
use crate::plan::EMULATION_LABEL_PREFIX;
use crate::render::{ANNOTATION_REVISION, LABEL_GENERATION, LABEL_IMAGEBUILD};
use crate::source::{GitCredentials, resolve_commit};
use crate::status::{PodReport, owning_job, pod_report};

fn imagebuild_selector(build: &ImageBuild) -> String {
    format!(
        "{LABEL_IMAGEBUILD}={}",
        crate::plan::dns_label(&build.name_any(), 63)
    )
}

/// The Jobs this ImageBuild controls, split into the current run's and earlier runs'. A Job
/// is the current run's by name; names do not depend on the commit.
pub async fn jobs(ctx: &Context, build: &ImageBuild) -> Result<(Vec<Job>, Vec<Job>)> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let owned = api
        .list(&ListParams::default().labels(&imagebuild_selector(build)))
        .await
        .map_err(ReconcileError::ListJobs)?
        .items
        .into_iter()
        .filter(|j| owned_by(j, build));
    let names = crate::plan::current_job_names(build);
    Ok(owned.partition(|j| names.iter().any(|n| j.metadata.name.as_deref() == Some(n))))
}

/// Whether `build` is `job`'s controller (by UID: labels and names can be copied).
pub fn owned_by(job: &Job, build: &ImageBuild) -> bool {
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == build.metadata.uid.as_ref())
}

/// What the builder pods of `jobs` (this run's) reported, by Job name.
pub async fn pod_reports(
    ctx: &Context,
    build: &ImageBuild,
    generation: i64,
    jobs: &[Job],
) -> Result<Vec<(String, PodReport)>> {
    if jobs.is_empty() {
        // No Job of the run, so no pod can be one of its builders.
        return Ok(Vec::new());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let selector = format!(
        "{},{LABEL_GENERATION}={generation}",
        imagebuild_selector(build)
    );
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ReconcileError::ListPods)?;
    Ok(pods
        .items
        .iter()
        .filter_map(|pod| Some((owning_job(pod, jobs)?, pod_report(pod))))
        .collect())
}

/// The nodes that can take a builder pod now (Ready and schedulable): their architectures,
/// and which architectures each can emulate.
pub async fn nodes(ctx: &Context) -> Result<Nodes> {
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ReconcileError::ListNodes)?;
    let mut seen = Nodes::default();
    let usable = nodes
        .items
        .iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
    for node in usable {
        let Some(arch) = node.labels().get("kubernetes.io/arch") else {
            continue;
        };
        seen.native.insert(arch.clone());
        for (key, value) in node.labels() {
            if let Some(target) = key.strip_prefix(EMULATION_LABEL_PREFIX)
                && value == "true"
                && target != arch
            {
                seen.emulating
                    .entry(target.to_string())
                    .or_default()
                    .insert(arch.clone());
            }
        }
    }
    Ok(seen)
}

/// Reads a Secret of the ImageBuild's own namespace: a spec can never borrow another
/// namespace's Secret.
pub async fn read_secret(ctx: &Context, build: &ImageBuild, name: &str) -> Result<Secret> {
    let namespace = build.namespace().unwrap_or_default();
    Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get(name)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => ReconcileError::SecretMissing {
                namespace,
                name: name.to_string(),
            },
            source => ReconcileError::ReadSecret {
                name: name.to_string(),
                source,
            },
        })
}

pub fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|v| v.0.clone())
}

/// The run's commit: from status, from a Job of the run, or from the git server.
pub async fn pin_commit(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    jobs: &[Job],
) -> Result<String> {
    if let Some(source) = &status.source {
        return Ok(source.commit.clone());
    }
    if let Some(revision) = jobs
        .iter()
        .find_map(|j| j.annotations().get(ANNOTATION_REVISION).cloned())
    {
        return Ok(revision);
    }
    let git = &build.spec.source.git;
    let credentials = match &git.credentials_secret {
        Some(name) if git.url.starts_with("http") => {
            let secret = read_secret(ctx, build, name).await?;
            let text =
                |key| secret_value(&secret, key).map(|v| String::from_utf8_lossy(&v).into_owned());
            match (text("username"), text("password")) {
                (Some(username), Some(password)) => Some(GitCredentials { username, password }),
                _ => {
                    return Err(ReconcileError::SecretKeys {
                        name: name.clone(),
                        keys: "username and password",
                    });
                }
            }
        }
        _ => None,
    };
    Ok(resolve_commit(&git.url, &git.r#ref, credentials.as_ref()).await?)
}
