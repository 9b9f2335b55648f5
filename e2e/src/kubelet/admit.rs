//! What the simulated kubelet refuses before a builder runs, written as a real kubelet
//! (1.26) writes it: an AppArmor profile the node has not loaded (the pod stays `Pending`
//! with reason `AppArmor`), a builder image its registry does not hold (`ErrImagePull`), a
//! Secret volume whose Secret or key is missing (a `FailedMount` Event, the pod waiting).
//! The simulated nodes have AppArmor with the shipped profiles loaded.

use archforge::render::BUILDER_CONTAINER;
use archforge::settings::BuilderSettings;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::pod_status::{container_status, image_of};

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// The localhost AppArmor profiles a pod asks for: from the beta annotations and from the
/// `appArmorProfile` fields (1.30+), pod-wide and per container.
pub fn apparmor_profiles(pod: &Pod) -> Vec<String> {
    let mut profiles: Vec<String> = pod
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(APPARMOR_ANNOTATION))
        .filter_map(|(_, v)| v.strip_prefix("localhost/").map(String::from))
        .collect();
    let spec = pod.spec.as_ref();
    let fields = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| c.app_armor_profile.clone())
        .into_iter()
        .chain(spec.into_iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .filter_map(|c| c.security_context.as_ref()?.app_armor_profile.clone())
        }));
    for profile in fields {
        if profile.type_ == "Localhost"
            && let Some(name) = profile.localhost_profile
        {
            profiles.push(name);
        }
    }
    profiles.sort();
    profiles.dedup();
    profiles
}

/// The kubelet's AppArmor refusal message for `pod` on a simulated node, if it refuses it.
pub fn apparmor_refusal(pod: &Pod) -> Option<String> {
    let defaults = BuilderSettings::default();
    let loaded = [
        defaults.apparmor_profile,
        defaults.buildkit_apparmor_profile,
    ];
    let missing = apparmor_profiles(pod)
        .into_iter()
        .find(|p| !loaded.contains(p))?;
    Some(format!(
        "Cannot enforce AppArmor: profile \"{missing}\" is not loaded"
    ))
}

fn container_names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.as_ref();
    let names = |init: bool| -> Vec<String> {
        spec.into_iter()
            .flat_map(|s| match init {
                true => s.init_containers.clone().unwrap_or_default(),
                false => s.containers.clone(),
            })
            .map(|c| c.name)
            .collect()
    };
    (names(true), names(false))
}

/// The status of a pod that has its node but not yet its containers: `startTime` set, each
/// container waiting for `reason` (`Blocked` under a soft admission refusal,
/// `PodInitializing` while volumes are mounted), the pod `Pending` with `refusal`
/// (reason, message) when the kubelet refuses it.
pub fn waiting_status(pod: &Pod, waiting: &str, refusal: Option<(&str, &str)>, now: &str) -> Value {
    let (init, main) = container_names(pod);
    let state = json!({"waiting": {"reason": waiting}});
    let mut status = json!({
        "phase": "Pending",
        "startTime": now,
        "hostIP": "192.0.2.10",
        "initContainerStatuses": init.iter().map(|n| container_status(pod, n, state.clone())).collect::<Vec<_>>(),
        "containerStatuses": main.iter().map(|n| container_status(pod, n, state.clone())).collect::<Vec<_>>(),
    });
    if let Some((reason, message)) = refusal {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}

/// The status of a pod whose init containers ran and whose builder's image cannot be
/// pulled: what containerd 1.6 says for a reference the registry does not hold.
pub fn pull_failed_status(pod: &Pod, now: &str) -> Value {
    let (init, containers) = container_names(pod);
    let image = image_of(pod, BUILDER_CONTAINER);
    let done = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}});
    let message = format!(
        "rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {image}: not found"
    );
    let pulling = json!({"waiting": {"reason": "ErrImagePull", "message": message}});
    let waiting = json!({"waiting": {"reason": "PodInitializing"}});
    // git-sync ran; the builder (an init container) waits for its image; the rest after it.
    let init: Vec<Value> = init
        .iter()
        .map(|n| match n.as_str() {
            BUILDER_CONTAINER => container_status(pod, n, pulling.clone()),
            _ => container_status(pod, n, done.clone()),
        })
        .collect();
    let main: Vec<Value> = containers
        .iter()
        .map(|n| container_status(pod, n, waiting.clone()))
        .collect();
    json!({
        "phase": "Pending",
        "startTime": now,
        "hostIP": "192.0.2.10",
        "initContainerStatuses": init,
        "containerStatuses": main,
    })
}

