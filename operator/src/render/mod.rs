//! From a build plan to `batch/v1` Jobs, one per platform. Pure: the same inputs always give
//! the same Jobs, which is what makes server-side apply of them idempotent.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use kube::Resource;
use serde_json::{Value, json};

use crate::api::ImageBuild;
use crate::api::Strategy;
use crate::plan::{AuthFile, BuildPlan, Placement, PlatformPlan, emulation_label};
use crate::settings::{BUILDKIT_UID, BuilderSettings, KubeVersion};

mod push;
mod scripts;
mod security;
mod trust;

pub use push::{
    HANDOFF_DIR, HANDOFF_IMAGE, PULL_AUTH_DIR, PULL_AUTH_FILE, PUSH_AUTH_DIR, PUSH_AUTH_FILE,
    PUSH_CONTAINER, PUSHER_BINARY,
};
use push::{builder_mounts, handoff_and_secret_volumes, push_container};
pub use scripts::{BUILDER_SCRIPT, BUILDKIT_SCRIPT};
use security::{apparmor, builder_resources, builder_security};
use trust::{BUILDAH_HOME, trust_env, trust_mounts, trust_volumes};
pub use trust::{BUILDKIT_TRUST_DIR, buildkitd_config_file};

/// Name of the builder init container (it runs the Dockerfile); the AppArmor annotation is
/// keyed on it.
pub const BUILDER_CONTAINER: &str = "builder";
/// Name of the git-sync init container.
pub const GIT_SYNC_CONTAINER: &str = "git-sync";

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_IMAGEBUILD: &str = "archforge.dev/imagebuild";
pub const LABEL_PLATFORM: &str = "archforge.dev/platform";
pub const LABEL_GENERATION: &str = "archforge.dev/generation";
pub const ANNOTATION_PLATFORM: &str = "archforge.dev/platform";
pub const ANNOTATION_REVISION: &str = "archforge.dev/revision";
/// On a Job built under emulation: the architecture of the node that emulates it.
pub const ANNOTATION_EMULATED_ON: &str = "archforge.dev/emulated-on";
/// The full ImageBuild name (the label may be shortened to fit 63 characters).
pub const ANNOTATION_IMAGEBUILD: &str = "archforge.dev/imagebuild";
pub const MANAGER: &str = "archforge";

/// Where git-sync puts the checkout and the builder reads it.
const WORKSPACE: &str = "/workspace";
/// The link git-sync points at the checked-out worktree, relative to the workspace.
const SOURCE_LINK: &str = "source";
const GIT_SECRET_DIR: &str = "/etc/git-secret";
/// git-sync's own non-root user (from its image).
const GIT_SYNC_UID: i64 = 65533;
/// What the builder scripts check the image against: the fuse device rootless buildah's
/// overlay storage opens, and the subordinate ID files newuidmap/newgidmap read. In the
/// environment rather than the script, so that a test can point them elsewhere.
const CONTRACT_ENV: [(&str, &str); 2] = [
    ("ARCHFORGE_SUBUID_FILE", "/etc/subuid"),
    ("ARCHFORGE_SUBGID_FILE", "/etc/subgid"),
];
/// The fuse device the buildah script checks (ARCHFORGE_FUSE_DEVICE), for the same reason.
const FUSE_DEVICE: &str = "/dev/fuse";

/// The labels every object of one run carries; also the selector for finding them.
pub fn run_labels(imagebuild: &str, generation: i64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        (
            LABEL_IMAGEBUILD.to_string(),
            crate::plan::dns_label(imagebuild, 63),
        ),
        (LABEL_GENERATION.to_string(), generation.to_string()),
    ])
}

