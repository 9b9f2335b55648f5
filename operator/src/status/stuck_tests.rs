//! Pods and Events as the scheduler, the kubelet (1.26) and the Job controller write them.

use super::*;
use serde_json::{Value, json};

const STARTED: &str = "2026-11-23T10:00:05Z";

fn at(t: &str) -> jiff::Timestamp {
    t.parse().unwrap()
}

fn pod(status: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "app-1-linux-amd64-x7k2p", "creationTimestamp": "2026-11-23T10:00:00Z"},
        "status": status
    }))
    .unwrap()
}

fn conditions(scheduled: &str) -> Value {
    json!([
        {"type": "Initialized", "status": "False", "lastProbeTime": null, "lastTransitionTime": STARTED,
         "reason": "ContainersNotInitialized", "message": "containers with incomplete status: [git-sync]"},
        {"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": STARTED,
         "reason": "ContainersNotReady", "message": "containers with unready status: [builder]"},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": scheduled}
    ])
}

fn waiting(name: &str, reason: &str, message: Option<&str>) -> Value {
    let mut w = json!({"reason": reason});
    if let Some(m) = message {
        w["message"] = json!(m);
    }
    json!({"name": name, "image": "img", "imageID": "", "ready": false, "restartCount": 0,
           "started": false, "state": {"waiting": w}})
}

/// A pod bound to a node whose containers are in the given states.
fn bound(init: Value, containers: Value) -> Pod {
    pod(json!({
        "phase": "Pending", "conditions": conditions("2026-11-23T10:00:01Z"),
        "hostIP": "192.168.1.10", "startTime": STARTED,
        "initContainerStatuses": init, "containerStatuses": containers
    }))
}

#[test]
fn an_unschedulable_pod_reports_the_scheduler_s_message_and_is_not_permanent() {
    let p = pod(json!({
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                        "lastTransitionTime": "2026-11-23T10:00:01Z", "reason": "Unschedulable",
                        "message": "0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector. preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling."}],
        "qosClass": "Burstable"
    }));
    let s = of_pod(&p).unwrap();
    assert_eq!(s.reason, "Unschedulable");
    assert!(
        s.message.contains(
            "0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector"
        ),
        "{}",
        s.message
    );
    assert_eq!(s.since, Some(at("2026-11-23T10:00:01Z")));
    assert!(!s.permanent(), "a node may be added");
    assert!(!waits_silently(&p));
}

#[test]
fn an_apparmor_refusal_is_permanent_and_counts_from_the_pod_s_start() {
    // What a kubelet 1.26 on a host without AppArmor writes (soft admission: Init:Blocked).
    let mut p = bound(
        json!([waiting("git-sync", "Blocked", None)]),
        json!([waiting("builder", "Blocked", None)]),
    );
    let status = p.status.as_mut().unwrap();
    status.reason = Some("AppArmor".into());
    status.message = Some("Cannot enforce AppArmor: AppArmor is not enabled on the host".into());
    let s = of_pod(&p).unwrap();
    assert_eq!(s.reason, "AppArmor");
    assert!(
        s.message
            .starts_with("the kubelet refused the builder pod: Cannot enforce AppArmor: AppArmor is not enabled on the host"),
        "{}",
        s.message
    );
    assert!(
        s.message.contains("config/apparmor"),
        "the fix: {}",
        s.message
    );
    assert!(s.permanent());
    assert_eq!(s.since, Some(at(STARTED)));
    let grace = Duration::from_secs(120);
    assert_eq!(
        s.grace_left(at("2026-11-23T10:01:05Z"), grace),
        Duration::from_secs(60)
    );
    assert_eq!(
        s.grace_left(at("2026-11-23T10:09:00Z"), grace),
        Duration::ZERO
    );
}

#[test]
fn a_hard_kubelet_rejection_is_reported_and_left_to_the_job_s_retries() {
    let p = pod(json!({
        "phase": "Failed", "reason": "OutOfcpu", "startTime": STARTED,
        "message": "Pod was rejected: Node didn't have enough resource: cpu, requested: 4000, used: 1250, capacity: 4000"
    }));
    let s = of_pod(&p).unwrap();
    assert_eq!(s.reason, "OutOfcpu");
    assert!(s.message.contains("Node didn't have enough resource: cpu"));
    assert!(!s.permanent());
}

