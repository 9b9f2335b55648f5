//! What the simulated kubelet does to a pod: the outcome a test asked for its builder, and
//! the action that follows from the pod's state.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::render::{
    BUILDER_CONTAINER, HANDOFF_IMAGE, LABEL_GENERATION, LABEL_IMAGEBUILD, LABEL_MANAGED_BY,
    LABEL_PLATFORM, MANAGER, PUSH_CONTAINER,
};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

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
    /// Refuse the pod as the kubelet's AppArmor admission does (the message).
    RefuseAppArmor(String),
}

/// What a builder pod builds and where its push container pushes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Build {
    pub platform: Platform,
    pub push_target: String,
    pub media_type: MediaType,
}

/// The platform of a builder pod, from its label (`linux-arm64` for linux/arm64; os,
/// architecture and variant never contain a dash).
pub fn platform_of(pod: &Pod) -> Option<Platform> {
    Platform::from_str(&pod.labels().get(LABEL_PLATFORM)?.replace('-', "/")).ok()
}

/// The command of the pod's container `name`, init or regular.
fn command_of(pod: &Pod, name: &str) -> Option<Vec<String>> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)?
        .command
        .clone()
}

/// The media type the builder hands its image off in: buildah's `push --format` (its
/// command is `sh -c SCRIPT NAME N`, the N build arguments, then the handoff arguments,
/// ending in `dir:<handoff>`), or BuildKit's `--output type=oci,...,oci-mediatypes=`. `None`
/// unless the image goes to the handoff volume.
fn handoff_media_type(pod: &Pod) -> Option<MediaType> {
    let command = command_of(pod, BUILDER_CONTAINER)?;
    let argv = command.get(4..)?;
    if argv.first().map(String::as_str) == Some("build") {
        let output = &argv.windows(2).find(|w| w[0] == "--output")?[1];
        let keys: Vec<(&str, &str)> = output
            .split(',')
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .collect();
        let value = |key: &str| keys.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if value("type")? != "oci" || value("dest")? != HANDOFF_IMAGE {
            return None;
        }
        return Some(match value("oci-mediatypes") {
            Some("false") => MediaType::Docker,
            _ => MediaType::Oci,
        });
    }
    let build_argc: usize = argv.first()?.parse().ok()?;
    let handoff = argv.get(1 + build_argc..)?;
    if handoff.first().map(String::as_str) != Some("push")
        || handoff.last()? != &format!("dir:{HANDOFF_IMAGE}")
    {
        return None;
    }
    let format = &handoff.windows(2).find(|w| w[0] == "--format")?[1];
    Some(match format.as_str() {
        "v2s2" => MediaType::Docker,
        _ => MediaType::Oci,
    })
}

