//! Rendered Jobs: golden files for the sample, the invariants every Job must hold, and proof
//! that user input reaches the builder only as whole arguments, never as shell syntax.
//!
//! Regenerate the golden files with `make golden` and review the diff by eye.

mod common;

use std::process::Command;

use archforge::api::ImageBuild;
use archforge::api::Strategy;
use archforge::plan::{AuthFile, plan};
use archforge::podsecurity::{self, Level};
use archforge::render::{
    BUILDER_CONTAINER, GIT_SYNC_CONTAINER, PUSH_AUTH_FILE, PUSH_CONTAINER, auth_file, render_jobs,
};
use archforge::settings::{BuilderSettings, KubeVersion};
use archforge::validation::ValidSpec;
use common::builder::{recorder, run_container};
use common::golden::{golden, to_yaml};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

fn render(build: &ImageBuild, version: &str) -> Vec<Job> {
    let settings = BuilderSettings::default();
    let valid = ValidSpec::check(build).expect("valid");
    let plan = plan(
        &valid,
        &settings,
        &build.spec.source.git.r#ref,
        auth_file(build),
    );
    render_jobs(build, &plan, &settings, version.parse().unwrap())
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

/// One Job of each strategy with registry trust set: a plain-HTTP registry and a CA.
#[test]
fn trust_jobs_on_1_30() {
    use archforge::plan::trust::RegistryTrust;
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    let trust = RegistryTrust::new(
        ["registry.internal:5000".parse().unwrap()],
        [("ghcr.internal".parse().unwrap(), pem.to_string())],
    )
    .unwrap();
    let settings = BuilderSettings {
        registry_trust: trust,
        ..BuilderSettings::default()
    };
    let jobs: Vec<Job> = [common::sample(), buildkit_sample()]
        .iter()
        .map(|build| {
            let valid = ValidSpec::check(build).unwrap();
            let plan = plan(
                &valid,
                &settings,
                &build.spec.source.git.r#ref,
                auth_file(build),
            );
            render_jobs(build, &plan, &settings, "1.30".parse().unwrap()).remove(0)
        })
        .collect();
    golden("trust-jobs-1.30.yaml", &to_yaml(&jobs));
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
    // The builder never reads the push secret; without a pull secret it reads none.
    assert!(!argv.iter().any(|a| a == "--authfile"), "{argv:?}");
    let mounts = |c: &Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect()
    };
    assert!(!mounts(builder).contains(&"push-credentials".to_string()));
    let pusher = pod_container(job, PUSH_CONTAINER);
    assert!(mounts(pusher).contains(&"push-credentials".to_string()));
    let push_argv = pusher.command.as_ref().unwrap();
    assert!(
        push_argv
            .windows(2)
            .any(|w| w[0] == "--authfile" && w[1] == PUSH_AUTH_FILE),
        "{push_argv:?}"
    );
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
    let plan = plan(
        &ValidSpec::check(&build).unwrap(),
        &settings,
        "main",
        AuthFile::None,
    );
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

/// What the builder container did when run for real under `/bin/sh`.
struct BuilderRun {
    output: std::process::Output,
    /// Each `buildah` invocation's arguments.
    calls: Vec<Vec<String>>,
}

/// Runs the builder container's real command and environment under `/bin/sh`, with a
/// `buildah` on PATH that records its arguments, so what a real builder would receive is
/// observed rather than inferred. `fill` writes the checkout git-sync would leave.
fn run_builder(
    job: &Job,
    dir: &std::path::Path,
    fill: impl FnOnce(&std::path::Path),
) -> BuilderRun {
    let (output, calls) = run_container(job, dir, fill, "buildah", recorder, |_, value| {
        value.to_string()
    });
    BuilderRun { output, calls }
}

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
    let run = run_builder(job, dir.path(), |checkout| {
        std::fs::create_dir_all(checkout.join("guestbook-go")).unwrap();
        std::fs::write(checkout.join("guestbook-go/Dockerfile"), "FROM scratch\n").unwrap();
    });
    assert!(
        run.output.status.success(),
        "{}",
        String::from_utf8_lossy(&run.output.stderr)
    );
    let calls = run.calls;
    assert!(!marker.exists(), "a build arg was executed by a shell");

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
    assert_eq!(build_call.last().map(String::as_str), Some("guestbook-go"));
    // The second call writes the image to the handoff, with no credentials: never a registry.
    assert_eq!(
        calls[1],
        [
            "push",
            "--format",
            "oci",
            "--",
            "localhost/archforge-build:latest",
            "dir:/var/run/archforge/handoff/image"
        ]
    );
}

