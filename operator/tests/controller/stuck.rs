//! Builder pods that do not start: the reconcile says why in status and a Warning Event at
//! once, once, and fails the platform when it will not clear by itself and the grace period
//! (2 minutes in these tests) is over.

use super::*;

/// A builder pod of Job `job_name` (generation 1), controlled by that Job, with `status`.
fn pod_with(job_name: &str, status: Value) -> Value {
    let mut pod = builder_pod(job_name, 1, 0, "");
    pod["metadata"]["uid"] = json!(format!("pod-of-{job_name}"));
    pod["metadata"]["creationTimestamp"] = json!(OLD);
    pod["status"] = status;
    pod
}

/// What the scheduler writes on a pod no node can take.
fn unschedulable(message: &str) -> Value {
    json!({"phase": "Pending", "qosClass": "Burstable", "conditions": [
        {"type": "PodScheduled", "status": "False", "lastProbeTime": null,
         "lastTransitionTime": "2026-11-23T09:00:05Z", "reason": "Unschedulable", "message": message}]})
}

/// What a kubelet 1.26 on a host without AppArmor writes (the pod stays Pending), the
/// kubelet having taken the pod at `started`.
fn apparmor_refused(started: &str) -> Value {
    let blocked = |name: &str| {
        json!({"name": name, "image": "img", "imageID": "", "ready": false, "restartCount": 0,
               "started": false, "state": {"waiting": {"reason": "Blocked"}}})
    };
    json!({"phase": "Pending", "reason": "AppArmor",
           "message": "Cannot enforce AppArmor: AppArmor is not enabled on the host",
           "hostIP": "192.168.1.10", "startTime": started, "qosClass": "Burstable",
           "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": started}],
           "initContainerStatuses": [blocked("git-sync"), blocked("builder")],
           "containerStatuses": [blocked("push")]})
}

fn running() -> Value {
    json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"})
}

fn platform<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["platforms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["platform"] == name)
        .unwrap()
}

/// How long the reconcile asked to be requeued after.
fn requeue_after(action: &Action) -> Duration {
    let text = format!("{action:?}");
    let seconds: String = text
        .split("requeue_after: Some(")
        .nth(1)
        .unwrap_or_else(|| panic!("no requeue in {text}"))
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Duration::from_secs(seconds.parse().unwrap())
}