#[test]
fn image_pull_failures_name_the_image_and_only_a_missing_one_is_permanent() {
    let missing = "rpc error: code = NotFound desc = failed to pull and unpack image \"registry.example.com/nope/buildah:v0\": failed to resolve reference \"registry.example.com/nope/buildah:v0\": registry.example.com/nope/buildah:v0: not found";
    let p = bound(
        json!([{"name": "git-sync", "image": "g", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]),
        json!([waiting("builder", "ErrImagePull", Some(missing))]),
    );
    let s = of_pod(&p).unwrap();
    assert_eq!(s.reason, "ErrImagePull");
    assert!(
        s.message
            .starts_with("the builder container cannot start: rpc error")
    );
    assert!(s.message.contains("--builder-image"), "{}", s.message);
    assert!(s.permanent());

    let unreachable = "rpc error: code = Unknown desc = failed to pull and unpack image \"r:5000/a:b\": failed to resolve reference \"r:5000/a:b\": failed to do request: Head \"https://r:5000/v2/a/manifests/b\": http: server gave HTTP response to HTTPS client";
    let p = bound(
        json!([waiting("git-sync", "ErrImagePull", Some(unreachable))]),
        json!([]),
    );
    let s = of_pod(&p).unwrap();
    assert!(s.message.starts_with("the git-sync container cannot start"));
    assert!(!s.permanent(), "the registry may come back");

    let backoff = bound(
        json!([]),
        json!([waiting(
            "builder",
            "ImagePullBackOff",
            Some("Back-off pulling image \"registry.example.com/nope/buildah:v0\"")
        )]),
    );
    let s = of_pod(&backoff).unwrap();
    assert!(!s.permanent());
    // The status keeps what ErrImagePull said while the kubelet backs off.
    let kept = keep_informative(s.clone(), Some(("ErrImagePull", "said before")));
    assert_eq!(
        (kept.reason.as_str(), kept.message.as_str()),
        ("ErrImagePull", "said before")
    );
    assert_eq!(keep_informative(s.clone(), Some(("Unschedulable", "x"))), s);

    let invalid = bound(
        json!([]),
        json!([waiting(
            "builder",
            "InvalidImageName",
            Some(
                "Failed to apply default image tag \"Bad//Name\": couldn't parse image reference \"Bad//Name\": invalid reference format"
            )
        )]),
    );
    assert!(of_pod(&invalid).unwrap().permanent());
}

#[test]
fn a_missing_secret_key_in_the_environment_is_permanent() {
    let p = bound(
        json!([waiting(
            "git-sync",
            "CreateContainerConfigError",
            Some("couldn't find key password in Secret team-a/git-credentials")
        )]),
        json!([waiting("builder", "PodInitializing", None)]),
    );
    let s = of_pod(&p).unwrap();
    assert_eq!(s.reason, "CreateContainerConfigError");
    assert!(s.message.contains("couldn't find key password"));
    assert!(s.permanent());
}

#[test]
fn a_missing_seccomp_profile_is_permanent_and_other_create_errors_are_not() {
    let p = bound(
        json!([]),
        json!([waiting(
            "builder",
            "CreateContainerError",
            Some(
                "failed to create containerd container: cannot load seccomp profile \"/var/lib/kubelet/seccomp/archforge/archforge-builder.json\": open /var/lib/kubelet/seccomp/archforge/archforge-builder.json: no such file or directory"
            )
        )]),
    );
    assert!(of_pod(&p).unwrap().permanent());
    let p = bound(
        json!([]),
        json!([waiting(
            "builder",
            "CreateContainerError",
            Some("context deadline exceeded")
        )]),
    );
    assert!(!of_pod(&p).unwrap().permanent());
}

#[test]
fn a_start_error_and_a_known_builder_failure_are_reported_with_their_time() {
    let terminated = |message: &str, reason: &str| {
        pod(
            json!({"phase": "Failed", "startTime": STARTED, "containerStatuses": [
            {"name": "builder", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 128, "reason": reason, "message": message,
                                      "startedAt": STARTED, "finishedAt": "2026-11-23T10:00:09Z"}}}]}),
        )
    };
    let s = of_pod(&terminated("failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/bin/sh\": stat /bin/sh: no such file or directory: unknown", "StartError")).unwrap();
    assert_eq!(s.reason, "StartError");
    assert_eq!(s.since, Some(at("2026-11-23T10:00:09Z")));
    assert!(!s.permanent(), "the Job's retries decide");
    let s = of_pod(&terminated(
        "Error during unshare(CLONE_NEWUSER): Operation not permitted",
        "Error",
    ))
    .unwrap();
    assert_eq!(s.reason, "SeccompBlocksUserNamespaces");
    assert!(s.message.contains("seccomp"));
    // An ordinary failed build is no stuck pod: its log tail is the failure.
    assert_eq!(
        of_pod(&terminated("RUN make: exit status 2", "Error")),
        None
    );
}