/// A symlink committed in the repository must not make the builder's own filesystem (with
/// the push credentials in it) the build context: the script refuses before buildah runs.
#[test]
fn a_context_or_dockerfile_outside_the_checkout_is_refused_before_building() {
    let with_source = |context: &str, dockerfile: &str| {
        let mut object = serde_json::to_value(common::sample()).unwrap();
        object["spec"]["source"]["contextDir"] = json!(context);
        object["spec"]["source"]["dockerfile"] = json!(dockerfile);
        object["spec"]["output"]["pushSecret"] = json!("regcred");
        let build: ImageBuild = serde_json::from_value(object).unwrap();
        render(&build, "1.24").remove(0)
    };
    let links = |checkout: &std::path::Path| {
        std::os::unix::fs::symlink("/", checkout.join("rootlink")).unwrap();
        std::fs::create_dir_all(checkout.join("app")).unwrap();
        std::fs::write(checkout.join("app/Dockerfile"), "FROM scratch\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", checkout.join("app/Leaky")).unwrap();
        std::os::unix::fs::symlink("app", checkout.join("inside")).unwrap();
    };
    for (context, dockerfile, field, words) in [
        (
            "rootlink",
            "etc/hostname",
            "contextDir",
            "resolves outside the repository",
        ),
        (
            "rootlink/etc",
            "hostname",
            "contextDir",
            "resolves outside the repository",
        ),
        (
            "app",
            "Leaky",
            "dockerfile",
            "resolves outside the repository",
        ),
        (
            "missing",
            "Dockerfile",
            "contextDir",
            "does not exist in the repository",
        ),
        (
            "app",
            "Nope",
            "dockerfile",
            "does not exist in the repository",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = run_builder(&with_source(context, dockerfile), dir.path(), links);
        let stderr = String::from_utf8_lossy(&run.output.stderr);
        assert!(
            !run.output.status.success(),
            "{context} {dockerfile} was built"
        );
        assert!(
            run.calls.is_empty(),
            "buildah ran for {context}: {:?}",
            run.calls
        );
        assert!(
            stderr.contains(&format!("spec.source.{field}")) && stderr.contains(words),
            "{context} {dockerfile}: {stderr}"
        );
    }
    // A link that stays inside the repository is fine.
    let dir = tempfile::tempdir().unwrap();
    let inside_only = |checkout: &std::path::Path| {
        std::fs::create_dir_all(checkout.join("app")).unwrap();
        std::fs::write(checkout.join("app/Dockerfile"), "FROM scratch\n").unwrap();
        std::os::unix::fs::symlink("app", checkout.join("inside")).unwrap();
        std::os::unix::fs::symlink("../app/Dockerfile", checkout.join("app/Again")).unwrap();
    };
    let run = run_builder(
        &with_source("inside", "Dockerfile"),
        dir.path(),
        inside_only,
    );
    assert!(
        run.output.status.success(),
        "{}",
        String::from_utf8_lossy(&run.output.stderr)
    );
    assert_eq!(run.calls.len(), 2);
}

fn golden_jobs() -> Vec<(String, Job)> {
    let dir = common::repo_root().join("operator/tests/golden");
    let mut jobs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for job in serde_saphyr::from_multiple::<Job>(&text).unwrap() {
            jobs.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                job,
            ));
        }
    }
    assert!(
        jobs.len() >= 4,
        "golden files hold the Jobs: {}",
        jobs.len()
    );
    jobs
}

