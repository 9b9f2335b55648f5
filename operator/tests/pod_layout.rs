//! The builder pod's layout: git-sync and the builder as init containers, then the push
//! container; each Secret mounted by the one container that needs it, and the push container
//! confined (non-root, read-only, no capabilities, RuntimeDefault seccomp) and admissible
//! under Pod Security baseline and restricted.

mod common;

use archforge::api::ImageBuild;
use archforge::plan::{SecretNames, plan};
use archforge::podsecurity::{self, Level};
use archforge::render::{
    BUILDER_CONTAINER, GIT_SYNC_CONTAINER, HANDOFF_DIR, PULL_AUTH_DIR, PULL_AUTH_FILE,
    PUSH_AUTH_DIR, PUSH_CONTAINER, auth_file, render_jobs,
};
use archforge::settings::BuilderSettings;
use archforge::validation::ValidSpec;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde_json::json;

fn build_with(change: impl FnOnce(&mut serde_json::Value)) -> ImageBuild {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    change(&mut object["spec"]);
    serde_json::from_value(object).unwrap()
}

fn jobs(build: &ImageBuild, settings: &BuilderSettings) -> Vec<Job> {
    let plan = plan(
        &ValidSpec::check(build).unwrap(),
        settings,
        "main",
        auth_file(build),
    );
    render_jobs(build, &plan, settings, "1.30".parse().unwrap())
}

fn pod(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// (volume, mount path, read-only) of each of the container's mounts.
fn mounts(c: &Container) -> Vec<(String, String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            (
                m.name.clone(),
                m.mount_path.clone(),
                m.read_only == Some(true),
            )
        })
        .collect()
}

fn mounted_by(pod: &PodSpec, volume: &str) -> Vec<String> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .filter(|c| mounts(c).iter().any(|(name, _, _)| name == volume))
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn the_builder_is_an_init_container_and_push_the_only_main_one() {
    let build = build_with(|_| {});
    for job in jobs(&build, &BuilderSettings::default()) {
        let pod = pod(&job);
        let init: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, [GIT_SYNC_CONTAINER, BUILDER_CONTAINER]);
        let main: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(main, [PUSH_CONTAINER]);
        assert_eq!(
            mounted_by(pod, "handoff"),
            [BUILDER_CONTAINER, PUSH_CONTAINER]
        );
        let push = container(pod, PUSH_CONTAINER);
        assert!(mounts(push).contains(&("handoff".into(), HANDOFF_DIR.into(), true)));
        assert_eq!(
            push.image.as_deref(),
            Some(BuilderSettings::default().pusher_image.as_str())
        );
    }
}

#[test]
fn each_secret_is_mounted_by_one_container_only() {
    let build = build_with(|spec| {
        spec["output"]["pushSecret"] = json!("push-creds");
        spec["pullSecret"] = json!("pull-creds");
        spec["source"]["git"]["url"] = json!("git@github.com:team/app.git");
        spec["source"]["git"]["credentialsSecret"] = json!("git-creds");
    });
    let settings = BuilderSettings::default();
    for strategy in ["buildah", "buildkit"] {
        let build = build_with(|spec| {
            *spec = serde_json::to_value(&build.spec).unwrap();
            spec["strategy"] = json!(strategy);
        });
        let job = &jobs(&build, &settings)[0];
        let pod = pod(job);
        assert_eq!(
            mounted_by(pod, "push-credentials"),
            [PUSH_CONTAINER],
            "{strategy}"
        );
        assert_eq!(
            mounted_by(pod, "pull-credentials"),
            [BUILDER_CONTAINER],
            "{strategy}"
        );
        assert_eq!(
            mounted_by(pod, "git-credentials"),
            [GIT_SYNC_CONTAINER],
            "{strategy}"
        );
        let builder = container(pod, BUILDER_CONTAINER);
        assert!(mounts(builder).contains(&("pull-credentials".into(), PULL_AUTH_DIR.into(), true)));
        let push = container(pod, PUSH_CONTAINER);
        assert!(mounts(push).contains(&("push-credentials".into(), PUSH_AUTH_DIR.into(), true)));
        // Nothing of the push Secret in the builder: not its path, not its name.
        let text = serde_json::to_string(builder).unwrap();
        assert!(
            !text.contains(PUSH_AUTH_DIR) && !text.contains("push-creds"),
            "{text}"
        );
        let volumes = pod.volumes.as_ref().unwrap();
        let secret_of = |volume: &str| {
            let v = volumes.iter().find(|v| v.name == volume).unwrap();
            v.secret.as_ref().unwrap().secret_name.clone().unwrap()
        };
        assert_eq!(secret_of("push-credentials"), "push-creds");
        assert_eq!(secret_of("pull-credentials"), "pull-creds");
    }
    // buildah reads the pull credentials with --authfile, for the build only.
    let job = &jobs(&build, &settings)[0];
    let command = container(pod(job), BUILDER_CONTAINER)
        .command
        .clone()
        .unwrap();
    let authfiles: Vec<&str> = command
        .windows(2)
        .filter(|w| w[0] == "--authfile")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(authfiles, [PULL_AUTH_FILE]);
}

#[test]
fn the_push_container_is_confined_and_admissible() {
    let build = build_with(|spec| spec["output"]["pushSecret"] = json!("push-creds"));
    for job in jobs(&build, &BuilderSettings::default()) {
        let push = container(pod(&job), PUSH_CONTAINER);
        let security = push.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let drop = security.capabilities.as_ref().unwrap().drop.clone();
        assert_eq!(drop, Some(vec!["ALL".to_string()]));
        let seccomp = security.seccomp_profile.as_ref().unwrap();
        assert_eq!(seccomp.type_, "RuntimeDefault");
        // The builder's UID: buildah writes the handoff's blobs mode 0600.
        assert_eq!(security.run_as_user, Some(1000));
        let limits = push.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "256Mi");
        podsecurity::check_job_at(&job, Level::Baseline, "1.30".parse().unwrap()).unwrap();
    }
}

#[test]
fn the_plan_names_the_secrets_render_mounts() {
    let build = build_with(|spec| {
        spec["output"]["pushSecret"] = json!("push-creds");
        spec["pullSecret"] = json!("pull-creds");
    });
    let settings = BuilderSettings::default();
    let valid = ValidSpec::check(&build).unwrap();
    let mut plan = plan(&valid, &settings, "main", auth_file(&build));
    assert_eq!(
        plan.secrets,
        SecretNames {
            git: None,
            push: Some("push-creds".into()),
            pull: Some("pull-creds".into()),
        }
    );
    // Render reads the names from the plan alone (per-run copies can replace them).
    plan.secrets.push = Some("run-1-push".into());
    plan.secrets.pull = None;
    let job = &render_jobs(&build, &plan, &settings, "1.30".parse().unwrap())[0];
    let text = serde_json::to_string(job).unwrap();
    assert!(
        text.contains("run-1-push") && !text.contains("push-creds"),
        "{text}"
    );
    assert!(!text.contains("pull-creds") && !text.contains("pull-credentials"));
}
