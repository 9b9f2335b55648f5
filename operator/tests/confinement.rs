//! Builder pods fitted to their nodes' confinement: the AppArmor mode (a localhost profile,
//! the runtime's default, or none for nodes without AppArmor), an SELinux type checked
//! against what Pod Security baseline admits on the server's version, and BuildKit's
//! snapshotter deciding whether the pod asks for the fuse device. Golden Jobs for the
//! settings of a node without AppArmor and of a BuildKit node without a fuse device
//! (`make golden` rewrites them).

mod common;

use std::process::Command;

use archforge::api::ImageBuild;
use archforge::plan::plan;
use archforge::podsecurity::{self, Level};
use archforge::render::{BUILDER_CONTAINER, auth_file, render_jobs};
use archforge::settings::{AppArmorMode, BuilderSettings, BuildkitSnapshotter, KubeVersion};
use archforge::validation::ValidSpec;
use common::golden::{golden, to_yaml};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;

const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/builder";

fn buildkit_sample() -> ImageBuild {
    let path = common::repo_root().join("config/samples/imagebuild-buildkit.yaml");
    let mut build = archforge::manifest::read_imagebuild(path.to_str().unwrap()).unwrap();
    build.metadata.uid = Some("0b6f2c7e-8d41-4a3e-b5f9-2c1d7e9a4b80".to_string());
    build
}

fn render(build: &ImageBuild, settings: &BuilderSettings, version: &str) -> Vec<Job> {
    let valid = ValidSpec::check(build).expect("valid");
    let plan = plan(
        &valid,
        settings,
        &build.spec.source.git.r#ref,
        auth_file(build),
    );
    render_jobs(build, &plan, settings, version.parse().unwrap())
}

fn builder(job: &Job) -> &Container {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == BUILDER_CONTAINER)
        .unwrap()
}

fn apparmor_annotation(job: &Job) -> Option<String> {
    let template = &job.spec.as_ref().unwrap().template;
    let annotations = template.metadata.as_ref()?.annotations.as_ref()?;
    annotations.get(APPARMOR_ANNOTATION).cloned()
}

/// The settings of a node without AppArmor, with SELinux (the README's matrix).
fn selinux_node() -> BuilderSettings {
    BuilderSettings {
        apparmor: AppArmorMode::None,
        selinux_type: Some("container_engine_t".into()),
        seccomp_profile: "localhost/archforge/archforge-builder.json"
            .parse()
            .unwrap(),
        ..BuilderSettings::default()
    }
}

#[test]
fn a_node_without_apparmor_gets_no_profile_and_the_selinux_type() {
    let jobs = render(&common::sample(), &selinux_node(), "1.31");
    golden(
        "buildah-without-apparmor-selinux-1.31.yaml",
        &to_yaml(&jobs),
    );
    for job in &jobs {
        assert_eq!(apparmor_annotation(job), None);
        let security = builder(job).security_context.as_ref().unwrap();
        assert_eq!(security.app_armor_profile, None);
        let selinux = security.se_linux_options.as_ref().unwrap();
        assert_eq!(selinux.type_.as_deref(), Some("container_engine_t"));
        assert_eq!((selinux.user.as_ref(), selinux.role.as_ref()), (None, None));
        // Baseline admits container_engine_t from policy version 1.31, not before.
        let at = |v: &str| podsecurity::check_job_at(job, Level::Baseline, v.parse().unwrap());
        assert_eq!(at("1.31"), Ok(()));
        let refused = at("1.30").unwrap_err();
        assert_eq!(refused.violations[0].rule, "seLinuxOptions", "{refused}");
        assert!(
            refused.to_string().contains("container_engine_t"),
            "{refused}"
        );
    }
    // The same settings on a 1.24 server: no field appears that 1.24 lacks either.
    for job in render(&common::sample(), &selinux_node(), "1.24") {
        let security = builder(&job).security_context.as_ref().unwrap();
        assert_eq!(
            (apparmor_annotation(&job), &security.app_armor_profile),
            (None, &None)
        );
    }
}

#[test]
fn runtime_default_apparmor_is_asked_for_by_annotation_and_on_1_30_by_field() {
    let settings = BuilderSettings {
        apparmor: AppArmorMode::RuntimeDefault,
        buildkit_snapshotter: BuildkitSnapshotter::Overlayfs,
        ..BuilderSettings::default()
    };
    let jobs = render(&buildkit_sample(), &settings, "1.30");
    golden(
        "buildkit-runtime-default-overlayfs-1.30.yaml",
        &to_yaml(&jobs),
    );
    for (version, field) in [("1.24", false), ("1.30", true)] {
        for job in render(&buildkit_sample(), &settings, version) {
            assert_eq!(
                apparmor_annotation(&job).as_deref(),
                Some("runtime/default")
            );
            let security = builder(&job).security_context.as_ref().unwrap();
            let profile = security.app_armor_profile.as_ref();
            assert_eq!(
                profile.map(|p| p.type_.as_str()),
                field.then_some("RuntimeDefault")
            );
            assert_eq!(profile.and_then(|p| p.localhost_profile.as_ref()), None);
            assert_eq!(podsecurity::check_job(&job, Level::Baseline), Ok(()));
        }
    }
    // The profile names still serve the localhost mode, the default.
    let named = BuilderSettings {
        apparmor_profile: "custom-builder".into(),
        ..BuilderSettings::default()
    };
    let job = &render(&common::sample(), &named, "1.30")[0];
    assert_eq!(
        apparmor_annotation(job).as_deref(),
        Some("localhost/custom-builder")
    );
}