#[test]
fn every_golden_job_is_admissible_under_pod_security_baseline() {
    for (file, job) in golden_jobs() {
        assert_eq!(
            podsecurity::check_job(&job, Level::Baseline),
            Ok(()),
            "{file}"
        );
        // Rootless buildah cannot meet restricted, and the check says exactly why.
        let refused = podsecurity::check_job(&job, Level::Restricted).unwrap_err();
        let rules: Vec<&str> = refused.violations.iter().map(|v| v.rule).collect();
        assert_eq!(
            rules,
            ["allowPrivilegeEscalation", "capabilities_restricted"],
            "{file}: {refused}"
        );
        assert!(
            refused
                .violations
                .iter()
                .all(|v| v.detail.contains("builder"))
        );
    }
}

#[test]
fn builder_pods_default_to_runtime_default_seccomp_and_git_sync_is_confined() {
    for job in render(&common::sample(), "1.30") {
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let pod_profile = pod
            .security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref();
        assert_eq!(pod_profile.unwrap().type_, "RuntimeDefault");
        let builder = pod_container(&job, BUILDER_CONTAINER)
            .security_context
            .clone()
            .unwrap();
        assert_eq!(builder.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let git_sync = pod_container(&job, GIT_SYNC_CONTAINER)
            .security_context
            .clone()
            .unwrap();
        assert_eq!(git_sync.seccomp_profile.unwrap().type_, "RuntimeDefault");
        assert_eq!(git_sync.allow_privilege_escalation, Some(false));
        assert_eq!(git_sync.run_as_non_root, Some(true));
        let caps = git_sync.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert!(caps.add.is_none());
    }
}

#[test]
fn unconfined_seccomp_is_an_opt_in_that_baseline_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let render_with = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_archforge"))
            .args(["render", &common::sample_path()])
            .args(extra)
            .env_remove("ARCHFORGE_SECCOMP_PROFILE")
            .env_remove("ARCHFORGE_POD_SECURITY_LEVEL")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let refused = render_with(&["--seccomp-profile", "Unconfined"]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "nothing rendered");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("Pod Security \"baseline\"")
            && err.contains("seccompProfile_baseline")
            && err.contains("container builder"),
        "{err}"
    );
    // The explicit opt-in: a namespace labelled privileged, and the operator told so.
    let allowed = render_with(&[
        "--seccomp-profile",
        "Unconfined",
        "--pod-security-level",
        "privileged",
    ]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("type: Unconfined"));
    // restricted cannot be met by rootless buildah: the rule is named.
    let restricted = render_with(&["--pod-security-level", "restricted"]);
    assert!(!restricted.status.success());
    assert!(
        String::from_utf8_lossy(&restricted.stderr).contains("allowPrivilegeEscalation"),
        "{}",
        String::from_utf8_lossy(&restricted.stderr)
    );
}

#[test]
fn ssh_credentials_are_readable_by_git_sync_only() {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    object["spec"]["source"]["git"]["url"] = json!("git@github.com:kubernetes/examples.git");
    object["spec"]["source"]["git"]["credentialsSecret"] = json!("git-ssh");
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let job = &render(&build, "1.24")[0];
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    // git-sync runs as 65533 and the kubelet makes a secret volume's files 0440 for the
    // pod's fsGroup; without it the key is root's alone (0400) and ssh cannot read it.
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65533));
    let git_sync = pod_container(job, GIT_SYNC_CONTAINER);
    assert_eq!(
        git_sync.security_context.as_ref().unwrap().run_as_user,
        Some(65533)
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "git-credentials")
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("git-ssh"));
    assert_eq!(secret.default_mode, Some(0o400));
    let args = git_sync.args.as_ref().unwrap();
    assert!(args.contains(&"--ssh-key-file=/etc/git-secret/ssh-privatekey".to_string()));
    assert!(args.contains(&"--ssh-known-hosts-file=/etc/git-secret/known_hosts".to_string()));
    let mounted = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "git-credentials")
    };
    assert!(mounted(git_sync));
    assert!(
        !mounted(pod_container(job, BUILDER_CONTAINER)),
        "the builder never sees the key"
    );
    assert_eq!(podsecurity::check_job(job, Level::Baseline), Ok(()));

    // HTTPS credentials need no fsGroup: they arrive as environment variables.
    let https = &render(&common::sample(), "1.24")[0];
    let pod = https.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, None);
}

