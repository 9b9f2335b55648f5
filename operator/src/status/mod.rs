//! From what the cluster shows (Jobs, their pods) to what the ImageBuild's status says.
//! Pure: no client and no clock (the time is passed in), so every decision is unit-tested.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ImageBuildStatus, Phase, PlatformStatus, RunRecord};
use crate::plan::BuildPlan;
use crate::render::{BUILDER_CONTAINER, GIT_SYNC_CONTAINER};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// A platform's status message is kept short; the full log is in the pod.
pub const MAX_MESSAGE: usize = 1024;

/// What a finished builder pod reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodReport {
    /// `sha256:<hex>`, when the builder ended successfully with exactly a digest.
    pub digest: Option<String>,
    /// The termination message of a failed container (its log tail), prefixed with its name.
    pub failure: Option<String>,
}

/// Whether `text` is exactly one `sha256:<64 lowercase hex>` digest.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Shortens `text` to at most `max` bytes, keeping the end (where a build log says why).
pub fn keep_tail(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - (max - 3);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// The name of the Job among `jobs` that controls `pod`, matched by the Job's UID. Labels
/// are not enough: anyone who may create pods in the namespace can copy them, and a pod that
/// merely looks like a builder must never hand this run a digest.
pub fn owning_job(pod: &Pod, jobs: &[Job]) -> Option<String> {
    let owner =
        pod.metadata.owner_references.iter().flatten().find(|o| {
            o.controller == Some(true) && o.kind == "Job" && o.api_version == "batch/v1"
        })?;
    jobs.iter()
        .find(|j| {
            j.metadata.uid.as_deref() == Some(owner.uid.as_str())
                && j.metadata.name.as_deref() == Some(owner.name.as_str())
        })
        .and_then(|j| j.metadata.name.clone())
}

/// Reads a builder pod's termination messages.
pub fn pod_report(pod: &Pod) -> PodReport {
    let mut report = PodReport::default();
    let Some(status) = &pod.status else {
        return report;
    };
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(terminated) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
            continue;
        };
        let message = terminated.message.as_deref().unwrap_or_default().trim();
        if terminated.exit_code == 0 {
            if c.name == BUILDER_CONTAINER && is_digest(message) {
                report.digest = Some(message.to_string());
            }
        } else if c.name == BUILDER_CONTAINER || c.name == GIT_SYNC_CONTAINER {
            let what = if c.name == GIT_SYNC_CONTAINER {
                "fetching the source"
            } else {
                "building"
            };
            let detail = if message.is_empty() {
                terminated
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", terminated.exit_code))
            } else {
                message.to_string()
            };
            report.failure = Some(keep_tail(&format!("{what} failed: {detail}"), MAX_MESSAGE));
        }
    }
    report
}

fn job_condition<'a>(
    job: &'a Job,
    kind: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
}

fn time(t: &Option<Time>) -> Option<String> {
    t.as_ref().map(|t| t.0.to_string())
}

/// One platform's state, from its Job (if it exists), the reports of its pods, and what the
/// status already recorded (a digest survives the Job's deletion by its TTL).
pub fn platform_status(
    platform: &str,
    job_name: &str,
    job: Option<&Job>,
    pods: &[PodReport],
    previous: Option<&PlatformStatus>,
) -> PlatformStatus {
    let mut entry = PlatformStatus {
        platform: platform.to_string(),
        job: Some(job_name.to_string()),
        phase: Phase::Pending,
        digest: None,
        signature: None,
        attestation: None,
        start_time: previous.and_then(|p| p.start_time.clone()),
        completion_time: previous.and_then(|p| p.completion_time.clone()),
        message: None,
        emulated: None,
    };
    if let Some(previous) = previous
        && matches!(previous.phase, Phase::Succeeded | Phase::Failed)
    {
        return PlatformStatus {
            job: entry.job,
            ..previous.clone()
        };
    }
    let Some(job) = job else {
        entry.message = Some("waiting for its Job to be created".to_string());
        return entry;
    };
    let job_status = job.status.clone().unwrap_or_default();
    entry.start_time = time(&job_status.start_time).or(entry.start_time);
    entry.emulated = job
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(crate::render::ANNOTATION_EMULATED_ON))
        .then_some(true);
    if job_condition(job, "Complete").is_some() || job_status.succeeded.unwrap_or(0) > 0 {
        entry.completion_time = time(&job_status.completion_time).or(entry.completion_time);
        match pods.iter().find_map(|p| p.digest.clone()) {
            Some(digest) => {
                entry.phase = Phase::Succeeded;
                entry.digest = Some(digest);
                entry.message = None;
            }
            None => {
                entry.phase = Phase::Failed;
                entry.message = Some(
                    "the builder succeeded but its termination message is not a sha256 digest"
                        .to_string(),
                );
            }
        }
        return entry;
    }
    if let Some(failed) = job_condition(job, "Failed") {
        entry.phase = Phase::Failed;
        let from_pod = pods.iter().rev().find_map(|p| p.failure.clone());
        let from_job = failed.message.clone().or_else(|| failed.reason.clone());
        entry.message = Some(keep_tail(
            &from_pod
                .or(from_job)
                .unwrap_or_else(|| "the builder Job failed".to_string()),
            MAX_MESSAGE,
        ));
        return entry;
    }
    entry.phase = if job_status.active.unwrap_or(0) > 0 {
        Phase::Building
    } else {
        Phase::Pending
    };
    entry.message = None;
    entry
}

