//! The simulated kubelet: for archforge's builder pods bound to simulated nodes, it does
//! what the builder would (push a small image of the pod's platform to the pod's push
//! target) and what the kubelet would (report the pod Succeeded with the digest as the
//! builder's termination message, or Failed, or Running while a test holds it; finish the
//! deletion of pods being deleted). Everything else is the cluster's own.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::Registry;
use archforge::render::{
    BUILDER_CONTAINER, LABEL_GENERATION, LABEL_IMAGEBUILD, LABEL_MANAGED_BY, LABEL_PLATFORM,
    MANAGER,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::filter::JobFilter;
use crate::nodes::is_simulated;

/// What the simulated builder of a pod does.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Push the platform's image and succeed.
    Succeed,
    /// Fail with this message (what a failed build would leave in its termination message).
    Fail(String),
    /// Keep running until the test changes its mind.
    Hold,
}

/// The outcomes a test asked for; the first matching rule wins, and pods no rule matches
/// succeed.
#[derive(Clone, Default)]
pub struct Policy(Arc<Mutex<Vec<(JobFilter, Outcome)>>>);

impl Policy {
    pub fn set(&self, rules: Vec<(JobFilter, Outcome)>) {
        *self.0.lock().unwrap() = rules;
    }

    pub fn outcome(&self, imagebuild: &str, platform: &str, generation: Option<i64>) -> Outcome {
        let rules = self.0.lock().unwrap();
        rules
            .iter()
            .find(|(filter, _)| filter.matches(imagebuild, platform, generation))
            .map(|(_, o)| o.clone())
            .unwrap_or(Outcome::Succeed)
    }
}

/// What the simulated kubelet does to one pod now.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// The pod is being deleted: remove it for good (grace period 0), as the kubelet does
    /// once its containers stopped.
    FinishDeletion,
    Run,
    Complete(Build),
    Fail(String),
}

/// Where the builder of a pod pushes, from its container's environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Build {
    pub platform: Platform,
    pub push_target: String,
    pub media_type: MediaType,
}

fn builder_env(pod: &Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == BUILDER_CONTAINER)?
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The platform of a builder pod, from its label (`linux-arm64` for linux/arm64; os,
/// architecture and variant never contain a dash).
pub fn platform_of(pod: &Pod) -> Option<Platform> {
    Platform::from_str(&pod.labels().get(LABEL_PLATFORM)?.replace('-', "/")).ok()
}

/// The builder's work as the rendered pod describes it.
pub fn build_of(pod: &Pod) -> Option<Build> {
    let platform = platform_of(pod)?;
    let media_type = match builder_env(pod, "ARCHFORGE_PUSH_FORMAT")?.as_str() {
        "v2s2" => MediaType::Docker,
        _ => MediaType::Oci,
    };
    Some(Build {
        platform,
        push_target: builder_env(pod, "ARCHFORGE_PUSH_TARGET")?,
        media_type,
    })
}

/// Decides what to do with `pod`; `None` when it is not ours to act on (not an archforge
/// builder pod, not bound to a simulated node, already finished, or already as held).
pub fn decide(pod: &Pod, policy: &Policy) -> Option<Action> {
    if pod.labels().get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGER) {
        return None;
    }
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    if !is_simulated(node) {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Action::FinishDeletion);
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let imagebuild = pod.labels().get(LABEL_IMAGEBUILD)?;
    let platform = platform_of(pod)?.to_string();
    let generation = pod
        .labels()
        .get(LABEL_GENERATION)
        .and_then(|g| g.parse().ok());
    match policy.outcome(imagebuild, &platform, generation) {
        Outcome::Hold if phase == Some("Running") => None,
        Outcome::Hold => Some(Action::Run),
        Outcome::Fail(message) => Some(Action::Fail(message)),
        Outcome::Succeed => build_of(pod).map(Action::Complete),
    }
}