#[test]
fn an_emulated_job_runs_on_the_host_architecture_and_builds_for_its_target() {
    let build = common::sample();
    let settings = BuilderSettings::default();
    let plan = plan(
        &ValidSpec::check(&build).unwrap(),
        &settings,
        "main",
        AuthFile::None,
    );
    let arm64 = &plan.platforms[1];
    let emulated = archforge::plan::Placement::Emulated {
        host: "amd64".into(),
    };
    let job = archforge::render::render_job(
        &build,
        &plan,
        arm64,
        &emulated,
        &settings,
        KubeVersion::OLDEST,
    );
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let selector = pod.node_selector.as_ref().unwrap();
    assert_eq!(selector["kubernetes.io/arch"], "amd64");
    assert_eq!(selector["emulation.archforge.dev/arm64"], "true");
    assert_eq!(
        job.metadata.annotations.as_ref().unwrap()["archforge.dev/emulated-on"],
        "amd64"
    );
    let argv = pod_container(&job, BUILDER_CONTAINER)
        .command
        .clone()
        .unwrap();
    assert!(argv.windows(2).any(|w| w == ["--platform", "linux/arm64"]));
    // Same name as the native Job: a restart finds it whichever way it was placed.
    assert_eq!(job.metadata.name.as_deref(), Some(arm64.job_name.as_str()));
    assert_eq!(podsecurity::check_job(&job, Level::Baseline), Ok(()));
    // Native placement carries neither the label nor the annotation.
    let native = &render(&build, "1.24")[1];
    let selector = native
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert!(
        !selector
            .node_selector
            .as_ref()
            .unwrap()
            .contains_key("emulation.archforge.dev/arm64")
    );
}

#[test]
fn platform_settings_set_each_jobs_retries_and_deadline() {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    object["spec"]["platformSettings"] =
        json!([{"platform": "linux/arm64", "retries": 4, "timeout": "2h", "allowFailure": true}]);
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let jobs = render(&build, "1.24");
    let spec = |i: usize| jobs[i].spec.clone().unwrap();
    assert_eq!(
        (spec(0).backoff_limit, spec(0).active_deadline_seconds),
        (Some(1), Some(1800))
    );
    assert_eq!(
        (spec(1).backoff_limit, spec(1).active_deadline_seconds),
        (Some(4), Some(7200))
    );
}