/// The run's phase from its platforms.
pub fn run_phase(platforms: &[PlatformStatus]) -> Phase {
    if platforms.iter().any(|p| p.phase == Phase::Failed) {
        Phase::Failed
    } else if platforms.iter().all(|p| p.phase == Phase::Succeeded) {
        Phase::Assembling
    } else if platforms.iter().any(|p| p.phase != Phase::Pending) {
        Phase::Building
    } else {
        Phase::Pending
    }
}

/// `done/total` for the printer column.
pub fn progress(platforms: &[PlatformStatus]) -> String {
    let done = platforms
        .iter()
        .filter(|p| p.phase == Phase::Succeeded)
        .count();
    format!("{done}/{}", platforms.len())
}

/// Sets a condition, keeping its `lastTransitionTime` unless its status changes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: jiff::Timestamp,
) {
    let status_text = if status { "True" } else { "False" };
    let transition = conditions
        .iter()
        .find(|c| c.type_ == kind)
        .filter(|c| c.status == status_text)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    conditions.retain(|c| c.type_ != kind);
    conditions.push(Condition {
        type_: kind.to_string(),
        status: status_text.to_string(),
        reason: reason.to_string(),
        message: keep_tail(message, 32 * 1024),
        observed_generation: Some(generation),
        last_transition_time: transition,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// The three kstatus conditions for a phase: `Ready` only when the index is pushed,
/// `Reconciling` while work is under way, `Stalled` when nothing will progress without a
/// change from the user.
pub fn set_phase_conditions(
    status: &mut ImageBuildStatus,
    phase: Phase,
    reason: &str,
    message: &str,
    generation: i64,
    now: jiff::Timestamp,
) {
    status.phase = Some(phase);
    let (ready, reconciling, stalled) = match phase {
        Phase::Succeeded => (true, false, false),
        Phase::Failed => (false, false, true),
        _ => (false, true, false),
    };
    let c = &mut status.conditions;
    // Ready is what Argo CD, `kubectl wait` and dashboards show: a failed run says there
    // which platform failed and why, not only that nothing was pushed.
    let (ready_reason, ready_message) = match phase {
        Phase::Succeeded | Phase::Failed => (reason, message.to_string()),
        _ => (
            "NotReady",
            format!("the image index is not pushed yet: {message}"),
        ),
    };
    set_condition(
        c,
        READY,
        ready,
        ready_reason,
        &ready_message,
        generation,
        now,
    );
    set_condition(
        c,
        RECONCILING,
        reconciling,
        if reconciling { reason } else { "Idle" },
        if reconciling { message } else { "" },
        generation,
        now,
    );
    set_condition(
        c,
        STALLED,
        stalled,
        if stalled { reason } else { "Progressing" },
        if stalled { message } else { "" },
        generation,
        now,
    );
}

/// A status for a new run: the previous run, if it had started and not finished, goes into
/// history as superseded; results of the previous run are cleared.
pub fn start_run(
    previous: &ImageBuildStatus,
    generation: i64,
    rebuild: Option<String>,
    history_limit: usize,
    now: jiff::Timestamp,
) -> ImageBuildStatus {
    let mut history = previous.history.clone();
    if let (Some(old_generation), Some(phase)) = (previous.observed_generation, previous.phase)
        && !matches!(phase, Phase::Succeeded | Phase::Failed)
        && previous.source.is_some()
    {
        history.insert(
            0,
            RunRecord {
                generation: old_generation,
                rebuild: previous.rebuild.clone(),
                commit: previous.source.as_ref().map(|s| s.commit.clone()),
                digest: None,
                result: Phase::Failed,
                start_time: previous
                    .platforms
                    .iter()
                    .filter_map(|p| p.start_time.clone())
                    .min(),
                completion_time: Some(now.to_string()),
                message: Some(format!("superseded by generation {generation}")),
            },
        );
    }
    history.truncate(history_limit);
    ImageBuildStatus {
        observed_generation: Some(generation),
        rebuild,
        conditions: previous.conditions.clone(),
        history,
        ..Default::default()
    }
}

/// Records the finished current run at the head of the history.
pub fn record_run(
    status: &mut ImageBuildStatus,
    result: Phase,
    message: Option<String>,
    history_limit: usize,
    now: jiff::Timestamp,
) {
    let record = RunRecord {
        generation: status.observed_generation.unwrap_or_default(),
        rebuild: status.rebuild.clone(),
        commit: status.source.as_ref().map(|s| s.commit.clone()),
        digest: status.digest.clone(),
        result,
        start_time: status
            .platforms
            .iter()
            .filter_map(|p| p.start_time.clone())
            .min(),
        completion_time: Some(now.to_string()),
        message,
    };
    status.history.insert(0, record);
    status.history.truncate(history_limit);
}

/// The platform statuses of `plan`'s run.
pub fn platform_statuses(
    plan: &BuildPlan,
    jobs: &[Job],
    pods: &[(String, PodReport)],
    previous: &[PlatformStatus],
) -> Vec<PlatformStatus> {
    plan.platforms
        .iter()
        .map(|p| {
            let platform = p.platform.to_string();
            let job = jobs
                .iter()
                .find(|j| j.metadata.name.as_deref() == Some(p.job_name.as_str()));
            let reports: Vec<PodReport> = pods
                .iter()
                .filter(|(job, _)| job == &p.job_name)
                .map(|(_, r)| r.clone())
                .collect();
            let before = previous.iter().find(|s| s.platform == platform);
            platform_status(&platform, &p.job_name, job, &reports, before)
        })
        .collect()
}

#[cfg(test)]
mod tests;
