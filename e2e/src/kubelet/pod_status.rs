//! The pod statuses the simulated kubelet reports, shaped as the kubelet writes them
//! (git-sync and the builder as init containers, the push container's termination message)
//! so that the operator reads them as it reads real ones.

use archforge::render::{BUILDER_CONTAINER, PUSH_CONTAINER};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

pub(super) fn image_of(pod: &Pod, container: &str) -> String {
    let spec = pod.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .find(|c| c.name == container)
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

pub(super) fn container_status(pod: &Pod, name: &str, state: Value) -> Value {
    json!({
        "name": name,
        "image": image_of(pod, name),
        "imageID": "",
        "ready": false,
        "restartCount": 0,
        "started": state.get("running").is_some(),
        "state": state,
    })
}

fn terminated(exit_code: i32, reason: &str, message: &str, now: &str) -> Value {
    json!({"terminated": {
        "exitCode": exit_code,
        "reason": reason,
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }})
}

/// Each init container's status: done, except the builder's, which is `builder`.
fn init_statuses(pod: &Pod, builder: &Value) -> Vec<Value> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| match c.name.as_str() {
            BUILDER_CONTAINER => container_status(pod, &c.name, builder.clone()),
            _ => container_status(pod, &c.name, done(builder)),
        })
        .collect()
}

/// The state of an init container that ran before the builder.
fn done(builder: &Value) -> Value {
    let at = builder
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|s| s.get("startedAt").or_else(|| s.get("finishedAt")))
        .cloned()
        .unwrap_or_default();
    json!({"terminated": {"exitCode": 0, "reason": "Completed", "message": "", "startedAt": at, "finishedAt": at}})
}

/// The push container's status: `state`, or waiting while the init containers run.
fn push_status(pod: &Pod, state: Option<Value>) -> Value {
    let waiting = json!({"waiting": {"reason": "PodInitializing"}});
    container_status(pod, PUSH_CONTAINER, state.unwrap_or(waiting))
}

/// The status a finished pod reports. Success: git-sync and the builder done, the push
/// container terminated with the digest (`message`). Failure: the builder terminated with
/// `exit_code` and `message`, the push container never started.
pub fn finished_status(pod: &Pod, exit_code: i32, message: &str, now: jiff::Timestamp) -> Value {
    let now = now.to_string();
    let (phase, builder, push) = if exit_code == 0 {
        (
            "Succeeded",
            terminated(0, "Completed", "", &now),
            Some(terminated(0, "Completed", message, &now)),
        )
    } else {
        (
            "Failed",
            terminated(exit_code, "Error", message, &now),
            None,
        )
    };
    json!({
        "phase": phase,
        "startTime": now,
        "initContainerStatuses": init_statuses(pod, &builder),
        "containerStatuses": [push_status(pod, push)],
    })
}

/// The status of a pod whose builder is still at work.
pub fn running_status(pod: &Pod, now: jiff::Timestamp) -> Value {
    let now = now.to_string();
    let builder = json!({"running": {"startedAt": now}});
    json!({
        "phase": "Running",
        "startTime": now,
        "initContainerStatuses": init_statuses(pod, &builder),
        "containerStatuses": [push_status(pod, None)],
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::pod;
    use super::*;

    #[test]
    fn statuses_are_what_the_operator_reads() {
        let p = pod(Some("archforge-e2e-sim-arm64"), Some("Pending"), "3");
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        let mut finished = p.clone();
        finished.status =
            Some(serde_json::from_value(finished_status(&p, 0, &digest, now)).unwrap());
        let report = archforge::status::pod_report(&finished);
        assert_eq!(report.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(report.failure, None);

        finished.status = Some(
            serde_json::from_value(finished_status(&p, 1, "RUN make: exit status 2", now)).unwrap(),
        );
        let report = archforge::status::pod_report(&finished);
        assert_eq!(report.digest, None);
        assert!(report.failure.unwrap().contains("RUN make: exit status 2"));
        assert_eq!(finished.status.unwrap().phase.as_deref(), Some("Failed"));

        let running: k8s_openapi::api::core::v1::PodStatus =
            serde_json::from_value(running_status(&p, now)).unwrap();
        assert_eq!(running.phase.as_deref(), Some("Running"));
        assert_eq!(
            running.init_container_statuses.unwrap()[0].image,
            "git-sync:v4"
        );
    }
}