/// Any symlink of the checkout that leads out of it is refused, used or not: buildah reads
/// a `RUN --mount=type=bind,source=<link>` through it, which would put the push secret (or
/// any file of the builder) into the image.
#[test]
fn a_symlink_anywhere_in_the_checkout_that_leads_out_is_refused() {
    let job = &render(&common::sample(), "1.24")[0];
    let with_link = |target: &'static str, at: &'static str| {
        move |checkout: &std::path::Path| {
            std::fs::create_dir_all(checkout.join("guestbook-go/deep/er")).unwrap();
            std::fs::write(checkout.join("guestbook-go/Dockerfile"), "FROM scratch\n").unwrap();
            std::os::unix::fs::symlink(target, checkout.join(at)).unwrap();
        }
    };
    for (target, at) in [
        ("/var/run/archforge/push/config.json", "leak"),
        ("../../../../../../etc/passwd", "guestbook-go/deep/er/up"),
        ("/nonexistent/dangling", "guestbook-go/dangling"),
        ("../../../..", "guestbook-go/deep/er/four-up"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let run = run_builder(job, dir.path(), with_link(target, at));
        let stderr = String::from_utf8_lossy(&run.output.stderr);
        assert!(!run.output.status.success(), "{at} -> {target} was built");
        assert!(run.calls.is_empty(), "buildah ran: {:?}", run.calls);
        assert!(
            stderr.contains("symlink that points outside it") && stderr.contains(at),
            "{at} -> {target}: {stderr}"
        );
    }
    // The same kind of link inside the repository is fine.
    let dir = tempfile::tempdir().unwrap();
    let run = run_builder(
        job,
        dir.path(),
        with_link("../Dockerfile", "guestbook-go/deep/df"),
    );
    assert!(
        run.output.status.success(),
        "{}",
        String::from_utf8_lossy(&run.output.stderr)
    );
}

/// Operator settings Kubernetes would refuse in the pod (or that would never start) are
/// refused when the operator starts, naming the flag.
#[test]
fn operator_settings_the_kubelet_would_refuse_are_refused() {
    for (flag, value) in [
        ("--builder-uid", "0"),
        ("--apparmor-profile", ""),
        ("--apparmor-profile", "x y"),
        ("--seccomp-profile", "localhost/../../etc/x"),
        ("--seccomp-profile", "localhost//abs"),
        ("--fuse-quantity", "-1"),
        ("--fuse-quantity", "0"),
        ("--fuse-resource", "fuse"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
            .args(["render", &common::sample_path()])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}={value:?} was accepted");
        assert!(out.stdout.is_empty());
        assert!(err.contains(flag), "{flag}={value:?}: {err}");
    }
}

#[test]
fn render_never_prints_a_malformed_secret_of_the_file() {
    for (password_line, line, column) in common::MALFORMED_SECRET_LINES {
        let dir = tempfile::tempdir().unwrap();
        let file = common::write_imagebuild_with_secret_line(dir.path(), password_line);
        let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
            .arg("render")
            .arg(&file)
            .output()
            .unwrap();
        common::assert_malformed_secret_hidden(&out, line, column);
    }
}

// --- BuildKit ---------------------------------------------------------------------------

fn buildkit_sample() -> ImageBuild {
    let path = common::repo_root().join("config/samples/imagebuild-buildkit.yaml");
    let mut build = archforge::manifest::read_imagebuild(path.to_str().unwrap()).unwrap();
    build.metadata.uid = Some("0b6f2c7e-8d41-4a3e-b5f9-2c1d7e9a4b80".to_string());
    build.metadata.generation = Some(2);
    build
}

/// The sample with `strategy: buildkit` and `change` applied to its spec.
fn buildkit_with(change: impl FnOnce(&mut serde_json::Value)) -> ImageBuild {
    let mut object = serde_json::to_value(buildkit_sample()).unwrap();
    change(&mut object["spec"]);
    serde_json::from_value(object).unwrap()
}

fn argv_of(job: &Job) -> Vec<String> {
    pod_container(job, BUILDER_CONTAINER)
        .command
        .clone()
        .unwrap()
        .split_off(4)
}

/// Values of every `flag value` pair of an argv.
fn values_of<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    argv.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn buildkit_jobs_on_1_24() {
    golden(
        "buildkit-jobs-1.24.yaml",
        &to_yaml(&render(&buildkit_sample(), "1.24")),
    );
}

#[test]
fn buildkit_jobs_on_1_30() {
    golden(
        "buildkit-jobs-1.30.yaml",
        &to_yaml(&render(&buildkit_sample(), "1.30")),
    );
}

#[test]
fn buildkit_jobs_are_confined_unprivileged_and_admissible_at_baseline() {
    for version in ["1.24", "1.30"] {
        for job in render(&buildkit_sample(), version) {
            assert_eq!(podsecurity::check_job(&job, Level::Baseline), Ok(()));
            let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let builder = pod_container(&job, BUILDER_CONTAINER);
            assert_eq!(
                builder.image.as_deref(),
                Some(BuilderSettings::default().buildkit_image.as_str())
            );
            let security = builder.security_context.as_ref().unwrap();
            assert_eq!(security.privileged, Some(false));
            assert_eq!(security.run_as_non_root, Some(true));
            assert_eq!(security.run_as_user, Some(1000));
            assert_eq!(security.proc_mount, None, "baseline forbids Unmasked");
            let seccomp = security.seccomp_profile.as_ref().unwrap();
            assert_eq!(
                (seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()),
                ("Localhost", Some("archforge/archforge-buildkit.json"))
            );
            let annotations = job.spec.as_ref().unwrap().template.metadata.as_ref();
            assert_eq!(
                annotations.unwrap().annotations.as_ref().unwrap()["container.apparmor.security.beta.kubernetes.io/builder"],
                "localhost/archforge-buildkit"
            );
            assert_eq!(
                security
                    .app_armor_profile
                    .as_ref()
                    .map(|p| p.localhost_profile.as_deref().unwrap()),
                (version == "1.30").then_some("archforge-buildkit")
            );
            let limits = builder.resources.as_ref().unwrap().limits.as_ref().unwrap();
            assert_eq!(limits["github.com/fuse"].0, "1");
            let env = builder.env.as_ref().unwrap();
            let var = |name: &str| {
                env.iter()
                    .find(|e| e.name == name)
                    .and_then(|e| e.value.clone())
            };
            assert_eq!(
                var("BUILDKITD_FLAGS").as_deref(),
                Some("--oci-worker-no-process-sandbox")
            );
            // Pull credentials only, and only when the spec names them.
            assert_eq!(var("DOCKER_CONFIG"), None);
            // buildkitd's state is an emptyDir, as rootless BuildKit needs.
            let state = builder
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path == "/home/user/.local/share/buildkit")
                .unwrap();
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == state.name)
                .unwrap();
            assert!(volume.empty_dir.is_some());
            // The image goes to the handoff volume, no metadata file is read.
            let argv = argv_of(&job);
            assert!(values_of(&argv, "--metadata-file").is_empty());
            assert_eq!(
                values_of(&argv, "--output"),
                ["type=oci,tar=false,dest=/var/run/archforge/handoff/image,oci-mediatypes=true"]
            );
        }
    }
}

