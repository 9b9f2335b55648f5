//! Carrying out a run's step, and reporting it: [`report`] is the only place that publishes
//! Events and patches the status.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::decide::Step;
use super::error::{ReconcileError, Result};
use super::jobs::{create_jobs, delete_jobs, unfinished};
use super::notes::{newly_failed_optional, newly_stuck, newly_succeeded};
use super::observe::{read_secret, secret_value};
use super::report::{Note, report};
use super::signing::{build_facts, signing_key};
use super::{Context, Run, now};
use crate::api::Emulation;
use crate::api::{ImageBuild, ImageBuildStatus, Phase, PlatformStatus};
use crate::plan::{BuildPlan, Placement};
use crate::registry::{
    DockerConfig, PlatformImage, Published, Registry, RegistryOptions, run_annotations,
};
use crate::source::redact_url;
use crate::status::{self, progress, record_run, set_phase_conditions};
use crate::supply::Signer;
use crate::telemetry::ResultLabels;
use crate::validation::InvalidSpec;

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

/// The reason of a run that pushed its index without platforms that were allowed to fail.
const PARTIAL: &str = "IndexPushedWithoutOptionalPlatforms";

/// Ends the current run: conditions, history and metrics agree on the result.
fn finish_run(ctx: &Context, run: &mut Run, result: Phase, reason: &str, message: &str) {
    let generation = run.id.generation;
    set_phase_conditions(&mut run.status, result, reason, message, generation, now());
    // History keeps why a run failed, and what a run that succeeded went without.
    let failure = (result == Phase::Failed || reason == PARTIAL).then(|| message.to_string());
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
    notes.extend(newly_failed_optional(&run, plan, &platforms));
    notes.extend(newly_stuck(&run, &platforms));
    run.status.progress = Some(progress(&platforms));
    run.status.platforms = platforms;
    let action = match step {
        Step::WaitForNodes {
            platforms: _,
            retry_in,
            why,
        } => {
            let when = match (plan.emulation, retry_in) {
                // A fixed time, not a countdown: the message (and so the status and the
                // Event) stays the same on every look until something changes.
                (_, Some(_)) => format!(
                    "one qualifies, or under emulation from {} (emulationAfter {} after the run's start)",
                    emulation_starts(run.status.start_time.as_deref(), plan.emulation_after),
                    humantime::format_duration(plan.emulation_after)
                ),
                (Emulation::Never, None) => "one qualifies".to_string(),
                (Emulation::Fallback, None) => "either qualifies".to_string(),
                (Emulation::Always, None) => "there is one".to_string(),
            };
            let message = format!("{why}; the run starts when {when}");
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
            let look_again = Duration::from_secs(30);
            Action::requeue(retry_in.map_or(look_again, |left| left.min(look_again)))
        }
        Step::CreateJobs { platforms } => match start_jobs(ctx, build, plan, &platforms).await {
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
                for (platform, placement) in &platforms {
                    if let Placement::Emulated { host } = placement {
                        let text = match plan.emulation {
                            Emulation::Always => format!(
                                "{platform} builds under QEMU emulation on an {host} node: emulation is Always, so every platform builds on {host} nodes (slower than native)"
                            ),
                            _ => format!(
                                "{platform} builds under QEMU emulation on an {host} node: no node of its own architecture qualifies and emulation is Fallback (slower than native)"
                            ),
                        };
                        notes.push(Note::normal("Emulated", "CreateJobs", text, None));
                    }
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
            Ok(published) => {
                let digest = published.index.digest.clone();
                record_attachments(&mut run.status, &published);
                let mut message = format!("pushed {} ({digest})", build.spec.output.image);
                if published.index_attachments.is_some() {
                    message.push_str(&format!(
                        "; the index and its {} platform images are signed, with SLSA provenance attested",
                        published.platforms.len()
                    ));
                }
                let missing: Vec<&str> = run
                    .status
                    .platforms
                    .iter()
                    .filter(|p| p.phase == Phase::Failed)
                    .map(|p| p.platform.as_str())
                    .collect();
                let reason = match missing.is_empty() {
                    true => "IndexPushed",
                    false => {
                        message.push_str(&format!(
                            " without {}, which may fail and failed (see status.platforms)",
                            missing.join(", ")
                        ));
                        notes.push(Note::warning(
                            "PlatformsMissing",
                            "Assemble",
                            message.clone(),
                            None,
                        ));
                        PARTIAL
                    }
                };
                run.status.image = Some(build.spec.output.image.clone());
                run.status.digest = Some(digest);
                finish_run(ctx, &mut run, Phase::Succeeded, reason, &message);
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

/// Creates the Jobs of `platforms` once the run's signing key (when it asks for one) is
/// known to be usable: a run that could never be signed builds nothing.
async fn start_jobs(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    platforms: &[(String, Placement)],
) -> std::result::Result<usize, (ReconcileError, Vec<String>)> {
    signing_key(ctx, build).await.map_err(|e| (e, vec![]))?;
    create_jobs(ctx, build, plan, platforms).await
}

/// Writes the digests of the signatures and attestations `published` attached into status:
/// each platform's, and the index's.
fn record_attachments(status: &mut ImageBuildStatus, published: &Published) {
    for (platform, attached) in &published.platforms {
        let name = platform.to_string();
        if let Some(p) = status.platforms.iter_mut().find(|p| p.platform == name) {
            p.signature = Some(attached.signature.clone());
            p.attestation = Some(attached.attestation.clone());
        }
    }
    status.signature = published
        .index_attachments
        .as_ref()
        .map(|a| a.signature.clone());
    status.attestation = published
        .index_attachments
        .as_ref()
        .map(|a| a.attestation.clone());
}

/// The run is under way: every Job of it exists, even when no pod has started yet (a
/// platform that may fail and failed does not end it).
fn building(ctx: &Context, run: &mut Run, plan: &BuildPlan) -> Action {
    let phase = Phase::Building;
    let mut message = format!(
        "{} of {} platforms built",
        run.status.progress.clone().unwrap_or_default(),
        plan.platforms.len()
    );
    // What holds a platform up is what `kubectl get`, Argo CD and `kubectl wait` show.
    let held_up = run
        .status
        .platforms
        .iter()
        .filter(|p| p.reason.is_some() && matches!(p.phase, Phase::Pending | Phase::Building));
    for p in held_up {
        let why = p.message.as_deref().unwrap_or_default();
        message.push_str(&format!("; {} is held up: {why}", p.platform));
    }
    set_phase_conditions(
        &mut run.status,
        phase,
        "Building",
        &message,
        plan.generation,
        now(),
    );
    let resync = ctx.config.resync;
    Action::requeue(run.look_again.map_or(resync, |at| at.min(resync)))
}

/// Publishes the index of a run whose platforms all succeeded: signed and attested, each
/// child and the index, when the run asks for it.
async fn assemble(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    plan: &BuildPlan,
) -> Result<Published> {
    // Before any push: a key that went missing since the Jobs started publishes nothing.
    let key = signing_key(ctx, build).await?;
    // Only the ImageBuild's own push credentials, anonymous without: the operator never
    // writes into a repository with more rights than the ImageBuild grants. Registry trust
    // (CAs, plain-HTTP hosts) and retries stay the operator's.
    let mut options = RegistryOptions {
        credentials: DockerConfig::default(),
        ..ctx.config.registry.clone()
    };
    if let Some(name) = &build.spec.output.push_secret {
        let secret = read_secret(ctx, build, name).await?;
        let config =
            secret_value(&secret, ".dockerconfigjson").ok_or(ReconcileError::SecretKeys {
                name: name.clone(),
                keys: ".dockerconfigjson",
            })?;
        options.credentials = DockerConfig::from_json(name, &config)?;
    }
    // Only what succeeded: a platform allowed to fail that failed is left out.
    let images: Vec<PlatformImage> = plan
        .platforms
        .iter()
        .zip(&status.platforms)
        .filter(|(_, s)| s.phase == Phase::Succeeded)
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
    let facts = build_facts(&ctx.config, build, plan, status, &created);
    let signer = key.as_deref().map(|key| Signer { key, facts: &facts });
    let started = Instant::now();
    let published = Registry::new(options)
        .publish(
            &build.spec.output.image,
            &images,
            plan.media_type,
            &annotations,
            signer.as_ref(),
        )
        .await?;
    ctx.metrics
        .assembly_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(published)
}

/// When a run that started at `start_time` may fall back to emulation, as RFC 3339.
fn emulation_starts(start_time: Option<&str>, after: Duration) -> String {
    start_time
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .zip(jiff::SignedDuration::try_from(after).ok())
        .and_then(|(start, after)| start.checked_add(after).ok())
        .map_or_else(
            || "the end of the grace period".to_string(),
            |at| at.to_string(),
        )
}
