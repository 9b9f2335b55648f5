//! Carrying out a run's step, and reporting it: [`report`] is the only place that publishes
//! Events and patches the status.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::decide::Step;
use super::error::{ReconcileError, Result};
use super::observe::{owned_by, read_secret, secret_value};
use super::{Context, Run, now};
use crate::api::{ImageBuild, ImageBuildStatus, Phase, PlatformStatus};
use crate::plan::BuildPlan;
use crate::registry::{DockerConfig, PlatformImage, Registry, run_annotations};
use crate::render::{MANAGER, render_job};
use crate::source::redact_url;
use crate::status::{self, progress, record_run, run_phase, set_phase_conditions};
use crate::telemetry::{PlatformLabels, ResultLabels};
use crate::validation::InvalidSpec;

/// One Event to publish about the ImageBuild.
pub struct Note {
    type_: EventType,
    reason: String,
    action: &'static str,
    text: String,
    /// The Job it concerns: each platform's Event then stands on its own (the recorder
    /// would otherwise fold them into one series).
    job: Option<String>,
}

impl Note {
    fn normal(reason: &str, action: &'static str, text: String, job: Option<String>) -> Self {
        Note {
            type_: EventType::Normal,
            reason: reason.into(),
            action,
            text,
            job,
        }
    }

    fn warning(reason: &str, action: &'static str, text: String, job: Option<String>) -> Self {
        Note {
            type_: EventType::Warning,
            ..Note::normal(reason, action, text, job)
        }
    }
}

/// Publishes `notes` and writes `status` (server-side apply, one field manager).
pub async fn report(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    notes: Vec<Note>,
) -> Result<()> {
    for note in notes {
        ctx.metrics.api_request("create", "events");
        let secondary = note
            .job
            .map(|name| k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("batch/v1".into()),
                kind: Some("Job".into()),
                name: Some(name),
                namespace: build.namespace(),
                ..Default::default()
            });
        let event = Event {
            type_: note.type_,
            reason: note.reason.clone(),
            note: Some(status::keep_tail(&note.text, 1000)),
            action: note.action.into(),
            secondary,
        };
        if let Err(e) = ctx.recorder.publish(&event, &build.object_ref(&())).await {
            tracing::warn!(error = %e, reason = note.reason, "could not publish an event");
        }
    }
    let api: Api<ImageBuild> =
        Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    ctx.metrics.api_request("patch", "imagebuilds/status");
    let body =
        json!({"apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild", "status": status});
    api.patch_status(
        &build.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(ReconcileError::PatchStatus)?;
    Ok(())
}

/// An invalid spec: Stalled with every broken rule, one Warning Event, no Jobs.
pub async fn refuse_invalid(
    ctx: &Context,
    build: &ImageBuild,
    mut run: Run,
    invalid: InvalidSpec,
) -> Result<Action> {
    let generation = run.id.generation;
    let already = run.previous.conditions.iter().any(|c| {
        c.type_ == status::STALLED
            && c.status == "True"
            && c.reason == "InvalidSpec"
            && c.observed_generation == Some(generation)
    });
    run.status.platforms.clear();
    run.status.progress = None;
    let message = invalid.to_string();
    set_phase_conditions(
        &mut run.status,
        Phase::Failed,
        "InvalidSpec",
        &message,
        generation,
        now(),
    );
    let notes = match already {
        true => vec![],
        false => vec![Note::warning("InvalidSpec", "Validate", message, None)],
    };
    report(ctx, build, &run.status, notes).await?;
    Err(invalid.into())
}

/// The commit could not be pinned: wait while the git server is unreachable, fail otherwise.
pub async fn pin_failed(
    ctx: &Context,
    build: &ImageBuild,
    mut run: Run,
    e: ReconcileError,
) -> Result<Action> {
    let transient = match &e {
        ReconcileError::PinCommit(s) => s.is_transient(),
        ReconcileError::ReadSecret { .. } => true,
        _ => false,
    };
    let (phase, notes) = match transient {
        true => (Phase::Pending, vec![]),
        false => (
            Phase::Failed,
            vec![Note::warning(e.reason(), "PinCommit", e.to_string(), None)],
        ),
    };
    let generation = run.id.generation;
    set_phase_conditions(
        &mut run.status,
        phase,
        e.reason(),
        &e.to_string(),
        generation,
        now(),
    );
    report(ctx, build, &run.status, notes).await?;
    Err(e)
}

