//! The simulated kubelet: for archforge's builder pods bound to simulated nodes, it does
//! what the builder would (push a small image of the pod's platform to the pod's push
//! target) and what the kubelet would (report the pod Succeeded with the digest as the
//! builder's termination message, or Failed, or Running while a test holds it; finish the
//! deletion of pods being deleted). Everything else is the cluster's own.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archforge::registry::Registry;
use archforge::render::{LABEL_MANAGED_BY, MANAGER};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

mod admit;
mod decide;
mod pod_status;

pub use decide::{Action, Build, Outcome, Policy, build_of, decide, platform_of};
pub use pod_status::{finished_status, running_status};

/// Rewrites the registry host of a push target, for pushes that must bypass a test proxy
/// (`from` → `to`).
pub fn rewrite_host(target: &str, rewrite: Option<&(String, String)>) -> String {
    match rewrite {
        Some((from, to)) if target.starts_with(&format!("{from}/")) => {
            format!("{to}{}", &target[from.len()..])
        }
        _ => target.to_string(),
    }
}

/// The simulated kubelet for the builder pods of one namespace.
pub struct Kubelet {
    pub policy: Policy,
    task: tokio::task::JoinHandle<()>,
}

impl Kubelet {
    /// Starts acting on pods in `namespace`. `rewrite` sends the builders' pushes for one
    /// registry host to another (the same registry, reached directly).
    pub fn start(
        client: Client,
        namespace: &str,
        registry: Arc<Registry>,
        rewrite: Option<(String, String)>,
        pull_host: String,
    ) -> Kubelet {
        let policy = Policy::default();
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let pulls = Pulls {
            host: pull_host,
            registry: registry.clone(),
        };
        let task = tokio::spawn(run(pods, registry, policy.clone(), rewrite, pulls));
        Kubelet { policy, task }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the simulated kubelet "pulls" images from: images on the suite's registry must
/// be there (others are taken as present, as a node's image cache would hold them).
#[derive(Clone)]
struct Pulls {
    host: String,
    registry: Arc<Registry>,
}

impl Pulls {
    /// Whether `image` is known not to exist (the registry answers that it has no such
    /// manifest); anything else, unreachable included, counts as present.
    async fn missing(&self, image: &str) -> bool {
        if !image.starts_with(&format!("{}/", self.host)) {
            return false;
        }
        let Ok(reference) = archforge::registry::parse_reference(image) else {
            return false;
        };
        let Ok(auth) = self.registry.auth_for(&reference) else {
            return false;
        };
        match self
            .registry
            .client()
            .fetch_manifest_digest(&reference, &auth)
            .await
        {
            Ok(_) => false,
            Err(e) => {
                let said = e.to_string().to_ascii_lowercase();
                said.contains("404") || said.contains("not found") || said.contains("unknown")
            }
        }
    }
}

async fn run(
    pods: Api<Pod>,
    registry: Arc<Registry>,
    policy: Policy,
    rewrite: Option<(String, String)>,
    pulls: Pulls,
) {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let stream = reflector(writer, watcher(pods.clone(), config))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Bounds the pushes and status updates in flight when thousands of pods are ready at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(64));
    let rewrite = Arc::new(rewrite);
    // Polls the watched cache rather than reacting to events alone: a test that releases a
    // held pod changes the policy, not the pod.
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for pod in store.state() {
            let Some(action) = decide(&pod, &policy) else {
                continue;
            };
            let key = format!(
                "{}/{:?}",
                pod.uid().unwrap_or_default(),
                std::mem::discriminant(&action)
            );
            if !in_flight.lock().unwrap().insert(key.clone()) {
                continue;
            }
            let (pods, registry, in_flight, rewrite, pulls) = (
                pods.clone(),
                registry.clone(),
                in_flight.clone(),
                rewrite.clone(),
                pulls.clone(),
            );
            let slots = slots.clone();
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let name = pod.name_any();
                let rewrite = rewrite.as_ref().as_ref();
                if let Err(e) = act(&pods, &registry, &pod, action, rewrite, &pulls).await {
                    eprintln!("simulated kubelet: pod {name}: {e:#}");
                    // Let the next round try again.
                    in_flight.lock().unwrap().remove(&key);
                }
            });
        }
    }
}

