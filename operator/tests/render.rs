//! Rendered Jobs: golden files for the sample, the invariants every Job must hold, and proof
//! that user input reaches the builder only as whole arguments, never as shell syntax.
//!
//! Regenerate the golden files with `make golden` and review the diff by eye.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use archforge::api::ImageBuild;
use archforge::plan::{AuthFile, BuilderSettings, KubeVersion, plan};
use archforge::render::{BUILDER_CONTAINER, GIT_SYNC_CONTAINER, PUSH_AUTH_FILE, render_jobs};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

fn render(build: &ImageBuild, version: &str) -> Vec<Job> {
    let settings = BuilderSettings::default();
    let auth = if build.spec.output.push_secret.is_some() {
        AuthFile::Path(PUSH_AUTH_FILE)
    } else {
        AuthFile::None
    };
    let plan = plan(build, &settings, &build.spec.source.git.r#ref, auth).expect("valid");
    render_jobs(build, &plan, &settings, version.parse().unwrap())
}

fn to_yaml(jobs: &[Job]) -> String {
    jobs.iter()
        .map(|j| format!("---\n{}", archforge::manifest::to_yaml("Job", j).unwrap()))
        .collect()
}

fn golden(name: &str, actual: &str) {
    let path = common::repo_root().join("operator/tests/golden").join(name);
    if std::env::var_os("ARCHFORGE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; create it with `make golden`",
            path.display()
        )
    });
    pretty_assertions::assert_eq!(
        expected,
        actual,
        "{} differs; if intended, run `make golden`",
        path.display()
    );
}

fn pod_container<'a>(job: &'a Job, name: &str) -> &'a Container {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn sample_jobs_on_1_24() {
    golden(
        "sample-jobs-1.24.yaml",
        &to_yaml(&render(&common::sample(), "1.24")),
    );
}

#[test]
fn sample_jobs_on_1_30() {
    golden(
        "sample-jobs-1.30.yaml",
        &to_yaml(&render(&common::sample(), "1.30")),
    );
}

#[test]
fn the_cli_renders_the_sample_like_the_library() {
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["render", &common::sample_path()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut build = archforge::manifest::read_imagebuild(&common::sample_path()).unwrap();
    build.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    assert_eq!(text, to_yaml(&render(&build, "1.24")));
    assert_eq!(text.matches("kind: Job").count(), 2);
}

#[test]
fn the_cli_rejects_an_invalid_file_with_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(common::sample_path())
        .unwrap()
        .replace("linux/arm64", "linux/mips");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .arg("render")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing rendered for an invalid spec"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.platforms[1]: unsupported platform \"linux/mips\""),
        "{err}"
    );
}

#[test]
fn every_job_places_natively_and_stays_unprivileged() {
    let jobs = render(&common::sample(), "1.24");
    let arches: Vec<String> = jobs
        .iter()
        .map(|j| {
            j.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .node_selector
                .as_ref()
                .unwrap()["kubernetes.io/arch"]
                .clone()
        })
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    for job in &jobs {
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(1800));
        assert_eq!(spec.backoff_limit, Some(1));
        assert!(spec.ttl_seconds_after_finished.is_some());
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ImageBuild", "guestbook", Some(true))
        );
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(
            annotations["container.apparmor.security.beta.kubernetes.io/builder"],
            "localhost/archforge-builder"
        );
        let builder = pod_container(job, BUILDER_CONTAINER);
        let security = builder.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(false));
        assert_eq!(security.run_as_non_root, Some(true));
        assert!(
            security.seccomp_profile.is_some(),
            "explicit seccomp profile"
        );
        assert!(
            security.app_armor_profile.is_none(),
            "1.24 has no appArmorProfile field"
        );
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            builder.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        let limits = builder.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["github.com/fuse"].0, "1");
        let git_sync = pod_container(job, GIT_SYNC_CONTAINER);
        let args = git_sync.args.as_ref().unwrap();
        for flag in [
            "--repo=",
            "--ref=",
            "--root=",
            "--link=",
            "--one-time",
            "--depth=",
        ] {
            assert!(
                args.iter().any(|a| a.starts_with(flag)),
                "git-sync lacks {flag}"
            );
        }
    }
}

#[test]
fn apparmor_field_only_from_1_30() {
    for (version, expected) in [
        ("1.24", false),
        ("1.29", false),
        ("1.30", true),
        ("1.33", true),
    ] {
        let jobs = render(&common::sample(), version);
        let security = pod_container(&jobs[0], BUILDER_CONTAINER)
            .security_context
            .clone()
            .unwrap();
        let profile = security.app_armor_profile;
        assert_eq!(profile.is_some(), expected, "on {version}");
        if let Some(profile) = profile {
            assert_eq!(profile.type_, "Localhost");
            assert_eq!(
                profile.localhost_profile.as_deref(),
                Some("archforge-builder")
            );
        }
    }
}