#[test]
fn pods_on_their_way_are_not_stuck() {
    let creating = bound(
        json!([waiting("git-sync", "PodInitializing", None)]),
        json!([waiting("builder", "PodInitializing", None)]),
    );
    assert_eq!(of_pod(&creating), None);
    assert!(waits_silently(&creating), "its Events may say why");
    let fetching = bound(
        json!([{"name": "git-sync", "image": "g", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"running": {"startedAt": STARTED}}}]),
        json!([waiting("builder", "PodInitializing", None)]),
    );
    assert!(!waits_silently(&fetching), "its volumes were mounted");
    let unbound = pod(json!({"phase": "Pending"}));
    assert_eq!(of_pod(&unbound), None);
    assert!(!waits_silently(&unbound));
    let mut deleted = bound(
        json!([]),
        json!([waiting("builder", "ErrImagePull", Some("x: not found"))]),
    );
    deleted.metadata.deletion_timestamp = Some(Time(at("2026-11-23T10:01:00Z")));
    assert_eq!(of_pod(&deleted), None);
}

fn event(reason: &str, message: &str, first: &str, last: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": "app-1-linux-amd64.17a", "namespace": "team-a"},
        "involvedObject": {"kind": "Job", "namespace": "team-a", "name": "app-1-linux-amd64",
                           "uid": "job-uid", "apiVersion": "batch/v1", "resourceVersion": "1"},
        "reason": reason, "message": message, "source": {"component": "job-controller"},
        "firstTimestamp": first, "lastTimestamp": last, "count": 1, "type": "Warning",
        "eventTime": null, "reportingComponent": "", "reportingInstance": ""
    }))
    .unwrap()
}

#[test]
fn a_pod_the_job_controller_cannot_create_is_reported_without_its_generated_name() {
    let quota = |name: &str, first: &str| {
        event(
            "FailedCreate",
            &format!(
                "Error creating: pods \"{name}\" is forbidden: exceeded quota: builds, requested: limits.memory=4Gi, used: limits.memory=0, limited: limits.memory=1Gi"
            ),
            first,
            first,
        )
    };
    let (a, b) = (
        quota("app-1-linux-amd64-x7k2p", "2026-11-23T10:00:02Z"),
        quota("app-1-linux-amd64-q9w8e", "2026-11-23T10:00:12Z"),
    );
    let s = of_job_events(&[&b, &a]).unwrap();
    assert_eq!(s.reason, "FailedCreate");
    assert!(
        s.message.starts_with(
            "the Job controller cannot create the builder pod: forbidden: exceeded quota: builds"
        ),
        "{}",
        s.message
    );
    assert!(!s.message.contains("x7k2p") && !s.message.contains("q9w8e"));
    assert_eq!(
        s,
        of_job_events(&[&a, &b]).unwrap(),
        "the same whichever attempt"
    );
    assert_eq!(s.since, Some(at("2026-11-23T10:00:02Z")));
    assert!(!s.permanent(), "quota frees up as other pods finish");
    let limit = event(
        "FailedCreate",
        "Error creating: pods \"app-1-linux-amd64-x7k2p\" is forbidden: maximum memory usage per Container is 1Gi, but limit is 4Gi",
        "2026-11-23T10:00:02Z",
        "2026-11-23T10:00:02Z",
    );
    assert!(of_job_events(&[&limit]).unwrap().permanent());
    let other = event(
        "SuccessfulCreate",
        "Created pod: x",
        "2026-11-23T10:00:02Z",
        "2026-11-23T10:00:02Z",
    );
    assert_eq!(of_job_events(&[&other]), None);
}

