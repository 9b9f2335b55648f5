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
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

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
    ) -> Kubelet {
        let policy = Policy::default();
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let task = tokio::spawn(run(pods, registry, policy.clone(), rewrite));
        Kubelet { policy, task }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    pods: Api<Pod>,
    registry: Arc<Registry>,
    policy: Policy,
    rewrite: Option<(String, String)>,
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
            let (pods, registry, in_flight, rewrite) = (
                pods.clone(),
                registry.clone(),
                in_flight.clone(),
                rewrite.clone(),
            );
            let slots = slots.clone();
            tokio::spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                let name = pod.name_any();
                if let Err(e) = act(&pods, &registry, &pod, action, rewrite.as_ref().as_ref()).await
                {
                    eprintln!("simulated kubelet: pod {name}: {e:#}");
                    // Let the next round try again.
                    in_flight.lock().unwrap().remove(&key);
                }
            });
        }
    }
}

async fn act(
    pods: &Api<Pod>,
    registry: &Registry,
    pod: &Pod,
    action: Action,
    rewrite: Option<&(String, String)>,
) -> anyhow::Result<()> {
    let name = pod.name_any();
    let now = jiff::Timestamp::now();
    let status = match action {
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
        BUILDER_CONTAINER, LABEL_GENERATION, LABEL_IMAGEBUILD, LABEL_PLATFORM,
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
                "initContainers": [{"name": "git-sync", "image": "git-sync:v4"}],
                "containers": [{
                    "name": BUILDER_CONTAINER,
                    "image": "buildah:v1",
                    "command": ["/bin/sh", "-c", "script", "archforge-builder", "2", "build", ".",
                                "push", "--format", "oci", "--digestfile", "/dev/termination-log", "--",
                                "localhost/archforge-build:latest", "docker://127.0.0.1:5000/e2e/app:v1-linux-arm64"],
                    "env": [
                        {"name": "ARCHFORGE_PUSH_TARGET", "value": "127.0.0.1:5000/e2e/app:v1-linux-arm64"},
                    ],
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