/// The Secret volumes of a pod: (volume, Secret, keys its items name).
pub fn secret_volumes(pod: &Pod) -> Vec<(String, String, Vec<String>)> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            let secret = v.secret.as_ref()?;
            let keys = secret
                .items
                .iter()
                .flatten()
                .map(|i| i.key.clone())
                .collect();
            Some((v.name.clone(), secret.secret_name.clone()?, keys))
        })
        .collect()
}

/// The kubelet's `FailedMount` Event (core/v1, as its recorder writes it) about `pod`.
pub fn failed_mount_event(pod: &Pod, message: &str, now: &str) -> Value {
    let name = pod.name_any();
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": pod.namespace()},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": name,
                           "namespace": pod.namespace(), "uid": pod.uid()},
        "reason": "FailedMount", "type": "Warning", "message": message,
        "source": {"component": "kubelet", "host": pod.spec.as_ref().and_then(|s| s.node_name.clone())},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })
}

/// The kubelet's words for a Secret volume that cannot be mounted.
pub fn mount_failure(volume: &str, secret: &str, missing_key: Option<&str>) -> String {
    match missing_key {
        None => format!(
            "MountVolume.SetUp failed for volume \"{volume}\" : secret \"{secret}\" not found"
        ),
        Some(key) => format!(
            "MountVolume.SetUp failed for volume \"{volume}\" : references non-existent secret key: {key}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::pod;
    use super::*;

    #[test]
    fn only_profiles_the_node_has_not_loaded_are_refused() {
        let mut p = pod(Some("archforge-e2e-sim-amd64"), Some("Pending"), "1");
        assert_eq!(apparmor_refusal(&p), None, "no profile asked for");
        let key = format!("{APPARMOR_ANNOTATION}builder");
        p.annotations_mut()
            .insert(key.clone(), "localhost/archforge-builder".into());
        assert_eq!(apparmor_refusal(&p), None, "the shipped profile is loaded");
        p.annotations_mut().insert(key, "localhost/nope".into());
        assert_eq!(
            apparmor_refusal(&p).as_deref(),
            Some("Cannot enforce AppArmor: profile \"nope\" is not loaded")
        );
    }

    #[test]
    fn statuses_are_what_the_operator_reads_as_stuck() {
        let mut p = pod(Some("archforge-e2e-sim-amd64"), Some("Pending"), "1");
        let now = "2026-11-23T10:00:00Z";
        let refused = waiting_status(
            &p,
            "Blocked",
            Some(("AppArmor", "Cannot enforce AppArmor: x")),
            now,
        );
        p.status = Some(serde_json::from_value(refused).unwrap());
        let stuck = archforge::status::stuck::of_pod(&p).unwrap();
        assert_eq!(
            (stuck.reason.as_str(), stuck.permanent()),
            ("AppArmor", true)
        );
        p.status = Some(serde_json::from_value(pull_failed_status(&p, now)).unwrap());
        let stuck = archforge::status::stuck::of_pod(&p).unwrap();
        assert_eq!(
            (stuck.reason.as_str(), stuck.permanent()),
            ("ErrImagePull", true)
        );
        assert!(stuck.message.contains("buildah:v1"), "{}", stuck.message);
    }
}