#[test]
fn unconfined_buildkit_seccomp_is_refused_at_baseline_with_the_rule_named() {
    let build = buildkit_sample();
    let settings = BuilderSettings {
        buildkit_seccomp_profile: "Unconfined".parse().unwrap(),
        ..BuilderSettings::default()
    };
    let plan = plan(
        &ValidSpec::check(&build).unwrap(),
        &settings,
        "main",
        auth_file(&build),
    );
    let jobs = render_jobs(&build, &plan, &settings, KubeVersion::OLDEST);
    let refused = podsecurity::check_job(&jobs[0], Level::Baseline).unwrap_err();
    let rules: Vec<&str> = refused.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, ["seccompProfile_baseline"], "{refused}");
}

#[test]
fn buildkit_cache_is_per_platform_by_default_and_shared_only_for_reading() {
    let per_platform = render(&buildkit_sample(), "1.24");
    for (job, slug) in per_platform.iter().zip(["linux-amd64", "linux-arm64"]) {
        let argv = argv_of(job);
        let own = format!("registry.example.com/team/guestbook-cache:{slug}");
        assert_eq!(
            values_of(&argv, "--import-cache"),
            [format!("type=registry,ref={own}")]
        );
        assert_eq!(
            values_of(&argv, "--export-cache"),
            [format!("type=registry,ref={own},mode=max")]
        );
    }
    let shared = render(
        &buildkit_with(|spec| spec["cache"]["scope"] = json!("Shared")),
        "1.24",
    );
    let arm = argv_of(&shared[1]);
    assert_eq!(
        values_of(&arm, "--import-cache"),
        [
            "type=registry,ref=registry.example.com/team/guestbook-cache:linux-arm64",
            "type=registry,ref=registry.example.com/team/guestbook-cache:linux-amd64",
        ]
    );
    assert_eq!(
        values_of(&arm, "--export-cache"),
        ["type=registry,ref=registry.example.com/team/guestbook-cache:linux-arm64,mode=max"],
        "a platform writes only its own ref, even when shared"
    );
    let uncached = render(&buildkit_with(|spec| spec["cache"] = json!(null)), "1.24");
    let argv = argv_of(&uncached[0]);
    assert!(values_of(&argv, "--import-cache").is_empty());
    assert!(values_of(&argv, "--export-cache").is_empty());
}

