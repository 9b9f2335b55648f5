//! What the queue reads from the stores' objects: each builder Job's namespace, build and
//! architecture, and each queued ImageBuild's wait. Pure.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use super::{SeenJob, Waiting};
use crate::api::{ImageBuild, Phase};
use crate::plan::Platform;
use crate::plan::isolated::imagebuild_of;
use crate::render::{
    ANNOTATION_EMULATED_ON, ANNOTATION_IMAGEBUILD, ANNOTATION_PLATFORM, LABEL_GENERATION,
};

/// Whether a Job has finished (its Complete or Failed condition is True).
pub fn job_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

fn architecture(platform: &str) -> Option<String> {
    platform.parse::<Platform>().ok().map(|p| p.architecture)
}

/// A builder Job as the queue counts it: against its ImageBuild's namespace and against the
/// architecture of the node it runs on (the emulating host's under emulation). In the
/// isolated build namespace (`build_namespace`), where only the operator creates Jobs, the
/// ImageBuild's namespace is the one its labels name; anywhere else a Job counts only
/// against its own namespace, and only when an ImageBuild controls it: a tenant's Job that
/// copies the labels and annotations charges no one else's namespace. `None` for a Job
/// that names no ImageBuild or platform.
pub fn seen_job(job: &Job, build_namespace: Option<&str>) -> Option<SeenJob> {
    let (namespace, build) = match build_namespace {
        Some(builds) if job.namespace().as_deref() == Some(builds) => imagebuild_of(&job.metadata)?,
        Some(_) => return None,
        None => {
            let owned = job.owner_references().iter().any(|o| {
                o.controller == Some(true)
                    && o.kind == "ImageBuild"
                    && o.api_version.starts_with("archforge.dev/")
            });
            if !owned {
                return None;
            }
            (
                job.namespace()?,
                job.annotations().get(ANNOTATION_IMAGEBUILD)?.clone(),
            )
        }
    };
    let annotations = job.annotations();
    let arch = match annotations.get(ANNOTATION_EMULATED_ON) {
        Some(host) => host.clone(),
        None => architecture(annotations.get(ANNOTATION_PLATFORM)?)?,
    };
    Some(SeenJob {
        namespace,
        build,
        generation: job
            .labels()
            .get(LABEL_GENERATION)
            .and_then(|g| g.parse().ok()),
        arch,
        running: !job_finished(job),
        created: job.metadata.creation_timestamp.as_ref().map(|t| t.0),
    })
}

/// Whether the ImageBuild's status says its run waits in the queue.
pub fn is_queued(build: &ImageBuild) -> bool {
    build
        .status
        .as_ref()
        .is_some_and(|s| s.phase == Some(Phase::Queued))
}

/// A queued ImageBuild as the queue orders it. Its Jobs' architectures are its platforms'
/// (where placement would put an emulated one is decided when it starts).
pub fn waiting(build: &ImageBuild) -> Option<Waiting> {
    let status = build.status.as_ref()?;
    Some(Waiting {
        namespace: build.namespace()?,
        name: build.name_any(),
        generation: build.metadata.generation,
        since: status.start_time.as_deref().and_then(|t| t.parse().ok()),
        arches: build
            .spec
            .platforms
            .iter()
            .filter_map(|p| architecture(p))
            .collect(),
    })
}

/// The queued runs among `builds` that have no Job yet: a run whose Jobs exist started
/// (its status may not say so yet, after a restart) and is counted by its Jobs instead.
/// A Job is the run's when it names the same ImageBuild and generation.
pub fn queued_runs<'a>(
    builds: impl IntoIterator<Item = &'a ImageBuild>,
    jobs: &[SeenJob],
) -> Vec<Waiting> {
    builds
        .into_iter()
        .filter(|b| is_queued(b))
        .filter_map(waiting)
        .filter(|w| {
            !jobs.iter().any(|j| {
                j.namespace == w.namespace && j.build == w.name && j.generation == w.generation
            })
        })
        .collect()
}