#[test]
fn a_missing_push_secret_shows_in_the_kubelet_s_events() {
    let mount = event(
        "FailedMount",
        "MountVolume.SetUp failed for volume \"push-credentials\" : secret \"regcred\" not found",
        "2026-11-23T10:00:03Z",
        "2026-11-23T10:02:05Z",
    );
    let s = of_pod_events(&[&mount]).unwrap();
    assert_eq!(s.reason, "FailedMount");
    assert!(s.message.contains("secret \"regcred\" not found"));
    assert!(s.message.contains("spec.output.pushSecret"));
    assert_eq!(s.since, Some(at("2026-11-23T10:00:03Z")));
    assert!(s.permanent());
    let key = event(
        "FailedMount",
        "MountVolume.SetUp failed for volume \"push-credentials\" : references non-existent secret key: .dockerconfigjson",
        "2026-11-23T10:00:03Z",
        "2026-11-23T10:00:03Z",
    );
    assert!(of_pod_events(&[&key]).unwrap().permanent());
}

#[test]
fn hostile_messages_are_cleaned_and_bounded() {
    let huge = format!("\u{1b}[31mred\u{7}\r\n{}", "x".repeat(4 << 20));
    let mut p = pod(json!({"phase": "Pending", "reason": "AppArmor", "startTime": STARTED}));
    p.status.as_mut().unwrap().message = Some(huge.clone());
    let s = of_pod(&p).unwrap();
    assert!(s.message.len() <= MAX_STUCK_MESSAGE, "{}", s.message.len());
    assert!(
        !s.message.chars().any(char::is_control),
        "{:?}",
        &s.message[..80]
    );
    assert!(s.message.ends_with("..."));
    let mut p = pod(json!({"phase": "Pending", "startTime": STARTED}));
    p.status.as_mut().unwrap().reason = Some(format!("App\u{0}Armor{}", "y".repeat(1000)));
    let s = of_pod(&p).unwrap();
    assert!(
        s.reason.len() <= 64 && !s.reason.contains('\u{0}'),
        "{}",
        s.reason
    );
    let e = event("FailedMount", &huge, STARTED, STARTED);
    let s = of_pod_events(&[&e]).unwrap();
    assert!(s.message.len() <= MAX_STUCK_MESSAGE && !s.message.chars().any(char::is_control));
    // Multi-byte characters are never cut in half.
    assert!(clean(&"é".repeat(600), 100).len() <= 100);
}

#[test]
fn a_backdated_event_counts_from_the_objects_creation_not_from_its_own_time() {
    // A FailedCreate Event whose writer says it happened years before the Job existed.
    let e = event(
        "FailedCreate",
        "pods \"x\" is forbidden: exceeded quota",
        "2000-01-01T00:00:00Z",
        "2000-01-01T00:00:00Z",
    );
    let created = at("2026-11-23T10:00:00Z");
    let s = of_job_events(&[&e]).unwrap().not_before(Some(created));
    assert_eq!(s.since, Some(created));
    let grace = Duration::from_secs(120);
    assert_eq!(
        s.grace_left(at("2026-11-23T10:00:30Z"), grace),
        Duration::from_secs(90)
    );
    // A later time stands; no recorded time stays unknown.
    let later = event(
        "FailedCreate",
        "m",
        "2026-11-23T10:01:00Z",
        "2026-11-23T10:01:00Z",
    );
    let s = of_job_events(&[&later]).unwrap().not_before(Some(created));
    assert_eq!(s.since, Some(at("2026-11-23T10:01:00Z")));
}