/// What keeps a pod's containers from starting, as the kubelet finds it before it starts
/// them: a Secret volume it cannot mount (the kubelet then only says so in an Event), the
/// builder's image missing from the registry. Checked once per pod.
async fn blocked(
    pods: &Api<Pod>,
    pod: &Pod,
    pulls: &Pulls,
    now: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let secrets: Api<Secret> = Api::namespaced(
        pods.clone().into_client(),
        &pod.namespace().unwrap_or_default(),
    );
    for (volume, name, keys) in admit::secret_volumes(pod) {
        let failure = match secrets.get_opt(&name).await? {
            None => Some(admit::mount_failure(&volume, &name, None)),
            Some(secret) => {
                let has = |k: &String| secret.data.as_ref().is_some_and(|d| d.contains_key(k));
                keys.iter()
                    .find(|k| !has(k))
                    .map(|k| admit::mount_failure(&volume, &name, Some(k)))
            }
        };
        if let Some(message) = failure {
            let events: Api<Event> = Api::namespaced(
                pods.clone().into_client(),
                &pod.namespace().unwrap_or_default(),
            );
            let event = serde_json::from_value(admit::failed_mount_event(pod, &message, now))?;
            events
                .create(&kube::api::PostParams::default(), &event)
                .await?;
            return Ok(Some(admit::waiting_status(
                pod,
                "PodInitializing",
                None,
                now,
            )));
        }
    }
    // The builder is an init container (the push container runs after it).
    let image = pod_status::image_of(pod, archforge::render::BUILDER_CONTAINER);
    if pulls.missing(&image).await {
        return Ok(Some(admit::pull_failed_status(pod, now)));
    }
    Ok(None)
}

async fn act(
    pods: &Api<Pod>,
    registry: &Registry,
    pod: &Pod,
    action: Action,
    rewrite: Option<&(String, String)>,
    pulls: &Pulls,
) -> anyhow::Result<()> {
    let name = pod.name_any();
    let now = jiff::Timestamp::now();
    let starts = matches!(action, Action::Run | Action::Fail(_) | Action::Complete(_));
    let held = match starts {
        true => blocked(pods, pod, pulls, &now.to_string()).await?,
        false => None,
    };
    let status = match action {
        _ if held.is_some() => held.expect("checked"),
        Action::RefuseAppArmor(message) => admit::waiting_status(
            pod,
            "Blocked",
            Some(("AppArmor", &message)),
            &now.to_string(),
        ),
        Action::FinishDeletion => {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            match pods.delete(&name, &params).await {
                Err(e) if !crate::cluster::is_not_found(&e) => return Err(e.into()),
                _ => {}
            }
            return Ok(());
        }
        Action::Run => running_status(pod, now),
        Action::Fail(message) => finished_status(pod, 1, &message, now),
        Action::Complete(build) => {
            let target = rewrite_host(&build.push_target, rewrite);
            let digest = registry
                .push_synthetic_image(&target, &build.platform, build.media_type, &name)
                .await?;
            finished_status(pod, 0, &digest, now)
        }
    };
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use archforge::render::{
        BUILDER_CONTAINER, LABEL_GENERATION, LABEL_IMAGEBUILD, LABEL_PLATFORM, PUSH_CONTAINER,
    };

    use super::*;

    /// A builder pod as the Job controller makes it, on `node` (unscheduled with `None`).
    pub(super) fn pod(node: Option<&str>, phase: Option<&str>, generation: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "app-3-linux-arm64-x1",
                "uid": "u1",
                "labels": {
                    LABEL_MANAGED_BY: MANAGER,
                    LABEL_IMAGEBUILD: "app",
                    LABEL_GENERATION: generation,
                    LABEL_PLATFORM: "linux-arm64",
                },
            },
            "spec": {
                "nodeName": node,
                "initContainers": [
                    {"name": "git-sync", "image": "git-sync:v4"},
                    {
                        "name": BUILDER_CONTAINER,
                        "image": "buildah:v1",
                        "command": ["/bin/sh", "-c", "script", "archforge-builder", "2", "build", ".",
                                    "push", "--format", "oci", "--",
                                    "localhost/archforge-build:latest", "dir:/var/run/archforge/handoff/image"],
                    },
                ],
                "containers": [{
                    "name": PUSH_CONTAINER,
                    "image": "archforge:v1",
                    "command": ["/usr/local/bin/archforge", "push-image", "--dir", "/var/run/archforge/handoff/image",
                                "--to", "127.0.0.1:5000/e2e/app:v1-linux-arm64",
                                "--termination-log", "/dev/termination-log"],
                }],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn pushes_can_bypass_a_proxy() {
        let rewrite = ("127.0.0.1:40001".to_string(), "10.0.0.5:5000".to_string());
        assert_eq!(
            rewrite_host("127.0.0.1:40001/e2e/app:v1-linux-arm64", Some(&rewrite)),
            "10.0.0.5:5000/e2e/app:v1-linux-arm64"
        );
        assert_eq!(
            rewrite_host("127.0.0.1:400010/e2e/app:v1", Some(&rewrite)),
            "127.0.0.1:400010/e2e/app:v1"
        );
        assert_eq!(rewrite_host("r:5000/a:b", None), "r:5000/a:b");
    }
}