fn git_sync_container(plan: &BuildPlan, settings: &BuilderSettings) -> Value {
    let ssh = plan.pod.ssh;
    // `--flag=value` keeps every value bound to its flag, whatever it starts with.
    let mut args = vec![
        format!("--repo={}", plan.pod.git_url),
        format!("--ref={}", plan.revision),
        format!("--root={WORKSPACE}"),
        format!("--link={SOURCE_LINK}"),
        "--one-time".to_string(),
        // The tree that was pinned, nothing more: submodules would fetch from servers no
        // one validated, and `build --local` builds without them too.
        "--submodules=off".to_string(),
        format!("--depth={}", plan.pod.git_depth),
    ];
    let mut env = vec![json!({"name": "HOME", "value": "/tmp"})];
    let mut mounts = vec![
        json!({"name": "workspace", "mountPath": WORKSPACE}),
        json!({"name": "git-tmp", "mountPath": "/tmp"}),
    ];
    if let Some(secret) = &plan.secrets.git {
        if ssh {
            args.push(format!("--ssh-key-file={GIT_SECRET_DIR}/ssh-privatekey"));
            args.push(format!(
                "--ssh-known-hosts-file={GIT_SECRET_DIR}/known_hosts"
            ));
            mounts.push(
                json!({"name": "git-credentials", "mountPath": GIT_SECRET_DIR, "readOnly": true}),
            );
        } else {
            for (var, key) in [
                ("GITSYNC_USERNAME", "username"),
                ("GITSYNC_PASSWORD", "password"),
            ] {
                env.push(json!({
                    "name": var,
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}
                }));
            }
        }
    }
    let (security, resources) = security::helper_confinement(GIT_SYNC_UID);
    json!({
        "name": GIT_SYNC_CONTAINER,
        "image": settings.git_sync_image,
        "args": args,
        "env": env,
        "volumeMounts": mounts,
        // Its own profile, whatever the builder's: git-sync needs no unusual syscalls.
        "securityContext": security,
        "resources": resources,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// Where a builder Job's buildah finds pull credentials (base images, the cache): the pull
/// Secret, when the ImageBuild names one, mounted at [`PULL_AUTH_FILE`]. Never the push
/// Secret, which only the push container mounts.
pub fn auth_file(build: &ImageBuild) -> AuthFile<'static> {
    if build.spec.pull_secret.is_some() {
        AuthFile::Path(PULL_AUTH_FILE)
    } else {
        AuthFile::None
    }
}

/// Whether git would reach this URL over SSH (ssh:// or the scp-like user@host:path form).
pub fn is_ssh_url(url: &str) -> bool {
    url.starts_with("ssh://") || !url.contains("://")
}

/// What the builder containers of both strategies share: the pod's build, the run's plan
/// and this platform's part of it.
struct Builder<'a> {
    plan: &'a BuildPlan,
    platform: &'a PlatformPlan,
    settings: &'a BuilderSettings,
    version: KubeVersion,
}

impl Builder<'_> {
    fn container(&self) -> Value {
        match self.platform.strategy {
            Strategy::Buildah => buildah_container(self),
            Strategy::Buildkit => buildkit_container(self),
        }
    }

    /// The environment both builder scripts read: the checkout and what to build in it.
    fn source_env(&self) -> Vec<Value> {
        vec![
            json!({"name": "ARCHFORGE_WORKSPACE", "value": WORKSPACE}),
            json!({"name": "ARCHFORGE_CONTEXT_DIR", "value": self.plan.context_dir}),
            json!({"name": "ARCHFORGE_DOCKERFILE", "value": self.plan.dockerfile}),
        ]
    }
}

/// Where the BuildKit builder's buildkitd keeps its state: the image declares it a volume,
/// and rootless BuildKit needs it to be a real (emptyDir) mount, not the image's overlay.
const BUILDKIT_STATE: &str = "/home/user/.local/share/buildkit";
/// buildkitd's flags. Without a process sandbox, RUN steps share the builder container's PID
/// namespace: a new one needs a fresh /proc mounted, which the kernel refuses while the
/// container's /proc has masked paths ("mount_too_revealing"), and Kubernetes unmasks it only
/// with procMount: Unmasked, which Pod Security baseline forbids. The pod is one-shot, so a
/// process a RUN step leaves behind dies with it.
pub const BUILDKITD_FLAGS: &str = "--oci-worker-no-process-sandbox";

/// buildkitd's flags: the configured snapshotter (none for `auto`, BuildKit's default) and,
/// when registry trust is configured, the buildkitd.toml the script writes from it.
pub fn buildkitd_flags(settings: &BuilderSettings) -> String {
    let mut flags = BUILDKITD_FLAGS.to_string();
    if let Some(flag) = settings.buildkit_snapshotter.flag() {
        flags.push(' ');
        flags.push_str(&flag);
    }
    if !settings.registry_trust.is_empty() {
        flags.push_str(&format!(" --config {}", buildkitd_config_file()));
    }
    flags
}