#[test]
fn one_plan_feeds_both_strategies() {
    let buildkit = buildkit_sample();
    let buildah = buildkit_with(|spec| spec["strategy"] = json!("buildah"));
    let settings = BuilderSettings::default();
    let plan_of = |build: &ImageBuild| {
        plan(
            &ValidSpec::check(build).unwrap(),
            &settings,
            "abc123",
            auth_file(build),
        )
    };
    let (a, b) = (plan_of(&buildah), plan_of(&buildkit));
    assert_eq!(a.platforms.len(), b.platforms.len());
    for (a, b) in a.platforms.iter().zip(&b.platforms) {
        assert_eq!(
            (
                &a.platform,
                &a.job_name,
                &a.push_target,
                a.timeout,
                a.retries
            ),
            (
                &b.platform,
                &b.job_name,
                &b.push_target,
                b.timeout,
                b.retries
            )
        );
        assert_eq!(a.build_argv[0], "build");
        assert_eq!(b.build_argv[0], "build");
        assert!(a.build_argv.contains(&"--platform".to_string()));
        assert!(b.build_argv.contains(&format!("platform={}", b.platform)));
        // Neither builds to a registry: both hand the image off to a directory.
        assert!(b.push_target.ends_with("@@unknown-digest@@"));
        assert_eq!(
            b.handoff_argv("/h"),
            ["--output", "type=oci,tar=false,dest=/h,oci-mediatypes=true"]
        );
        assert_eq!(a.handoff_argv("/h").last().unwrap(), "dir:/h");
        assert!(
            !a.build_argv
                .iter()
                .chain(&b.build_argv)
                .any(|x| x.contains("push"))
        );
    }
    // The operator-wide default picks the strategy of an ImageBuild that names none.
    let unnamed = buildkit_with(|spec| spec["strategy"] = json!(null));
    let defaulted = plan(
        &ValidSpec::check(&unnamed).unwrap(),
        &BuilderSettings {
            default_strategy: Strategy::Buildkit,
            ..BuilderSettings::default()
        },
        "abc123",
        AuthFile::None,
    );
    assert_eq!(defaulted.platforms[0].strategy, Strategy::Buildkit);
    assert_eq!(
        plan_of(&unnamed).platforms[0].strategy,
        Strategy::Buildah,
        "buildah is the default"
    );
    // A Docker-format ImageBuild asks BuildKit for Docker media types.
    let docker = plan_of(&buildkit_with(|spec| {
        spec["output"]["mediaType"] = json!("docker")
    }));
    assert!(
        docker.platforms[0]
            .handoff_argv("/h")
            .last()
            .unwrap()
            .ends_with(",oci-mediatypes=false")
    );
}

/// What the BuildKit builder container did when run for real under `/bin/sh`.
struct BuildkitRun {
    output: std::process::Output,
    /// Each `buildctl-daemonless.sh` invocation's arguments.
    calls: Vec<Vec<String>>,
    /// The handoff directory (the Job's path, moved into the test's directory).
    handoff: std::path::PathBuf,
}

/// Runs the BuildKit builder container's real command and environment under `/bin/sh`, with
/// a `buildctl-daemonless.sh` on PATH that records its arguments and the environment it got
/// (`export -p`), then exits with `status`.
/// The handoff path is moved into `dir`.
fn run_buildkit(
    job: &Job,
    dir: &std::path::Path,
    fill: impl FnOnce(&std::path::Path),
    status: i32,
) -> BuildkitRun {
    let handoff = dir.join("handoff");
    std::fs::create_dir_all(&handoff).unwrap();
    let env_log = dir.join("buildctl-env");
    let record = |log: &std::path::Path| {
        format!(
            r#"#!/bin/sh
for a in "$@"; do
  printf '%s\0' "$a" >> '{log}'
done
printf '\n\0' >> '{log}'
export -p > '{env}'
exit {status}
"#,
            log = log.display(),
            env = env_log.display(),
        )
    };
    let moved = handoff.display().to_string();
    let relocate =
        |_: Option<&str>, value: &str| value.replace(archforge::render::HANDOFF_DIR, &moved);
    let (output, calls) = run_container(job, dir, fill, "buildctl-daemonless.sh", record, relocate);
    BuildkitRun {
        output,
        calls,
        handoff,
    }
}

