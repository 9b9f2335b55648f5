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
        start_time: previous.and_then(|p| p.start_time.clone()),
        completion_time: previous.and_then(|p| p.completion_time.clone()),
        message: None,
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
mod tests {
    use super::*;
    use serde_json::json;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "app-1-linux-arm64"}, "status": status}))
            .unwrap()
    }

    fn pod(containers: serde_json::Value, init: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"status": {"containerStatuses": containers, "initContainerStatuses": init}}),
        )
        .unwrap()
    }

    fn terminated(name: &str, code: i32, message: &str) -> serde_json::Value {
        json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code, "message": message, "reason": "Error"}}})
    }

    #[test]
    fn only_pods_controlled_by_the_runs_job_count() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "app-1-linux-arm64", "uid": "job-uid"}
        }))
        .unwrap();
        let owned_by = |name: &str, uid: &str, controller: bool| -> Pod {
            serde_json::from_value(json!({"metadata": {
                "name": "p", "labels": {"job-name": "app-1-linux-arm64"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                     "uid": uid, "controller": controller}]}}))
            .unwrap()
        };
        let jobs = std::slice::from_ref(&job);
        assert_eq!(
            owning_job(&owned_by("app-1-linux-arm64", "job-uid", true), jobs).as_deref(),
            Some("app-1-linux-arm64")
        );
        // Same labels and name, another UID (a pod someone made to look like a builder).
        assert_eq!(
            owning_job(&owned_by("app-1-linux-arm64", "forged", true), jobs),
            None
        );
        assert_eq!(
            owning_job(&owned_by("app-1-linux-arm64", "job-uid", false), jobs),
            None
        );
        let labels_only: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p", "labels": {"job-name": "app-1-linux-arm64"}}}),
        )
        .unwrap();
        assert_eq!(owning_job(&labels_only, jobs), None);
    }

    #[test]
    fn a_succeeded_builder_reports_its_digest() {
        let report = pod_report(&pod(
            json!([terminated("builder", 0, &format!("{DIGEST}\n"))]),
            json!([]),
        ));
        assert_eq!(report.digest.as_deref(), Some(DIGEST));
        let j = job(
            json!({"succeeded": 1, "startTime": "2026-11-23T10:00:00Z", "completionTime": "2026-11-23T10:05:00Z"}),
        );
        let s = platform_status(
            "linux/arm64",
            "app-1-linux-arm64",
            Some(&j),
            &[report],
            None,
        );
        assert_eq!(s.phase, Phase::Succeeded);
        assert_eq!(s.digest.as_deref(), Some(DIGEST));
        assert_eq!(s.completion_time.as_deref(), Some("2026-11-23T10:05:00Z"));
    }

    #[test]
    fn a_failed_builder_reports_its_log_tail() {
        let log = format!(
            "{}\nError: building at STEP \"RUN make\": exit status 2",
            "noise\n".repeat(400)
        );
        let report = pod_report(&pod(
            json!([terminated("builder", 1, &log)]),
            json!([terminated("git-sync", 0, "")]),
        ));
        let j = job(
            json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        );
        let s = platform_status(
            "linux/arm64",
            "app-1-linux-arm64",
            Some(&j),
            &[report],
            None,
        );
        assert_eq!(s.phase, Phase::Failed);
        let message = s.message.unwrap();
        assert!(message.len() <= MAX_MESSAGE, "{}", message.len());
        assert!(message.ends_with("exit status 2"), "{message}");
        assert!(message.starts_with("..."));
    }

    #[test]
    fn a_git_sync_failure_says_so() {
        let report = pod_report(&pod(
            json!([]),
            json!([terminated("git-sync", 1, "could not read Username")]),
        ));
        assert_eq!(
            report.failure.as_deref(),
            Some("fetching the source failed: could not read Username")
        );
    }

    #[test]
    fn a_job_failed_by_deadline_without_pod_message_uses_the_job_condition() {
        let j = job(
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}),
        );
        let s = platform_status("linux/arm64", "j", Some(&j), &[], None);
        assert_eq!(
            s.message.as_deref(),
            Some("Job was active longer than specified deadline")
        );
    }

    #[test]
    fn success_without_a_digest_is_a_failure() {
        let report = pod_report(&pod(
            json!([terminated("builder", 0, "pushed ok")]),
            json!([]),
        ));
        let s = platform_status(
            "linux/amd64",
            "j",
            Some(&job(json!({"succeeded": 1}))),
            &[report],
            None,
        );
        assert_eq!(s.phase, Phase::Failed);
    }

    #[test]
    fn a_recorded_result_survives_the_jobs_deletion() {
        let before = PlatformStatus {
            platform: "linux/amd64".into(),
            job: Some("j".into()),
            phase: Phase::Succeeded,
            digest: Some(DIGEST.into()),
            start_time: None,
            completion_time: None,
            message: None,
        };
        let s = platform_status("linux/amd64", "j", None, &[], Some(&before));
        assert_eq!(s, before);
    }

    #[test]
    fn phases_of_a_run() {
        let p = |phase| PlatformStatus {
            platform: "x".into(),
            job: None,
            phase,
            digest: None,
            start_time: None,
            completion_time: None,
            message: None,
        };
        assert_eq!(
            run_phase(&[p(Phase::Pending), p(Phase::Pending)]),
            Phase::Pending
        );
        assert_eq!(
            run_phase(&[p(Phase::Building), p(Phase::Pending)]),
            Phase::Building
        );
        assert_eq!(
            run_phase(&[p(Phase::Succeeded), p(Phase::Building)]),
            Phase::Building
        );
        assert_eq!(
            run_phase(&[p(Phase::Succeeded), p(Phase::Succeeded)]),
            Phase::Assembling
        );
        assert_eq!(
            run_phase(&[p(Phase::Succeeded), p(Phase::Failed)]),
            Phase::Failed
        );
        assert_eq!(progress(&[p(Phase::Succeeded), p(Phase::Building)]), "1/2");
    }

    #[test]
    fn ready_says_why_a_run_failed() {
        let mut status = ImageBuildStatus::default();
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let why = "linux/arm64 failed: building: exec format error";
        set_phase_conditions(&mut status, Phase::Failed, "PlatformFailed", why, 2, now);
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "PlatformFailed", why)
        );
        set_phase_conditions(
            &mut status,
            Phase::Building,
            "Building",
            "1/2 of 2 platforms built",
            3,
            now,
        );
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.reason, "NotReady");
        assert!(
            ready.message.ends_with("1/2 of 2 platforms built"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let t0: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-11-23T11:00:00Z".parse().unwrap();
        let mut status = ImageBuildStatus::default();
        set_phase_conditions(&mut status, Phase::Building, "Building", "1/2", 3, t0);
        set_phase_conditions(&mut status, Phase::Building, "Building", "2/2", 3, t1);
        let reconciling = status
            .conditions
            .iter()
            .find(|c| c.type_ == RECONCILING)
            .unwrap();
        assert_eq!(
            reconciling.last_transition_time.0, t0,
            "no transition, no new time"
        );
        assert_eq!(reconciling.message, "2/2");
        set_phase_conditions(
            &mut status,
            Phase::Succeeded,
            "IndexPushed",
            "pushed",
            3,
            t1,
        );
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.0),
            ("True", t1)
        );
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, RECONCILING, STALLED]);
    }

    #[test]
    fn a_superseded_run_goes_into_history() {
        let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().unwrap();
        let previous = ImageBuildStatus {
            observed_generation: Some(1),
            phase: Some(Phase::Building),
            source: Some(crate::api::SourceStatus {
                commit: "abc".into(),
            }),
            ..Default::default()
        };
        let next = start_run(&previous, 2, None, 10, now);
        assert_eq!(next.observed_generation, Some(2));
        assert_eq!(next.phase, None);
        assert_eq!(next.history.len(), 1);
        assert_eq!(next.history[0].generation, 1);
        assert_eq!(
            next.history[0].message.as_deref(),
            Some("superseded by generation 2")
        );
        let finished = ImageBuildStatus {
            phase: Some(Phase::Succeeded),
            ..previous
        };
        assert!(
            start_run(&finished, 2, None, 10, now).history.is_empty(),
            "finished runs are recorded when they finish"
        );
    }
}
