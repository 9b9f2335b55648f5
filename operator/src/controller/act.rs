//! Carrying out a run's step, and reporting it: [`report`] is the only place that publishes
//! Events and patches the status.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::decide::Step;
use super::error::{ReconcileError, Result};
use super::jobs::{create_jobs, delete_jobs, unfinished};
use super::notes::{newly_failed_optional, newly_stuck, newly_succeeded};
use super::policy_watch::POLICY_VIOLATION;
use super::report::{Note, report};
use super::signing::signing_key;
use super::{Context, Run, copies, now, publish};
use crate::api::Emulation;
use crate::api::{ImageBuild, Phase, PlatformStatus};
use crate::plan::{BuildPlan, Placement};
use crate::policy::Violations;
use crate::status::{self, progress, record_run, set_phase_conditions};
use crate::telemetry::ResultLabels;
use crate::validation::InvalidSpec;

/// An invalid spec: Stalled with every broken rule, one Warning Event, no Jobs.
pub async fn refuse_invalid(
    ctx: &Context,
    build: &ImageBuild,
    run: Run,
    invalid: InvalidSpec,
) -> Result<Action> {
    let refusal = ("InvalidSpec", "Validate", invalid.to_string());
    refuse(ctx, build, run, refusal).await?;
    Err(invalid.into())
}

/// A spec over a BuildPolicy of its namespace: Stalled with every violation (each naming
/// its policy), one Warning Event, no Jobs. Never clamped.
pub async fn refuse_by_policy(
    ctx: &Context,
    build: &ImageBuild,
    run: Run,
    violations: Violations,
) -> Result<Action> {
    let refusal = (POLICY_VIOLATION, "Admit", violations.to_string());
    refuse(ctx, build, run, refusal).await?;
    Err(violations.into())
}