#[tokio::test]
async fn an_unschedulable_pod_is_said_at_once_in_status_and_one_warning() {
    let build = building_since_old();
    let message = "0/5 nodes are available: 5 Insufficient cpu. preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod.";
    let pods = vec![
        pod_with("app-1-linux-amd64", json!({"phase": "Running"})),
        pod_with("app-1-linux-arm64", unschedulable(message)),
    ];
    let jobs = building_jobs(&build, running(), running());
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let (jobs2, pods2) = (jobs.clone(), pods.clone());
    let verify = async move {
        server.store_jobs(jobs2).await;
        server.store_pods(pods2).await;
        let event = server.event("Unschedulable", "Warning").await;
        let note = event["note"].as_str().unwrap();
        assert!(
            note.starts_with("linux/arm64: the builder pod cannot be scheduled: 0/5 nodes"),
            "{note}"
        );
        assert_eq!(
            event["related"]["name"], "app-1-linux-arm64",
            "the Event names the Job"
        );
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    assert_eq!(
        requeue_after(&action.unwrap()),
        Duration::from_secs(300),
        "nothing to wait for"
    );
    let arm = platform(&status, "linux/arm64");
    assert_eq!(
        (arm["phase"].as_str(), arm["reason"].as_str()),
        (Some("Building"), Some("Unschedulable"))
    );
    assert!(arm["message"].as_str().unwrap().contains(message));
    assert_eq!(platform(&status, "linux/amd64")["reason"], Value::Null);
    let (_, reason, reconciling) = said(&status, "Reconciling");
    assert_eq!(reason, "Building");
    assert!(
        reconciling.contains("linux/arm64 is held up: the builder pod cannot be scheduled"),
        "{reconciling}"
    );
    assert!(said(&status, "Ready").2.contains("0/5 nodes are available"));

    // The next look (a resync, the pod's next update) finds the same: no Event, no write.
    let written = with_status(&build, &status, "11");
    let (ctx, mut server) = setup(&written, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.done().await;
    };
    reconciled(&written, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn a_kubelet_refusal_fails_the_platform_once_the_grace_period_is_over() {
    let build = building_since_old();
    let jobs = building_jobs(&build, running(), running());
    let pods_since = |started: &str| {
        vec![
            pod_with("app-1-linux-amd64", json!({"phase": "Running"})),
            pod_with("app-1-linux-arm64", apparmor_refused(started)),
        ]
    };
    // Refused a minute ago: said at once, and looked at again when the 2 minutes are over.
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let (jobs2, pods) = (jobs.clone(), pods_since(&minutes_ago(1)));
    let verify = async move {
        server.store_jobs(jobs2).await;
        server.store_pods(pods).await;
        server.event("AppArmor", "Warning").await;
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    let after = requeue_after(&action.unwrap());
    assert!(
        (Duration::from_secs(55)..=Duration::from_secs(62)).contains(&after),
        "requeued for the end of the grace period, not the resync: {after:?}"
    );
    let arm = platform(&status, "linux/arm64");
    assert_eq!(
        (arm["phase"].as_str(), arm["reason"].as_str()),
        (Some("Building"), Some("AppArmor"))
    );

    // The operator restarted meanwhile; the refusal is three minutes old: the platform, and
    // so the run, fails with the kubelet's reason, and the other Job is stopped.
    let written = with_status(&build, &status, "11");
    let (ctx, mut server) = setup(&written, RegistryOptions::default());
    let pods = pods_since(&minutes_ago(3));
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.delete_job("app-1-linux-amd64").await;
        server.delete_job("app-1-linux-arm64").await;
        let event = server.event("PlatformFailed", "Warning").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("AppArmor is not enabled on the host")
        );
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(written.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Failed");
    let arm = platform(&status, "linux/arm64");
    assert_eq!(
        (arm["phase"].as_str(), arm["reason"].as_str()),
        (Some("Failed"), Some("AppArmor"))
    );
    let message = arm["message"].as_str().unwrap();
    assert!(
        message.ends_with("(still so after the 2m grace period)"),
        "{message}"
    );
    let (stalled, reason, why) = said(&status, "Stalled");
    assert_eq!(
        (stalled.as_str(), reason.as_str()),
        ("True", "PlatformFailed")
    );
    assert!(
        why.starts_with(
            "linux/arm64 failed: the kubelet refused the builder pod: Cannot enforce AppArmor"
        ),
        "{why}"
    );
}

#[tokio::test]
async fn a_job_without_a_pod_says_what_the_job_controller_refused() {
    let build = building_since_old();
    let jobs = building_jobs(&build, running(), json!({}));
    let refusal = json!({
        "metadata": {"name": "app-1-linux-arm64.17a3", "namespace": "default"},
        "involvedObject": {"kind": "Job", "namespace": "default", "name": "app-1-linux-arm64",
                           "uid": "uid-of-app-1-linux-arm64", "apiVersion": "batch/v1"},
        "reason": "FailedCreate", "type": "Warning", "count": 4,
        "message": "Error creating: pods \"app-1-linux-arm64-8zq2x\" is forbidden: exceeded quota: builds, requested: limits.memory=4Gi, used: limits.memory=4Gi, limited: limits.memory=6Gi",
        "firstTimestamp": "2026-11-23T09:00:03Z", "lastTimestamp": "2026-11-23T09:02:40Z",
        "source": {"component": "job-controller"}
    });
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(jobs).await;
        server
            .store_pods(vec![pod_with(
                "app-1-linux-amd64",
                json!({"phase": "Running"}),
            )])
            .await;
        server.store_events(vec![refusal]).await;
        server.event("FailedCreate", "Warning").await;
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    action.unwrap();
    let arm = platform(&status, "linux/arm64");
    assert_eq!(
        (arm["phase"].as_str(), arm["reason"].as_str()),
        (Some("Pending"), Some("FailedCreate"))
    );
    let message = arm["message"].as_str().unwrap();
    assert!(
        message.contains("forbidden: exceeded quota: builds"),
        "{message}"
    );
    assert!(
        !message.contains("8zq2x"),
        "the pod's generated name changes at every attempt"
    );
}

#[tokio::test]
async fn a_hostile_pod_message_is_bounded_and_cleaned_in_status_and_event() {
    let build = building_since_old();
    let hostile = format!(
        "\u{1b}]0;pwned\u{7}\r\n{}",
        "0/5 nodes are available. ".repeat(200_000)
    );
    let pods = vec![pod_with("app-1-linux-arm64", unschedulable(&hostile))];
    let jobs = building_jobs(&build, running(), running());
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        let event = server.event("Unschedulable", "Warning").await;
        let note = event["note"].as_str().unwrap();
        assert!(
            note.len() <= 1024 && !note.chars().any(char::is_control),
            "{}",
            note.len()
        );
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    action.unwrap();
    let message = platform(&status, "linux/arm64")["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.len() <= 1024, "{}", message.len());
    assert!(!message.chars().any(char::is_control), "{message:?}");
    for c in status["conditions"].as_array().unwrap() {
        let text = c["message"].as_str().unwrap();
        assert!(
            text.len() < 4096 && !text.chars().any(char::is_control),
            "{}",
            text.len()
        );
    }
}