fn image_of(pod: &Pod, container: &str) -> String {
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

fn container_status(pod: &Pod, name: &str, state: Value) -> Value {
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
    use super::*;

    fn pod(node: Option<&str>, phase: Option<&str>, generation: &str) -> Pod {
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
                    "env": [
                        {"name": "ARCHFORGE_PUSH_TARGET", "value": "127.0.0.1:5000/e2e/app:v1-linux-arm64"},
                        {"name": "ARCHFORGE_PUSH_FORMAT", "value": "oci"},
                    ],
                }],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn only_builder_pods_on_simulated_nodes_are_acted_on() {
        let policy = Policy::default();
        assert_eq!(
            decide(&pod(None, Some("Pending"), "3"), &policy),
            None,
            "not scheduled"
        );
        assert_eq!(
            decide(&pod(Some("kind-worker"), Some("Pending"), "3"), &policy),
            None
        );
        let mut foreign = pod(Some("archforge-e2e-sim-arm64"), Some("Pending"), "3");
        foreign
            .labels_mut()
            .insert(LABEL_MANAGED_BY.into(), "someone-else".into());
        assert_eq!(decide(&foreign, &policy), None);
        assert_eq!(
            decide(
                &pod(Some("archforge-e2e-sim-arm64"), Some("Succeeded"), "3"),
                &policy
            ),
            None
        );
        assert_eq!(
            decide(
                &pod(Some("archforge-e2e-sim-arm64"), Some("Pending"), "3"),
                &policy
            ),
            Some(Action::Complete(Build {
                platform: "linux/arm64".parse().unwrap(),
                push_target: "127.0.0.1:5000/e2e/app:v1-linux-arm64".into(),
                media_type: MediaType::Oci,
            }))
        );
        let mut deleting = pod(Some("archforge-e2e-sim-arm64"), Some("Running"), "3");
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(decide(&deleting, &policy), Some(Action::FinishDeletion));
    }

    /// The pods the Job controller makes from the Jobs archforge renders, bound to a node.
    fn rendered_pods(node: &str) -> Vec<Pod> {
        let manifest = crate::cluster::imagebuild(
            &crate::config::Settings {
                kubeconfig: "/k".into(),
                registry: "10.0.0.5:5000".into(),
                insecure_registry: true,
                simulate_nodes: true,
                operator: "archforge".into(),
                git_url: crate::config::SIMULATED_GIT_URL.into(),
                git_ref: crate::config::SIMULATED_GIT_REF.into(),
                keep_namespaces: false,
            },
            "ns",
            "app",
            &["linux/amd64", "linux/arm64"],
            None,
        );
        let mut build: archforge::api::ImageBuild = serde_json::from_value(manifest).unwrap();
        build.metadata.uid = Some("u".into());
        build.metadata.generation = Some(1);
        let settings = archforge::plan::BuilderSettings::default();
        let plan = archforge::plan::plan(
            &build,
            &settings,
            crate::config::SIMULATED_GIT_REF,
            archforge::plan::AuthFile::None,
        )
        .unwrap();
        archforge::render::render_jobs(
            &build,
            &plan,
            &settings,
            archforge::plan::KubeVersion::OLDEST,
        )
        .into_iter()
        .map(|job| {
            let template = job.spec.unwrap().template;
            let mut pod = Pod {
                metadata: template.metadata.unwrap(),
                spec: template.spec,
                status: None,
            };
            pod.spec.as_mut().unwrap().node_name = Some(node.into());
            pod
        })
        .collect()
    }

    #[test]
    fn acts_on_the_pods_of_rendered_jobs() {
        let policy = Policy::default();
        let pods = rendered_pods("archforge-e2e-sim-amd64");
        let actions: Vec<Action> = pods.iter().map(|p| decide(p, &policy).unwrap()).collect();
        assert_eq!(
            actions,
            vec![
                Action::Complete(Build {
                    platform: "linux/amd64".parse().unwrap(),
                    push_target: "10.0.0.5:5000/e2e/ns/app:v1-linux-amd64".into(),
                    media_type: MediaType::Oci,
                }),
                Action::Complete(Build {
                    platform: "linux/arm64".parse().unwrap(),
                    push_target: "10.0.0.5:5000/e2e/ns/app:v1-linux-arm64".into(),
                    media_type: MediaType::Oci,
                }),
            ]
        );
        policy.set(vec![(
            JobFilter::of("app").platform("linux/arm64").generation(1),
            Outcome::Hold,
        )]);
        assert_eq!(decide(&pods[1], &policy), Some(Action::Run));
        assert!(
            rendered_pods("kind-worker")
                .iter()
                .all(|p| decide(p, &policy).is_none())
        );
    }

    #[test]
    fn the_policy_picks_the_first_matching_rule() {
        let policy = Policy::default();
        policy.set(vec![
            (JobFilter::any().generation(1), Outcome::Hold),
            (
                JobFilter::any().platform("linux/arm64"),
                Outcome::Fail("RUN make: exit status 2".into()),
            ),
        ]);
        let on_node =
            |phase, generation| pod(Some("archforge-e2e-sim-arm64"), Some(phase), generation);
        assert_eq!(decide(&on_node("Pending", "1"), &policy), Some(Action::Run));
        assert_eq!(
            decide(&on_node("Running", "1"), &policy),
            None,
            "already held"
        );
        assert_eq!(
            decide(&on_node("Pending", "2"), &policy),
            Some(Action::Fail("RUN make: exit status 2".into()))
        );
        assert_eq!(
            policy.outcome("app", "linux/amd64", Some(2)),
            Outcome::Succeed
        );
    }

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
