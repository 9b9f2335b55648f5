//! From what the cluster shows (Jobs, their pods) to what the ImageBuild's status says.
//! Pure: no client and no clock (the time is passed in), so every decision is unit-tested.

pub mod fatal;
mod history;
pub mod stuck;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{ImageBuildStatus, Phase, PlatformStatus};
use crate::plan::BuildPlan;
use crate::render::{BUILDER_CONTAINER, GIT_SYNC_CONTAINER, PUSH_CONTAINER};
pub use history::{record_run, start_run};
pub use stuck::Stuck;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// A platform's status message is kept short; the full log is in the pod.
pub const MAX_MESSAGE: usize = 1024;

/// What a finished builder pod reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodReport {
    /// `sha256:<hex>`, when the push container ended successfully with exactly a digest.
    pub digest: Option<String>,
    /// The termination message of a failed container (its log tail), prefixed with its name.
    pub failure: Option<String>,
    /// Why the pod is not getting on ([`stuck::of_pod`]), or why its builder died when the
    /// cause is a known one.
    pub stuck: Option<Stuck>,
    /// When the pod was created: a Job's newest pod says how its platform is doing.
    pub created: Option<jiff::Timestamp>,
}

/// What a stuck platform is measured against: the time now and the operator's grace period
/// for conditions that will not clear by themselves.
#[derive(Clone, Copy, Debug)]
pub struct Patience {
    pub now: jiff::Timestamp,
    pub grace: Duration,
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

/// The digest the `push` container (a regular container, never an init container) reported
/// on ending with exit code 0.
fn push_digest(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| c.name == PUSH_CONTAINER)
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .map(|t| t.message.as_deref().unwrap_or_default().trim())
        .find(|message| is_digest(message))
        .map(str::to_string)
}

/// Reads a builder pod's termination messages. The digest comes only from the `push`
/// container (a regular container, exit code 0): no other container's message, least of
/// all the builder's, where the Dockerfile's RUN steps run, ever becomes a digest. A
/// failure is told from whichever container failed.
pub fn pod_report(pod: &Pod) -> PodReport {
    let mut report = PodReport {
        stuck: stuck::of_pod(pod),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        ..PodReport::default()
    };
    let Some(status) = &pod.status else {
        return report;
    };
    report.digest = push_digest(status);
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
        let what = match c.name.as_str() {
            GIT_SYNC_CONTAINER => "fetching the source",
            BUILDER_CONTAINER => "building",
            PUSH_CONTAINER => "pushing",
            _ => continue,
        };
        if terminated.exit_code != 0 {
            let detail = if message.is_empty() {
                terminated
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("exit code {}", terminated.exit_code))
            } else {
                message.to_string()
            };
            // A known cause goes first, with its fix; the log tail fills what is left.
            let known = (c.name == BUILDER_CONTAINER)
                .then(|| fatal::known_failure(&detail))
                .flatten()
                .map(|k| format!("{}: {}; ", k.reason, k.fix))
                .unwrap_or_default();
            let tail = keep_tail(
                &format!("{what} failed: {detail}"),
                MAX_MESSAGE - known.len(),
            );
            report.failure = Some(format!("{known}{tail}"));
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

/// Why `job` is not the Job the operator created for the platform (whose UID it recorded
/// as `recorded`): someone deleted that Job and created another of the same name, whose
/// pods' digests vouch for nothing. `None` when it is the recorded one, or none is recorded.
pub fn replaced(job: &Job, recorded: Option<&str>) -> Option<String> {
    let recorded = recorded?;
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    (uid != recorded).then(|| {
        format!(
            "its Job {} was replaced: it is not the Job archforge created (UID {recorded}), so nothing it reports is trusted",
            job.metadata.name.as_deref().unwrap_or_default()
        )
    })
}

/// One platform's state, from its Job (if it exists), the reports of its pods, what holds
/// it up (`stuck`: its newest pod's, or why its Job has none), and what the status already
/// recorded (a digest survives the Job's deletion by its TTL).
pub fn platform_status(
    platform: &str,
    job_name: &str,
    job: Option<&Job>,
    pods: &[PodReport],
    stuck: Option<Stuck>,
    previous: Option<&PlatformStatus>,
    patience: Patience,
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
        reason: None,
        emulated: None,
        job_uid: previous.and_then(|p| p.job_uid.clone()),
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
    if let Some(replaced) = replaced(job, entry.job_uid.as_deref()) {
        entry.phase = Phase::Failed;
        entry.reason = Some("JobReplaced".to_string());
        entry.message = Some(replaced);
        entry.completion_time = Some(patience.now.to_string());
        return entry;
    }
    entry.job_uid = job.metadata.uid.clone();
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
                    "the pod succeeded but its push container's termination message is not a sha256 digest"
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
        // A Job that gave up (its deadline) has deleted its pods: what held them up was
        // recorded before, and is why it failed.
        let earlier =
            previous.filter(|p| from_pod.is_none() && stuck.is_none() && p.reason.is_some());
        let before = earlier.and_then(|p| p.message.as_deref());
        let from_job = from_job.map(|m| match before {
            Some(why) => format!("{m}; before that: {why}"),
            None => m,
        });
        entry.reason = stuck
            .map(|s| s.reason)
            .or_else(|| earlier.and_then(|p| p.reason.clone()))
            .or_else(|| failed.reason.clone());
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
    if let Some(stuck) = stuck {
        held_up(&mut entry, stuck, previous, patience);
    }
    entry
}

/// Says what holds the platform up; fails it when that will not clear by itself and has
/// lasted the grace period.
fn held_up(
    entry: &mut PlatformStatus,
    stuck: Stuck,
    previous: Option<&PlatformStatus>,
    patience: Patience,
) {
    let before = previous.and_then(|p| Some((p.reason.as_deref()?, p.message.as_deref()?)));
    let stuck = stuck::keep_informative(stuck, before);
    entry.reason = Some(stuck.reason.clone());
    let over = stuck.grace_left(patience.now, patience.grace).is_zero();
    entry.message = Some(match stuck.permanent() && over {
        true => {
            entry.phase = Phase::Failed;
            entry.completion_time = Some(patience.now.to_string());
            format!(
                "{} (still so after the {} grace period)",
                stuck.message,
                humantime::format_duration(patience.grace)
            )
        }
        false => stuck.message,
    });
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

/// The platform statuses of `plan`'s run.
/// `blocked` holds, by Job name, why a Job has no pod (the Job controller's refusals).
pub fn platform_statuses(
    plan: &BuildPlan,
    jobs: &[Job],
    pods: &[(String, PodReport)],
    blocked: &[(String, Stuck)],
    previous: &[PlatformStatus],
    patience: Patience,
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
            let stuck = match reports.iter().max_by_key(|r| r.created) {
                Some(newest) => newest.stuck.clone(),
                None => blocked
                    .iter()
                    .find(|(job, _)| job == &p.job_name)
                    .map(|(_, s)| s.clone()),
            };
            let (job_name, pods) = (&p.job_name, &reports);
            platform_status(&platform, job_name, job, pods, stuck, before, patience)
        })
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod held_up_tests;
