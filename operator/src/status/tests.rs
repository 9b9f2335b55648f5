use super::*;
use serde_json::json;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub(super) fn patience() -> Patience {
    Patience {
        now: "2026-11-23T10:10:00Z".parse().unwrap(),
        grace: Duration::from_secs(120),
    }
}

pub(super) fn job(status: serde_json::Value) -> Job {
    serde_json::from_value(json!({"metadata": {"name": "app-1-linux-arm64"}, "status": status}))
        .unwrap()
}

pub(super) fn pod(containers: serde_json::Value, init: serde_json::Value) -> Pod {
    serde_json::from_value(
        json!({"status": {"containerStatuses": containers, "initContainerStatuses": init}}),
    )
    .unwrap()
}

pub(super) fn terminated(name: &str, code: i32, message: &str) -> serde_json::Value {
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
fn a_succeeded_push_container_reports_its_digest() {
    let report = pod_report(&pod(
        json!([terminated("push", 0, &format!("{DIGEST}\n"))]),
        json!([terminated("git-sync", 0, ""), terminated("builder", 0, "")]),
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
        None,
        patience(),
    );
    assert_eq!(s.phase, Phase::Succeeded);
    assert_eq!(s.digest.as_deref(), Some(DIGEST));
    assert_eq!(s.completion_time.as_deref(), Some("2026-11-23T10:05:00Z"));
}

#[test]
fn only_the_push_container_reports_a_digest() {
    // The builder runs the Dockerfile: a RUN step can write its termination log. A digest
    // there, or in any container but `push`, or from a push that failed, is never taken.
    for (containers, init) in [
        (json!([]), json!([terminated("builder", 0, DIGEST)])),
        (
            json!([terminated("push", 0, "")]),
            json!([terminated("builder", 0, DIGEST)]),
        ),
        (json!([]), json!([terminated("push", 0, DIGEST)])),
        (json!([terminated("builder", 0, DIGEST)]), json!([])),
        (json!([terminated("sidecar", 0, DIGEST)]), json!([])),
        (json!([terminated("push", 1, DIGEST)]), json!([])),
    ] {
        let report = pod_report(&pod(containers.clone(), init.clone()));
        assert_eq!(report.digest, None, "{containers} {init}");
    }
}

#[test]
fn a_failed_push_says_so() {
    let report = pod_report(&pod(
        json!([terminated(
            "push",
            1,
            "archforge: push-image: pushing to r/a: denied"
        )]),
        json!([terminated("git-sync", 0, ""), terminated("builder", 0, "")]),
    ));
    assert_eq!(
        report.failure.as_deref(),
        Some("pushing failed: archforge: push-image: pushing to r/a: denied")
    );
    assert_eq!(report.digest, None);
}

#[test]
fn a_failed_builder_reports_its_log_tail() {
    let log = format!(
        "{}\nError: building at STEP \"RUN make\": exit status 2",
        "noise\n".repeat(400)
    );
    let report = pod_report(&pod(
        json!([]),
        json!([
            terminated("git-sync", 0, ""),
            terminated("builder", 1, &log)
        ]),
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
        None,
        patience(),
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
    let s = platform_status("linux/arm64", "j", Some(&j), &[], None, None, patience());
    assert_eq!(
        s.message.as_deref(),
        Some("Job was active longer than specified deadline")
    );
}

#[test]
fn success_without_a_digest_is_a_failure() {
    let report = pod_report(&pod(
        json!([terminated("push", 0, "pushed ok")]),
        json!([terminated("builder", 0, DIGEST)]),
    ));
    let s = platform_status(
        "linux/amd64",
        "j",
        Some(&job(json!({"succeeded": 1}))),
        &[report],
        None,
        None,
        patience(),
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
        signature: None,
        attestation: None,
        start_time: None,
        completion_time: None,
        message: None,
        reason: None,
        emulated: None,
        job_uid: None,
    };
    let s = platform_status(
        "linux/amd64",
        "j",
        None,
        &[],
        None,
        Some(&before),
        patience(),
    );
    assert_eq!(s, before);
}

#[test]
fn phases_of_a_run() {
    let p = |phase| PlatformStatus {
        platform: "x".into(),
        job: None,
        phase,
        digest: None,
        signature: None,
        attestation: None,
        start_time: None,
        completion_time: None,
        message: None,
        reason: None,
        emulated: None,
        job_uid: None,
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

#[test]
fn a_job_recreated_under_the_recorded_name_fails_its_platform_and_reports_nothing() {
    let recreated: Job = serde_json::from_value(json!({
        "metadata": {"name": "app-1-linux-arm64", "uid": "someone-elses"},
        "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    }))
    .unwrap();
    let before = PlatformStatus {
        platform: "linux/arm64".into(),
        job: Some("app-1-linux-arm64".into()),
        job_uid: Some("created-by-archforge".into()),
        phase: Phase::Building,
        digest: None,
        signature: None,
        attestation: None,
        start_time: None,
        completion_time: None,
        message: None,
        reason: None,
        emulated: None,
    };
    let forged = PodReport {
        digest: Some(DIGEST.into()),
        ..PodReport::default()
    };
    let status = platform_status(
        "linux/arm64",
        "app-1-linux-arm64",
        Some(&recreated),
        &[forged],
        None,
        Some(&before),
        patience(),
    );
    assert_eq!(status.phase, Phase::Failed);
    assert_eq!(status.reason.as_deref(), Some("JobReplaced"));
    assert_eq!(status.digest, None);
    assert_eq!(status.job_uid.as_deref(), Some("created-by-archforge"));
    assert!(status.message.unwrap().contains("was replaced"));
    // The recorded Job itself is the run's; with none recorded, the Job found is recorded.
    let mut own = recreated.clone();
    own.metadata.uid = Some("created-by-archforge".into());
    assert_eq!(replaced(&own, Some("created-by-archforge")), None);
    assert_eq!(replaced(&own, None), None);
    let first = platform_status(
        "linux/arm64",
        "app-1-linux-arm64",
        Some(&own),
        &[],
        None,
        None,
        patience(),
    );
    assert_eq!(first.job_uid.as_deref(), Some("created-by-archforge"));
}