fn fuse_limit(job: &Job) -> Option<String> {
    let limits = builder(job).resources.as_ref()?.limits.as_ref()?;
    limits.get("github.com/fuse").map(|q| q.0.clone())
}

fn env(job: &Job, name: &str) -> Option<String> {
    let vars = builder(job).env.as_ref()?;
    vars.iter().find(|e| e.name == name)?.value.clone()
}

#[test]
fn only_a_fuse_snapshotter_asks_for_the_fuse_device() {
    for (snapshotter, fuse, flags) in [
        ("auto", true, "--oci-worker-no-process-sandbox"),
        (
            "overlayfs",
            false,
            "--oci-worker-no-process-sandbox --oci-worker-snapshotter=overlayfs",
        ),
        (
            "fuse-overlayfs",
            true,
            "--oci-worker-no-process-sandbox --oci-worker-snapshotter=fuse-overlayfs",
        ),
        (
            "native",
            false,
            "--oci-worker-no-process-sandbox --oci-worker-snapshotter=native",
        ),
    ] {
        let settings = BuilderSettings {
            buildkit_snapshotter: snapshotter.parse().unwrap(),
            ..BuilderSettings::default()
        };
        for job in render(&buildkit_sample(), &settings, "1.30") {
            assert_eq!(fuse_limit(&job).is_some(), fuse, "{snapshotter}");
            assert_eq!(env(&job, "BUILDKITD_FLAGS").as_deref(), Some(flags));
            assert_eq!(podsecurity::check_job(&job, Level::Baseline), Ok(()));
        }
        // buildah's overlay storage always mounts through fuse-overlayfs.
        for job in render(&common::sample(), &settings, "1.30") {
            assert_eq!(fuse_limit(&job).as_deref(), Some("1"), "{snapshotter}");
        }
    }
}

fn archforge_render(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["render", &common::sample_path()])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn confinement_settings_the_nodes_or_pod_security_would_refuse_stop_the_start() {
    for (flag, value, says) in [
        ("--apparmor", "unconfined", "is not an AppArmor mode"),
        ("--apparmor", "", "is not an AppArmor mode"),
        (
            "--apparmor",
            "localhost/archforge-builder",
            "is not an AppArmor mode",
        ),
        ("--selinux-type", "spc_t:s0", "is not an SELinux type"),
        (
            "--selinux-type",
            "system_u:system_r:spc_t",
            "is not an SELinux type",
        ),
        ("--selinux-type", "", "is not an SELinux type"),
        (
            "--buildkit-snapshotter",
            "stargz",
            "is not a BuildKit snapshotter",
        ),
    ] {
        let out = archforge_render(&[&format!("{flag}={value}")], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}={value:?} was accepted");
        assert!(out.stdout.is_empty());
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag}={value:?}: {err}"
        );
    }
    // A well-formed type that baseline refuses on this server's version stops the render
    // (and `archforge run` at start-up), naming the types it admits there.
    for (type_, version) in [("container_engine_t", "1.30"), ("spc_t", "1.33")] {
        let flag = format!("--selinux-type={type_}");
        let out = archforge_render(&[&flag, "--kube-version", version], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{type_} on {version} was accepted");
        assert!(out.stdout.is_empty());
        assert!(
            err.contains(&format!("--selinux-type {type_} would be refused by Pod Security baseline on a {version} server"))
                && err.contains("container_t, container_init_t, container_kvm_t"),
            "{err}"
        );
    }
    let out = archforge_render(
        &[
            "--selinux-type=container_engine_t",
            "--kube-version",
            "1.31",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let privileged = ["--selinux-type=spc_t", "--pod-security-level=privileged"];
    let out = archforge_render(&privileged, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn confinement_settings_have_environment_fallbacks() {
    let out = archforge_render(
        &["--kube-version", "1.31"],
        &[
            ("ARCHFORGE_APPARMOR", "none"),
            ("ARCHFORGE_SELINUX_TYPE", "container_engine_t"),
            (
                "ARCHFORGE_SECCOMP_PROFILE",
                "localhost/archforge/archforge-builder.json",
            ),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CLI's dry run stands in a placeholder for the UID an API server would assign.
    let mut build = archforge::manifest::read_imagebuild(&common::sample_path()).unwrap();
    build.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
    assert_eq!(text, to_yaml(&render(&build, &selinux_node(), "1.31")));
    let out = archforge_render(&[], &[("ARCHFORGE_BUILDKIT_SNAPSHOTTER", "zfs")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--buildkit-snapshotter"));
}

#[test]
fn the_default_settings_keep_the_localhost_profile_and_the_fuse_device() {
    let defaults = BuilderSettings::default();
    assert_eq!(defaults.apparmor, AppArmorMode::Localhost);
    assert_eq!(defaults.selinux_type, None);
    assert_eq!(defaults.buildkit_snapshotter, BuildkitSnapshotter::Auto);
    for job in render(&buildkit_sample(), &defaults, "1.24") {
        assert_eq!(
            apparmor_annotation(&job).as_deref(),
            Some("localhost/archforge-buildkit")
        );
        assert_eq!(
            builder(&job)
                .security_context
                .as_ref()
                .unwrap()
                .se_linux_options,
            None
        );
        assert_eq!(fuse_limit(&job).as_deref(), Some("1"));
    }
    assert!(KubeVersion::OLDEST < podsecurity::NEWEST_POLICY);
}