/// Deletes `names` (background propagation: their pods go with them); gone already is fine.
pub async fn delete_jobs(ctx: &Context, build: &ImageBuild, names: &[String]) -> Result<()> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in names {
        ctx.metrics.api_request("delete", "jobs");
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

fn unfinished(jobs: &[Job]) -> Vec<String> {
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
    ctx.metrics.api_request("create", "jobs");
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            ctx.metrics.api_request("get", "jobs");
            let existing = api
                .get(&name)
                .await
                .map_err(|source| ReconcileError::ReadJob {
                    name: name.clone(),
                    source,
                })?;
            match owned_by(&existing, build) {
                true => Ok(false),
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
async fn create_jobs(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    platforms: &[String],
) -> std::result::Result<usize, (ReconcileError, Vec<String>)> {
    let settings = &ctx.config.builder;
    let jobs: Vec<(String, Job)> = plan
        .platforms
        .iter()
        .filter(|p| platforms.contains(&p.platform.to_string()))
        .map(|p| {
            let job = render_job(build, plan, p, settings, ctx.config.version);
            (p.platform.to_string(), job)
        })
        .collect();
    for (_, job) in &jobs {
        crate::podsecurity::check_job(job, settings.pod_security_level)
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

/// Ends the current run: conditions, history and metrics agree on the result.
fn finish_run(ctx: &Context, run: &mut Run, result: Phase, reason: &str, message: &str) {
    let generation = run.id.generation;
    set_phase_conditions(&mut run.status, result, reason, message, generation, now());
    let failure = (result == Phase::Failed).then(|| message.to_string());
    record_run(
        &mut run.status,
        result,
        failure,
        ctx.config.history_limit,
        now(),
    );
    let label = match result {
        Phase::Succeeded => "succeeded",
        _ => "failed",
    };
    ctx.metrics
        .runs_finished
        .get_or_create(&ResultLabels {
            result: label.into(),
        })
        .inc();
}

/// Events (and build-time metrics) for the platforms that succeeded since the last report.
fn newly_succeeded(ctx: &Context, run: &Run, platforms: &[PlatformStatus]) -> Vec<Note> {
    let mut notes = Vec::new();
    for p in platforms.iter().filter(|p| p.phase == Phase::Succeeded) {
        let was = run
            .previous
            .platforms
            .iter()
            .find(|b| b.platform == p.platform && run.same)
            .map(|b| b.phase);
        if was == Some(Phase::Succeeded) {
            continue;
        }
        if let (Some(start), Some(end)) = (&p.start_time, &p.completion_time)
            && let (Ok(start), Ok(end)) = (
                start.parse::<jiff::Timestamp>(),
                end.parse::<jiff::Timestamp>(),
            )
        {
            ctx.metrics
                .build_duration
                .get_or_create(&PlatformLabels {
                    platform: p.platform.clone(),
                })
                .observe(end.duration_since(start).as_secs_f64());
        }
        let digest = p.digest.clone().unwrap_or_default();
        notes.push(Note::normal(
            "PlatformSucceeded",
            "Build",
            format!("{} pushed {digest}", p.platform),
            p.job.clone(),
        ));
    }
    notes
}

/// Carries out `step` and reports the run.
pub async fn take(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    mut run: Run,
    current: &[Job],
    platforms: Vec<PlatformStatus>,
    step: Step,
) -> Result<Action> {
    let generation = plan.generation;
    let mut notes = newly_succeeded(ctx, &run, &platforms);
    run.status.progress = Some(progress(&platforms));
    run.status.platforms = platforms;
    let action = match step {
        Step::WaitForNodes { platforms } => {
            let message = format!(
                "no schedulable node with kubernetes.io/arch for {}; the run starts when one is Ready",
                platforms.join(", ")
            );
            let already = run
                .previous
                .conditions
                .iter()
                .any(|c| c.reason == "NoNodeForPlatform" && c.message == message);
            set_phase_conditions(
                &mut run.status,
                Phase::Pending,
                "NoNodeForPlatform",
                &message,
                generation,
                now(),
            );
            run.status.progress = Some(progress(&[]));
            if !already {
                notes.push(Note::warning(
                    "NoNodeForPlatform",
                    "CheckPlacement",
                    message,
                    None,
                ));
            }
            Action::requeue(Duration::from_secs(30))
        }
        Step::CreateJobs { platforms } => match create_jobs(ctx, build, plan, &platforms).await {
            Ok(created) => {
                if created == plan.platforms.len() {
                    ctx.metrics.runs_started.inc();
                    let all: Vec<String> = plan
                        .platforms
                        .iter()
                        .map(|p| p.platform.to_string())
                        .collect();
                    let text = format!("building {} at {}", all.join(", "), plan.revision);
                    notes.insert(0, Note::normal("RunStarted", "CreateJobs", text, None));
                }
                building(ctx, &mut run, plan)
            }
            Err((e, exist)) if e.stops_the_run() => {
                // Nothing of a run that cannot start is left running.
                let own: Vec<String> = current.iter().map(|j| j.name_any()).chain(exist).collect();
                delete_jobs(ctx, build, &own).await?;
                let message = e.to_string();
                run.status.platforms.clear();
                run.status.progress = Some(progress(&[]));
                finish_run(ctx, &mut run, Phase::Failed, e.reason(), &message);
                notes.push(Note::warning(e.reason(), "CreateJobs", message, None));
                Action::await_change()
            }
            Err((e, _)) => return Err(e),
        },
        Step::Building => building(ctx, &mut run, plan),
        Step::Fail {
            platform: _,
            job,
            message,
        } => {
            delete_jobs(ctx, build, &unfinished(current)).await?;
            finish_run(ctx, &mut run, Phase::Failed, "PlatformFailed", &message);
            notes.push(Note::warning("PlatformFailed", "Build", message, job));
            Action::await_change()
        }
        Step::Assemble => match assemble(ctx, build, &run.status, plan).await {
            Ok(digest) => {
                let message = format!("pushed {} ({digest})", build.spec.output.image);
                run.status.image = Some(build.spec.output.image.clone());
                run.status.digest = Some(digest);
                finish_run(ctx, &mut run, Phase::Succeeded, "IndexPushed", &message);
                notes.push(Note::normal("IndexPushed", "Assemble", message, None));
                Action::await_change()
            }
            Err(ReconcileError::Assemble(e)) if e.is_transient() => {
                // The digests are in status: the retry only repeats the assembly.
                set_phase_conditions(
                    &mut run.status,
                    Phase::Assembling,
                    e.reason(),
                    &e.to_string(),
                    generation,
                    now(),
                );
                notes.push(Note::warning(e.reason(), "Assemble", e.to_string(), None));
                report(ctx, build, &run.status, notes).await?;
                return Err(ReconcileError::Assemble(e));
            }
            Err(e @ ReconcileError::ReadSecret { .. }) => return Err(e),
            Err(e) => {
                let message = e.to_string();
                finish_run(ctx, &mut run, Phase::Failed, e.reason(), &message);
                notes.push(Note::warning(e.reason(), "Assemble", message, None));
                Action::await_change()
            }
        },
    };
    report(ctx, build, &run.status, notes).await?;
    Ok(action)
}

/// The run is under way: every Job of it exists, even when no pod has started yet.
fn building(ctx: &Context, run: &mut Run, plan: &BuildPlan) -> Action {
    let phase = match run_phase(&run.status.platforms) {
        Phase::Pending => Phase::Building,
        phase => phase,
    };
    let message = format!(
        "{} of {} platforms built",
        run.status.progress.clone().unwrap_or_default(),
        plan.platforms.len()
    );
    set_phase_conditions(
        &mut run.status,
        phase,
        "Building",
        &message,
        plan.generation,
        now(),
    );
    Action::requeue(ctx.config.resync)
}

/// Assembles and pushes the index of a run whose platforms all succeeded.
async fn assemble(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    plan: &BuildPlan,
) -> Result<String> {
    let mut options = ctx.config.registry.clone();
    if let Some(name) = &build.spec.output.push_secret {
        let secret = read_secret(ctx, build, name).await?;
        let config =
            secret_value(&secret, ".dockerconfigjson").ok_or(ReconcileError::SecretKeys {
                name: name.clone(),
                keys: ".dockerconfigjson",
            })?;
        options.credentials = DockerConfig::from_json(name, &config)?;
    }
    let images: Vec<PlatformImage> = plan
        .platforms
        .iter()
        .zip(&status.platforms)
        .map(|(p, s)| PlatformImage {
            platform: p.platform.clone(),
            digest: s.digest.clone().unwrap_or_default(),
        })
        .collect();
    // Taken from the run, not the clock, so a retried assembly pushes identical bytes.
    let created = status
        .platforms
        .iter()
        .filter_map(|p| p.completion_time.clone())
        .max()
        .unwrap_or_default();
    let annotations = run_annotations(
        &redact_url(&build.spec.source.git.url),
        &plan.revision,
        &created,
    );
    let started = Instant::now();
    let pushed = Registry::new(options)
        .assemble_index(
            &build.spec.output.image,
            &images,
            plan.media_type,
            &annotations,
        )
        .await?;
    ctx.metrics
        .assembly_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(pushed.digest)
}