/// Reports a run that may not start: Stalled with `(reason, action, message)`, and one
/// Warning Event unless the status already says so.
async fn refuse(
    ctx: &Context,
    build: &ImageBuild,
    mut run: Run,
    (reason, action, message): (&str, &'static str, String),
) -> Result<()> {
    let generation = run.id.generation;
    let already = run.previous.conditions.iter().any(|c| {
        c.type_ == status::STALLED
            && c.status == "True"
            && c.reason == reason
            && c.message == message
            && c.observed_generation == Some(generation)
    });
    run.status.platforms.clear();
    run.status.progress = None;
    set_phase_conditions(
        &mut run.status,
        Phase::Failed,
        reason,
        &message,
        generation,
        now(),
    );
    let notes = match already {
        true => vec![],
        false => vec![Note::warning(reason, action, message, None)],
    };
    report(ctx, build, &run.status, notes).await
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
pub(super) const PARTIAL: &str = "IndexPushedWithoutOptionalPlatforms";

/// Ends the current run: conditions, history and metrics agree on the result.
pub(super) fn finish_run(ctx: &Context, run: &mut Run, result: Phase, reason: &str, message: &str) {
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
    let mut notes = newly_succeeded(ctx, &run, &platforms);
    notes.extend(newly_failed_optional(&run, plan, &platforms));
    notes.extend(newly_stuck(&run, &platforms));
    run.status.progress = Some(progress(&platforms));
    run.status.platforms = platforms;
    let action = match step {
        Step::WaitForNodes { retry_in, why, .. } => {
            wait_for_nodes(&mut run, plan, retry_in, &why, &mut notes)
        }
        Step::CreateJobs { platforms } => {
            let step = (current, &platforms[..]);
            create(ctx, build, plan, &mut run, step, &mut notes).await?
        }
        Step::Building => {
            if ctx.isolated() && copies::mounts_missing(&run.status.platforms) {
                copies::restore(ctx, build, plan, current).await?;
            }
            building(ctx, &mut run, plan)
        }
        Step::Fail { job, message, .. } => {
            delete_jobs(ctx, build, &unfinished(current)).await?;
            finish_run(ctx, &mut run, Phase::Failed, "PlatformFailed", &message);
            notes.push(Note::warning("PlatformFailed", "Build", message, job));
            Action::await_change()
        }
        Step::Assemble => publish::assemble_step(ctx, build, plan, &mut run, &mut notes).await?,
    };
    report(ctx, build, &run.status, notes).await?;
    Ok(action)
}

/// No node qualifies for some platform: the run waits, saying why (once per message).
fn wait_for_nodes(
    run: &mut Run,
    plan: &BuildPlan,
    retry_in: Option<Duration>,
    why: &str,
    notes: &mut Vec<Note>,
) -> Action {
    let when = match (plan.emulation, retry_in) {
        // A fixed time, not a countdown: the message (and so the status and the Event)
        // stays the same on every look until something changes.
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
    let generation = plan.generation;
    let reason = "NoNodeForPlatform";
    set_phase_conditions(
        &mut run.status,
        Phase::Pending,
        reason,
        &message,
        generation,
        now(),
    );
    run.status.progress = Some(progress(&[]));
    if !already {
        notes.push(Note::warning(reason, "CheckPlacement", message, None));
    }
    let look_again = Duration::from_secs(30);
    Action::requeue(retry_in.map_or(look_again, |left| left.min(look_again)))
}

/// Creates the Jobs of `platforms` (the run's `current` Jobs exist already); a run that
/// cannot start fails with none of its Jobs left.
async fn create(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    run: &mut Run,
    (current, platforms): (&[Job], &[(String, Placement)]),
    notes: &mut Vec<Note>,
) -> Result<Action> {
    match start_jobs(ctx, build, plan, platforms).await {
        Ok(created) => {
            record_job_uids(ctx, build, &mut run.status.platforms, platforms);
            if created == plan.platforms.len() {
                ctx.metrics.runs_started.inc();
                notes.insert(0, run_started(plan));
            }
            notes.extend(emulated(plan, platforms));
            Ok(building(ctx, run, plan))
        }
        Err((e, exist)) if e.stops_the_run() => {
            // Nothing of a run that cannot start is left running.
            let own: Vec<String> = current.iter().map(|j| j.name_any()).chain(exist).collect();
            delete_jobs(ctx, build, &own).await?;
            let message = e.to_string();
            run.status.platforms.clear();
            run.status.progress = Some(progress(&[]));
            finish_run(ctx, run, Phase::Failed, e.reason(), &message);
            notes.push(Note::warning(e.reason(), "CreateJobs", message, None));
            Ok(Action::await_change())
        }
        Err((e, _)) => Err(e),
    }
}

/// Records in the status of each platform of `created` the UID of the Job just created for
/// it (in place of one gone since): a Job of that name with another UID is not this run's
/// ([`crate::status::replaced`]).
fn record_job_uids(
    ctx: &Context,
    build: &ImageBuild,
    platforms: &mut [PlatformStatus],
    created: &[(String, Placement)],
) {
    let namespace = ctx.jobs_namespace(build);
    let is_created = |p: &PlatformStatus| created.iter().any(|(name, _)| *name == p.platform);
    for p in platforms.iter_mut().filter(|p| is_created(p)) {
        let job = p
            .job
            .as_deref()
            .and_then(|name| ctx.stores.job(&namespace, name));
        p.job_uid = job.and_then(|j| j.metadata.uid.clone());
    }
}

/// The Event of a run whose every Job was just created.
fn run_started(plan: &BuildPlan) -> Note {
    let all: Vec<String> = plan
        .platforms
        .iter()
        .map(|p| p.platform.to_string())
        .collect();
    let text = format!("building {} at {}", all.join(", "), plan.revision);
    Note::normal("RunStarted", "CreateJobs", text, None)
}

/// The Events of the platforms placed under emulation.
fn emulated(plan: &BuildPlan, platforms: &[(String, Placement)]) -> Vec<Note> {
    let emulated = platforms
        .iter()
        .filter_map(|(platform, placement)| match placement {
            Placement::Emulated { host } => Some((platform, host)),
            Placement::Native => None,
        });
    emulated
        .map(|(platform, host)| {
            let text = match plan.emulation {
                Emulation::Always => format!(
                    "{platform} builds under QEMU emulation on an {host} node: emulation is Always, so every platform builds on {host} nodes (slower than native)"
                ),
                _ => format!(
                    "{platform} builds under QEMU emulation on an {host} node: no node of its own architecture qualifies and emulation is Fallback (slower than native)"
                ),
            };
            Note::normal("Emulated", "CreateJobs", text, None)
        })
        .collect()
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
