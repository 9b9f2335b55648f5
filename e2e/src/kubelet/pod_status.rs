//! The pod statuses the simulated kubelet reports, shaped as the kubelet writes them
//! (init containers done, the builder's termination message) so that the operator reads them
//! as it reads real ones.

use archforge::render::BUILDER_CONTAINER;
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

fn init_statuses(pod: &Pod, now: &str) -> Vec<Value> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .map(|c| container_status(pod, &c.name, terminated(0, "Completed", "", now)))
        .collect()
}

/// The status a finished pod reports: init containers done, the builder terminated with
/// `exit_code` and `message` (the digest on success, the failure otherwise).
pub fn finished_status(pod: &Pod, exit_code: i32, message: &str, now: jiff::Timestamp) -> Value {
    let now = now.to_string();
    let (phase, reason) = if exit_code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    json!({
        "phase": phase,
        "startTime": now,
        "initContainerStatuses": init_statuses(pod, &now),
        "containerStatuses": [container_status(pod, BUILDER_CONTAINER, terminated(exit_code, reason, message, &now))],
    })
}

/// The status of a pod whose builder is still at work.
pub fn running_status(pod: &Pod, now: jiff::Timestamp) -> Value {
    let now = now.to_string();
    json!({
        "phase": "Running",
        "startTime": now,
        "initContainerStatuses": init_statuses(pod, &now),
        "containerStatuses": [container_status(pod, BUILDER_CONTAINER, json!({"running": {"startedAt": now}}))],
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