/// The builder's work as the rendered pod describes it: what its builder hands off and
/// where its push container (`archforge push-image --dir <handoff> --to <target>`) pushes.
pub fn build_of(pod: &Pod) -> Option<Build> {
    let platform = platform_of(pod)?;
    let media_type = handoff_media_type(pod)?;
    let push = command_of(pod, PUSH_CONTAINER)?;
    if push.get(..2)? != [archforge::render::PUSHER_BINARY, "push-image"] {
        return None;
    }
    let value = |flag: &str| push.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
    if value("--dir")? != HANDOFF_IMAGE {
        return None;
    }
    Some(Build {
        platform,
        push_target: value("--to")?,
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
    if let Some(message) = super::admit::apparmor_refusal(pod) {
        let refused = pod.status.as_ref().and_then(|s| s.reason.as_deref()) == Some("AppArmor");
        return (!refused).then_some(Action::RefuseAppArmor(message));
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

#[cfg(test)]
mod tests {
    use super::super::tests::pod;
    use super::*;

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
        rendered_pods_placed(node, &archforge::plan::Placement::Native)
    }

    /// As [`rendered_pods`], each platform placed by `placement`.
    fn rendered_pods_placed(node: &str, placement: &archforge::plan::Placement) -> Vec<Pod> {
        rendered_pods_with(node, placement, |_| {})
    }

    /// As [`rendered_pods_placed`], with `change` applied to the ImageBuild's spec first.
    fn rendered_pods_with(
        node: &str,
        placement: &archforge::plan::Placement,
        change: impl FnOnce(&mut serde_json::Value),
    ) -> Vec<Pod> {
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
        let mut manifest = manifest;
        change(&mut manifest["spec"]);
        let mut build: archforge::api::ImageBuild = serde_json::from_value(manifest).unwrap();
        build.metadata.uid = Some("u".into());
        build.metadata.generation = Some(1);
        let settings = archforge::settings::BuilderSettings::default();
        let plan = archforge::plan::plan(
            &archforge::validation::ValidSpec::check(&build).unwrap(),
            &settings,
            crate::config::SIMULATED_GIT_REF,
            archforge::plan::AuthFile::None,
        );
        plan.platforms
            .iter()
            .map(|platform| {
                let job = archforge::render::render_job(
                    &build,
                    &plan,
                    platform,
                    placement,
                    &settings,
                    archforge::settings::KubeVersion::OLDEST,
                );
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

    /// An emulated pod (an arm64 build on an amd64 node) gets an image of its target
    /// platform, from its platform label: never one of the node's architecture.
    #[test]
    fn an_emulated_pod_pushes_its_target_platform() {
        let emulated = archforge::plan::Placement::Emulated {
            host: "amd64".into(),
        };
        let pods = rendered_pods_placed("archforge-e2e-sim-amd64-1a2b3", &emulated);
        let arm = &pods[1];
        let selector = arm.spec.as_ref().unwrap().node_selector.clone().unwrap();
        assert_eq!(selector[crate::nodes::ARCH_LABEL], "amd64", "{selector:?}");
        assert_eq!(selector["emulation.archforge.dev/arm64"], "true");
        assert_eq!(
            decide(arm, &Policy::default()),
            Some(Action::Complete(Build {
                platform: "linux/arm64".parse().unwrap(),
                // platformTags is false by default: pushed by digest only.
                push_target: "10.0.0.5:5000/e2e/ns/app@@unknown-digest@@".into(),
                media_type: MediaType::Oci,
            }))
        );
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
                    push_target: "10.0.0.5:5000/e2e/ns/app@@unknown-digest@@".into(),
                    media_type: MediaType::Oci,
                }),
                Action::Complete(Build {
                    platform: "linux/arm64".parse().unwrap(),
                    push_target: "10.0.0.5:5000/e2e/ns/app@@unknown-digest@@".into(),
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

    /// A BuildKit pod is treated like a buildah one: the media type comes from its
    /// `--output`, the target from the push container.
    #[test]
    fn acts_on_the_pods_of_rendered_buildkit_jobs() {
        let native = archforge::plan::Placement::Native;
        let pods = rendered_pods_with("archforge-e2e-sim-amd64", &native, |spec| {
            spec["strategy"] = serde_json::json!("buildkit");
            spec["output"]["mediaType"] = serde_json::json!("docker");
            spec["output"]["platformTags"] = serde_json::json!(true);
        });
        let builder = command_of(&pods[1], BUILDER_CONTAINER).unwrap();
        assert_eq!(builder[4], "build", "a BuildKit pod");
        assert_eq!(
            decide(&pods[1], &Policy::default()),
            Some(Action::Complete(Build {
                platform: "linux/arm64".parse().unwrap(),
                push_target: "10.0.0.5:5000/e2e/ns/app:v1-linux-arm64".into(),
                media_type: MediaType::Docker,
            }))
        );
    }

    /// A pod whose builder would push itself, or whose push container reads another
    /// directory than the handoff, is not acted on.
    #[test]
    fn only_a_builder_that_hands_off_to_the_push_container_counts() {
        let native = archforge::plan::Placement::Native;
        let mut pod = rendered_pods_with("archforge-e2e-sim-amd64", &native, |spec| {
            spec["strategy"] = serde_json::json!("buildkit");
        })
        .remove(0);
        assert!(build_of(&pod).is_some());
        let spec = pod.spec.as_mut().unwrap();
        let mut builders = spec.init_containers.as_mut().unwrap().iter_mut();
        let builder = builders.find(|c| c.name == BUILDER_CONTAINER).unwrap();
        let command = builder.command.as_mut().unwrap();
        let output = command.iter().position(|a| a == "--output").unwrap() + 1;
        let original = command[output].clone();
        command[output] = "type=image,name=10.0.0.5:5000/e2e/ns/app,push=true".into();
        assert_eq!(build_of(&pod), None);
        let spec = pod.spec.as_mut().unwrap();
        let mut builders = spec.init_containers.as_mut().unwrap().iter_mut();
        let builder = builders.find(|c| c.name == BUILDER_CONTAINER).unwrap();
        builder.command.as_mut().unwrap()[output] = original;
        let push = spec
            .containers
            .iter_mut()
            .find(|c| c.name == PUSH_CONTAINER);
        let push = push.unwrap().command.as_mut().unwrap();
        let dir = push.iter().position(|a| a == "--dir").unwrap() + 1;
        push[dir] = "/elsewhere".into();
        assert_eq!(build_of(&pod), None);
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
}