#[test]
fn user_settings_flow_into_the_jobs() {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    object["spec"]["nodeSelector"] = json!({"pool": "builders"});
    object["spec"]["tolerations"] =
        json!([{"key": "arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]);
    object["spec"]["resources"] =
        json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}});
    object["spec"]["output"]["pushSecret"] = json!("regcred");
    object["spec"]["source"]["git"]["credentialsSecret"] = json!("git-creds");
    object["spec"]["timeout"] = json!("1h");
    object["spec"]["retries"] = json!(3);
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let job = &render(&build, "1.24")[1];
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    assert_eq!(spec.backoff_limit, Some(3));
    let pod = spec.template.spec.as_ref().unwrap();
    let selector = pod.node_selector.as_ref().unwrap();
    assert_eq!(selector["pool"], "builders");
    assert_eq!(selector["kubernetes.io/arch"], "arm64");
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].value.as_deref(),
        Some("arm64")
    );
    let builder = pod_container(job, BUILDER_CONTAINER);
    let resources = builder.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "2");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "8Gi");
    assert_eq!(resources.limits.as_ref().unwrap()["github.com/fuse"].0, "1");
    let argv = builder.command.as_ref().unwrap();
    assert!(
        argv.windows(2)
            .any(|w| w[0] == "--authfile" && w[1] == PUSH_AUTH_FILE)
    );
    let env = builder.env.as_ref().unwrap();
    assert!(env.iter().any(|e| e.name == "ARCHFORGE_AUTHFILE"));
    let volumes = pod.volumes.as_ref().unwrap();
    let push = volumes
        .iter()
        .find(|v| v.name == "push-credentials")
        .unwrap();
    assert_eq!(
        push.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("regcred")
    );
    let git_env = pod_container(job, GIT_SYNC_CONTAINER).env.as_ref().unwrap();
    let user = git_env
        .iter()
        .find(|e| e.name == "GITSYNC_USERNAME")
        .unwrap();
    let key = user
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (key.name.as_str(), key.key.as_str()),
        ("git-creds", "username")
    );
}

#[test]
fn fuse_resource_and_seccomp_are_configurable() {
    let build = common::sample();
    let settings = BuilderSettings {
        fuse_resource: "smarter-devices/fuse".into(),
        fuse_quantity: "2".into(),
        seccomp_profile: "localhost/profiles/archforge-builder.json".parse().unwrap(),
        ..BuilderSettings::default()
    };
    let plan = plan(&build, &settings, "main", AuthFile::None).unwrap();
    let jobs = render_jobs(&build, &plan, &settings, KubeVersion::OLDEST);
    let builder = pod_container(&jobs[0], BUILDER_CONTAINER);
    let limits = builder.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["smarter-devices/fuse"].0, "2");
    assert!(!limits.contains_key("github.com/fuse"));
    let seccomp = builder
        .security_context
        .as_ref()
        .unwrap()
        .seccomp_profile
        .as_ref()
        .unwrap();
    assert_eq!(seccomp.type_, "Localhost");
    assert_eq!(
        seccomp.localhost_profile.as_deref(),
        Some("profiles/archforge-builder.json")
    );
}

/// Runs the builder container's real command and environment under `/bin/sh`, with a
/// `buildah` on PATH that records its arguments, so what a real builder would receive is
/// observed rather than inferred.
#[test]
fn build_args_reach_buildah_verbatim_and_never_a_shell() {
    let hostile = r#"$(touch /tmp/pwned-by-archforge-test); echo "x"#;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let hostile = hostile.replace(
        "/tmp/pwned-by-archforge-test",
        &marker.display().to_string(),
    );
    let mut object = serde_json::to_value(common::sample()).unwrap();
    object["spec"]["buildArgs"] = json!([{"name": "EVIL", "value": hostile}, {"name": "SPACES", "value": "a  b\n$HOME `id`"}]);
    object["spec"]["target"] = json!("runtime");
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let job = &render(&build, "1.24")[1];
    let builder = pod_container(job, BUILDER_CONTAINER);

    // The workspace git-sync would leave: a link to the checked-out worktree.
    let workspace = dir.path().join("workspace");
    std::fs::create_dir_all(workspace.join(".worktrees/abc")).unwrap();
    std::os::unix::fs::symlink(".worktrees/abc", workspace.join("source")).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("argv.log");
    let fake = bin.join("buildah");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\" >> {}; done\nprintf '\\n\\0' >> {}\n", log.display(), log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let command = builder.command.as_ref().unwrap();
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()));
    for var in builder.env.as_ref().unwrap() {
        let value = if var.name == "ARCHFORGE_WORKSPACE" {
            workspace.display().to_string()
        } else {
            var.value.clone().unwrap()
        };
        cmd.env(&var.name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists(), "a build arg was executed by a shell");

    let recorded = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<Vec<&str>> = recorded
        .split("\n\0")
        .filter(|c| !c.is_empty())
        .map(|c| c.split('\0').filter(|a| !a.is_empty()).collect())
        .collect();
    assert_eq!(calls.len(), 2, "one build, one push: {calls:?}");
    let build_call = &calls[0];
    let expected_evil = format!("EVIL={hostile}");
    assert!(
        build_call
            .windows(2)
            .any(|w| w == ["--build-arg", expected_evil.as_str()]),
        "{build_call:?}"
    );
    assert!(
        build_call
            .windows(2)
            .any(|w| w == ["--build-arg", "SPACES=a  b\n$HOME `id`"]),
        "{build_call:?}"
    );
    assert!(
        build_call
            .windows(2)
            .any(|w| w == ["--platform", "linux/arm64"])
    );
    assert_eq!(build_call.last(), Some(&"guestbook-go"));
    assert_eq!(
        calls[1],
        [
            "push",
            "--format",
            "oci",
            "--digestfile",
            "/dev/termination-log",
            "--",
            "localhost/archforge-build:latest",
            "docker://registry.example.com/team/guestbook:v1-linux-arm64"
        ]
    );
}
