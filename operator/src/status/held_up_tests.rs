//! A platform held up by its builder pod (or its Job), as `platform_status` reports it.

use super::tests::{job, patience, pod, terminated};
use super::*;
use serde_json::json;

/// A builder pod of Job app-1-linux-arm64 created at `created`, with `status`.
fn pod_at(created: &str, status: serde_json::Value) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": format!("p-{created}"), "creationTimestamp": created},
                                  "status": status}),
    )
    .unwrap()
}

fn apparmor_refused() -> Pod {
    pod_at(
        "2026-11-23T10:00:00Z",
        json!({"phase": "Pending", "reason": "AppArmor", "startTime": "2026-11-23T10:00:02Z",
               "message": "Cannot enforce AppArmor: AppArmor is not enabled on the host"}),
    )
}

fn active() -> Job {
    job(json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"}))
}

/// The platform as the status says it, from the Job's pods (newest first decides).
fn from_pods(
    job: &Job,
    pods: &[Pod],
    previous: Option<&PlatformStatus>,
    at: &str,
) -> PlatformStatus {
    let reports: Vec<PodReport> = pods.iter().map(pod_report).collect();
    let stuck = reports
        .iter()
        .max_by_key(|r| r.created)
        .and_then(|r| r.stuck.clone());
    let patience = Patience {
        now: at.parse().unwrap(),
        ..patience()
    };
    platform_status(
        "linux/arm64",
        "app-1-linux-arm64",
        Some(job),
        &reports,
        stuck,
        previous,
        patience,
    )
}

#[test]
fn an_unschedulable_pod_is_said_at_once_and_does_not_fail_the_platform() {
    let unschedulable = pod_at(
        "2026-11-23T10:00:00Z",
        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "lastTransitionTime": "2026-11-23T10:00:01Z",
            "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
    );
    let s = from_pods(&active(), &[unschedulable], None, "2026-11-23T11:00:00Z");
    assert_eq!(s.phase, Phase::Building);
    assert_eq!(s.reason.as_deref(), Some("Unschedulable"));
    assert!(
        s.message
            .unwrap()
            .contains("0/3 nodes are available: 3 Insufficient cpu.")
    );
}

#[test]
fn a_kubelet_refusal_fails_the_platform_after_the_grace_period() {
    let within = from_pods(
        &active(),
        &[apparmor_refused()],
        None,
        "2026-11-23T10:01:00Z",
    );
    assert_eq!(within.phase, Phase::Building);
    assert_eq!(within.reason.as_deref(), Some("AppArmor"));
    let after = from_pods(
        &active(),
        &[apparmor_refused()],
        Some(&within),
        "2026-11-23T10:02:02Z",
    );
    assert_eq!(after.phase, Phase::Failed);
    assert_eq!(after.reason.as_deref(), Some("AppArmor"));
    let message = after.message.unwrap();
    assert!(
        message.contains("AppArmor is not enabled on the host"),
        "{message}"
    );
    assert!(
        message.ends_with("(still so after the 2m grace period)"),
        "{message}"
    );
    // A newer pod of the Job that runs is what counts.
    let running = pod_at("2026-11-23T10:01:30Z", json!({"phase": "Running"}));
    let s = from_pods(
        &active(),
        &[apparmor_refused(), running],
        None,
        "2026-11-23T10:05:00Z",
    );
    assert_eq!((s.phase, s.reason), (Phase::Building, None));
}

#[test]
fn a_job_without_a_pod_says_why_the_job_controller_made_none() {
    let stuck = Stuck {
        reason: "FailedCreate".into(),
        message: "the Job controller cannot create the builder pod: forbidden: exceeded quota"
            .into(),
        since: Some("2026-11-23T10:00:02Z".parse().unwrap()),
    };
    let build: crate::api::ImageBuild = serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app", "generation": 1},
        "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                 "platforms": ["linux/amd64", "linux/arm64"],
                 "output": {"image": "r.example.com/a:v1"}}
    }))
    .unwrap();
    let plan = crate::plan::plan(
        &crate::validation::ValidSpec::check(&build).unwrap(),
        &crate::settings::BuilderSettings::default(),
        "main",
        crate::plan::AuthFile::None,
    );
    let jobs = [job(json!({}))];
    let blocked = [("app-1-linux-arm64".to_string(), stuck)];
    let s = platform_statuses(&plan, &jobs, &[], &blocked, &[], patience());
    let arm = s.iter().find(|p| p.platform == "linux/arm64").unwrap();
    assert_eq!(arm.phase, Phase::Pending);
    assert_eq!(arm.reason.as_deref(), Some("FailedCreate"));
    assert!(arm.message.as_deref().unwrap().contains("exceeded quota"));
}

#[test]
fn a_job_past_its_deadline_says_what_held_its_pod_up() {
    let before = from_pods(
        &active(),
        &[pod_at(
            "2026-11-23T10:00:00Z",
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
        )],
        None,
        "2026-11-23T10:01:00Z",
    );
    let deadline = job(
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}),
    );
    let s = from_pods(&deadline, &[], Some(&before), "2026-11-23T10:31:00Z");
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.reason.as_deref(), Some("Unschedulable"));
    let message = s.message.unwrap();
    assert!(
        message.starts_with("Job was active longer than specified deadline; before that: the builder pod cannot be scheduled: 0/3 nodes"),
        "{message}"
    );
}

#[test]
fn a_known_builder_failure_names_its_fix_before_the_log_tail() {
    let log = format!(
        "{}Error during unshare(CLONE_NEWUSER): Operation not permitted",
        "noise\n".repeat(400)
    );
    let report = pod_report(&pod(json!([]), json!([terminated("builder", 1, &log)])));
    let failure = report.failure.clone().unwrap();
    assert!(
        failure.starts_with(
            "SeccompBlocksUserNamespaces: the container runtime's default seccomp profile"
        ),
        "{failure}"
    );
    assert!(failure.ends_with("Operation not permitted"), "{failure}");
    assert!(failure.len() <= MAX_MESSAGE, "{}", failure.len());
    let j = job(
        json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
    );
    let s = platform_status(
        "linux/arm64",
        "j",
        Some(&j),
        std::slice::from_ref(&report),
        report.stuck.clone(),
        None,
        patience(),
    );
    assert_eq!(s.reason.as_deref(), Some("SeccompBlocksUserNamespaces"));
}