fn buildkit_container(b: &Builder<'_>) -> Value {
    let (platform, settings) = (b.platform, b.settings);
    let trust = &settings.registry_trust;
    let mut env = vec![
        json!({"name": "BUILDKITD_FLAGS", "value": buildkitd_flags(settings)}),
        json!({"name": "HOME", "value": "/home/user"}),
    ];
    env.extend(b.source_env());
    env.extend(CONTRACT_ENV.map(|(name, value)| json!({"name": name, "value": value})));
    env.extend(trust_env(trust, Strategy::Buildkit));
    if b.plan.secrets.pull.is_some() {
        // buildctl reads registry credentials (the cache's among them) from
        // $DOCKER_CONFIG/config.json.
        env.push(json!({"name": "DOCKER_CONFIG", "value": PULL_AUTH_DIR}));
    }
    let mut mounts = vec![
        json!({"name": "workspace", "mountPath": WORKSPACE, "readOnly": true}),
        json!({"name": "buildkit", "mountPath": BUILDKIT_STATE}),
    ];
    mounts.extend(trust_mounts(trust, Strategy::Buildkit));
    mounts.extend(builder_mounts(b.plan));
    let mut command = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        BUILDKIT_SCRIPT.to_string(),
        "archforge-builder".to_string(),
    ];
    command.extend(platform.build_argv.iter().cloned());
    command.extend(platform.handoff_argv(HANDOFF_IMAGE));
    json!({
        "name": BUILDER_CONTAINER,
        "image": settings.buildkit_image,
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "resources": builder_resources(
            b.plan,
            settings,
            settings.buildkit_snapshotter.needs_fuse(),
        ),
        "securityContext": builder_security(
            BUILDKIT_UID,
            &settings.buildkit_seccomp_profile,
            apparmor(platform, settings).as_ref(),
            settings.selinux_type.as_deref(),
            b.version,
        ),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

fn buildah_container(b: &Builder<'_>) -> Value {
    let (platform, settings) = (b.platform, b.settings);
    let trust = &settings.registry_trust;
    let mut env = vec![
        json!({"name": "BUILDAH_ISOLATION", "value": "chroot"}),
        json!({"name": "STORAGE_DRIVER", "value": "overlay"}),
        json!({"name": "HOME", "value": BUILDAH_HOME}),
    ];
    env.extend(b.source_env());
    env.push(json!({"name": "ARCHFORGE_FUSE_DEVICE", "value": FUSE_DEVICE}));
    env.extend(CONTRACT_ENV.map(|(name, value)| json!({"name": name, "value": value})));
    env.extend(trust_env(trust, Strategy::Buildah));
    let mut mounts = vec![
        json!({"name": "workspace", "mountPath": WORKSPACE, "readOnly": true}),
        json!({"name": "containers", "mountPath": format!("{BUILDAH_HOME}/.local/share/containers")}),
    ];
    mounts.extend(trust_mounts(trust, Strategy::Buildah));
    mounts.extend(builder_mounts(b.plan));

    let mut command = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        BUILDER_SCRIPT.to_string(),
        "archforge-builder".to_string(),
    ];
    command.push(platform.build_argv.len().to_string());
    command.extend(platform.build_argv.iter().cloned());
    command.extend(platform.handoff_argv(HANDOFF_IMAGE));
    json!({
        "name": BUILDER_CONTAINER,
        "image": settings.builder_image,
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        // buildah's overlay storage mounts with fuse-overlayfs.
        "resources": builder_resources(b.plan, settings, true),
        "securityContext": builder_security(
            settings.builder_uid,
            &settings.seccomp_profile,
            apparmor(platform, settings).as_ref(),
            settings.selinux_type.as_deref(),
            b.version,
        ),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    })
}

/// The Job that builds one platform of one run.
pub fn render_job(
    build: &ImageBuild,
    plan: &BuildPlan,
    platform: &PlatformPlan,
    placement: &Placement,
    settings: &BuilderSettings,
    version: KubeVersion,
) -> Job {
    let name = build.metadata.name.as_deref().unwrap_or("imagebuild");
    let mut labels = run_labels(name, plan.generation);
    labels.insert(LABEL_PLATFORM.to_string(), platform.platform.slug());
    let mut annotations = BTreeMap::from([
        (
            ANNOTATION_PLATFORM.to_string(),
            platform.platform.to_string(),
        ),
        (ANNOTATION_REVISION.to_string(), plan.revision.clone()),
        (ANNOTATION_IMAGEBUILD.to_string(), name.to_string()),
    ]);

    let mut node_selector = plan.pod.node_selector.clone();
    let node_architecture = match placement {
        Placement::Native => platform.platform.architecture.clone(),
        Placement::Emulated { host } => {
            // buildah already builds for --platform; the node must run it under QEMU.
            node_selector.insert(
                emulation_label(&platform.platform.architecture),
                "true".to_string(),
            );
            annotations.insert(ANNOTATION_EMULATED_ON.to_string(), host.clone());
            host.clone()
        }
    };
    node_selector.insert("kubernetes.io/arch".to_string(), node_architecture);
    node_selector.insert("kubernetes.io/os".to_string(), platform.platform.os.clone());

    let mut volumes = vec![
        json!({"name": "workspace", "emptyDir": {}}),
        json!({"name": "git-tmp", "emptyDir": {}}),
    ];
    match platform.strategy {
        Strategy::Buildah => volumes.push(json!({"name": "containers", "emptyDir": {}})),
        Strategy::Buildkit => volumes.push(json!({"name": "buildkit", "emptyDir": {}})),
    }
    volumes.extend(trust_volumes(&settings.registry_trust, platform.strategy));
    let ssh_git = plan.pod.ssh;
    volumes.extend(handoff_and_secret_volumes(plan, ssh_git));

    // The runtime's default for the pod; the builder container states its own profile.
    let mut pod_security = json!({"seccompProfile": {"type": "RuntimeDefault"}});
    if plan.secrets.git.is_some() && ssh_git {
        // The kubelet makes the key readable by this group (mode 0440, owner root), which
        // git-sync's user is in; ssh accepts the key because git-sync does not own it.
        pod_security["fsGroup"] = json!(GIT_SYNC_UID);
    }

    let mut pod_annotations =
        BTreeMap::from([(ANNOTATION_IMAGEBUILD.to_string(), name.to_string())]);
    // Every server reads the annotation; 1.30+ also get the container's field.
    if let Some(apparmor) = apparmor(platform, settings) {
        pod_annotations.insert(
            format!("container.apparmor.security.beta.kubernetes.io/{BUILDER_CONTAINER}"),
            apparmor.annotation,
        );
    }

    let builder = Builder {
        plan,
        platform,
        settings,
        version,
    }
    .container();
    let owner = build
        .controller_owner_ref(&())
        .map(|o| serde_json::to_value(vec![o]).expect("owner reference serializes"));

    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": platform.job_name,
            "namespace": build.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": owner,
        },
        "spec": {
            "backoffLimit": platform.retries,
            "activeDeadlineSeconds": platform.timeout.as_secs(),
            "ttlSecondsAfterFinished": settings.job_ttl.as_secs(),
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": {
                    "restartPolicy": "Never",
                    // The builder talks to git and the registry, never to the API server.
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "nodeSelector": node_selector,
                    "tolerations": plan.pod.tolerations,
                    "securityContext": pod_security,
                    // git-sync, then the builder; the push container starts only after both
                    // have exited, so nothing a RUN step started is left running beside it.
                    "initContainers": [git_sync_container(plan, settings), builder],
                    "containers": [push_container(plan, platform, settings)],
                    "volumes": volumes,
                },
            },
        },
    });
    serde_json::from_value(strip_nulls(job)).expect("a rendered Job is a valid Job")
}

/// All Jobs of one run, in the order of `spec.platforms`, each built natively (what
/// `archforge render` shows).
pub fn render_jobs(
    build: &ImageBuild,
    plan: &BuildPlan,
    settings: &BuilderSettings,
    version: KubeVersion,
) -> Vec<Job> {
    plan.platforms
        .iter()
        .map(|p| render_job(build, plan, p, &Placement::Native, settings, version))
        .collect()
}

fn strip_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