fn guestbook_checkout(checkout: &std::path::Path) {
    std::fs::create_dir_all(checkout.join("guestbook-go")).unwrap();
    std::fs::write(checkout.join("guestbook-go/Dockerfile"), "FROM scratch\n").unwrap();
}

#[test]
fn build_args_reach_buildctl_verbatim_and_the_image_goes_to_the_handoff_never_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let hostile = format!(
        r#"$(touch {m}); `touch {m}` "x' ; touch {m}, a=b,type=local"#,
        m = marker.display()
    );
    let build = buildkit_with(|spec| {
        spec["buildArgs"] = json!([
            {"name": "EVIL", "value": hostile},
            {"name": "LINES", "value": "a  b\n$HOME\n--output=type=local,dest=/"},
        ]);
        spec["target"] = json!("runtime");
        spec["output"]["pushSecret"] = json!("push-creds");
        spec["pullSecret"] = json!("pull-creds");
    });
    let job = &render(&build, "1.24")[1];
    let run = run_buildkit(job, dir.path(), guestbook_checkout, 0);
    assert!(
        run.output.status.success(),
        "{}",
        String::from_utf8_lossy(&run.output.stderr)
    );
    assert!(!marker.exists(), "a build arg was executed by a shell");
    assert_eq!(run.calls.len(), 1, "one buildctl call: {:?}", run.calls);
    let call = &run.calls[0];
    let output = format!(
        "type=oci,tar=false,dest={}/image,oci-mediatypes=true",
        run.handoff.display()
    );
    assert_eq!(
        *call,
        [
            "build",
            "--frontend",
            "dockerfile.v0",
            "--local",
            "context=guestbook-go",
            "--local",
            "dockerfile=guestbook-go",
            "--opt",
            "filename=Dockerfile",
            "--opt",
            "platform=linux/arm64",
            "--opt",
            &format!("build-arg:EVIL={hostile}"),
            "--opt",
            "build-arg:LINES=a  b\n$HOME\n--output=type=local,dest=/",
            "--opt",
            "target=runtime",
            "--import-cache",
            "type=registry,ref=registry.example.com/team/guestbook-cache:linux-arm64",
            "--export-cache",
            "type=registry,ref=registry.example.com/team/guestbook-cache:linux-arm64,mode=max",
            "--output",
            output.as_str(),
        ]
    );
    // No push output, no metadata file, and only the pull credentials in its environment.
    assert!(
        !call
            .iter()
            .any(|a| a.contains("push") || a.contains("type=image"))
    );
    let env = std::fs::read_to_string(dir.path().join("buildctl-env")).unwrap();
    assert!(
        env.lines().any(|l| l.ends_with(&format!(
            "DOCKER_CONFIG='{}'",
            archforge::render::PULL_AUTH_DIR
        ))),
        "{env}"
    );
    assert!(!env.contains(archforge::render::PUSH_AUTH_DIR), "{env}");
    assert!(!env.contains("push-creds"), "{env}");
}

#[test]
fn a_failed_buildkit_build_fails_the_builder() {
    let job = &render(&buildkit_sample(), "1.24")[0];
    let dir = tempfile::tempdir().unwrap();
    let run = run_buildkit(job, dir.path(), guestbook_checkout, 3);
    assert_eq!(run.output.status.code(), Some(3));
}

#[test]
fn a_buildkit_context_outside_the_checkout_is_refused_before_buildctl_runs() {
    let build = buildkit_with(|spec| spec["source"]["contextDir"] = json!("rootlink"));
    let job = &render(&build, "1.24")[0];
    let dir = tempfile::tempdir().unwrap();
    let run = run_buildkit(
        job,
        dir.path(),
        |checkout| {
            std::os::unix::fs::symlink("/", checkout.join("rootlink")).unwrap();
        },
        0,
    );
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(!run.output.status.success());
    assert!(run.calls.is_empty(), "buildctl ran: {:?}", run.calls);
    assert!(
        stderr.contains("spec.source.contextDir") && stderr.contains("resolves outside"),
        "{stderr}"
    );
}
